"""Folders explainrec writes into: who made them, one writer at a time, and what an output may never be.

    FOLDER/.explainrec-owner.json   what made the folder (kind, command) and the entries explainrec wrote there
    FOLDER/.explainrec.lock         held (``fcntl.flock``) by the one process writing the folder; names its pid

Why a marker: ``--overwrite`` must remove what explainrec wrote and nothing else. A folder without a marker, or
with entries the marker does not list (a user's notes, a dataset, a thesis), is never emptied: the command refuses
and names what is in the way.

How entries get listed: a command writes a folder inside :func:`session`; what appears in the folder while the
session holds the lock is recorded when it ends. A session killed with SIGKILL cannot record its entries, so each
session also leaves what the folder held when it began; the next session (the lock proves the old one is gone)
records everything that appeared since.

Why an OS lock: the kernel releases it when its holder dies, so a stale lock from a killed process never blocks
the next run (it is taken over with a note), while two live writers -- two ``train --out`` at once, a ``--resume``
while the run still trains, two benches on one output -- get a clear error naming the holder's pid. The lock is
re-entrant within a process (the bench locks a run folder that the training inside it locks again).

Output checks (:func:`check_output_file`, :func:`check_output_folder`, :func:`check_run_folder`) are the one
place every writing command asks whether a path may be written: never an input (dataset, config file,
predictions, a run's model), never an existing result without ``--overwrite``, and a run folder never ``/``, the
home or current folder, or a folder holding an input. Predictions may be written into a run folder (beside its
model), never into its model, checkpoint or stage folders.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from explainrec.config import ConfigError
from explainrec.data.schema import DataError

MARKER = ".explainrec-owner.json"
LOCK = ".explainrec.lock"
# A run's own files: an output given beside a run never replaces them (nor anything in the run's sub-folders).
RUN_FILES = ("config.yaml", "train_summary.json", "train_log.jsonl", "run.json", "done.json", MARKER, LOCK)


class FolderError(ConfigError):
    """A path this command must not write (an input, an existing result, a folder that is not the tool's)."""


class FolderBusy(DataError):
    """Another live process is writing the folder (it holds the folder's lock)."""


def _warn(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def entries(folder: Path) -> list[str]:
    """The folder's top-level names, without the marker and the lock."""
    try:
        return sorted(p.name for p in Path(folder).iterdir() if p.name not in (MARKER, LOCK))
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------------------------------- the lock


@dataclass
class _Held:
    fd: int
    depth: int


_HELD: dict[str, _Held] = {}


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _read_info(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    if not raw.strip():
        return None
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict | None) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} (`{info.get('command', '?')}`, since {since})"


def lock_holder(folder: str | Path) -> dict | None:
    """``{pid, command, since}`` of the live process of another command holding ``folder``'s lock, else None."""
    import fcntl

    path = Path(folder) / LOCK
    if _key(Path(folder)) in _HELD or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def writer_lock(folder: str | Path, *, command: str, note: Callable[[str], None] = _warn) -> Iterator[None]:
    """Hold ``folder``'s lock (the folder is created) until the block ends; :class:`FolderBusy` names the holder.

    Re-entrant in one process. A lock file left by a process that died holding it is taken over, with a note.
    """
    import fcntl

    folder = Path(folder)
    key = _key(folder)
    if key in _HELD:
        _HELD[key].depth += 1
        try:
            yield
        finally:
            _HELD[key].depth -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read_info(fd)
        os.close(fd)
        raise FolderBusy(f"{folder}: {_describe(info)} is writing this folder; wait for it to end (or stop it) -- "
                         "one writer per folder") from None
    except BaseException:
        os.close(fd)
        raise
    stale = _read_info(fd)
    if stale and stale.get("pid") != os.getpid():
        note(f"{folder}: took over the lock left by {_describe(stale)}, which is no longer running")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}).encode(), 0)
    _HELD[key] = _Held(fd, 1)
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.ftruncate(fd, 0)  # an empty lock file: released, not abandoned
        except OSError:
            pass
        os.close(fd)  # closing releases the flock


# ---------------------------------------------------------------------------------------------------- ownership


def read_owner(folder: str | Path) -> dict | None:
    """The folder's marker, or None (no marker, or not one of ours)."""
    try:
        owner = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) and owner.get("tool") == "explainrec" else None


def _write_owner(folder: Path, owner: dict) -> None:
    from explainrec.io import atomic_write_json

    atomic_write_json(folder / MARKER, owner)


def _settled(folder: Path, owner: dict) -> dict:
    """The marker with an unfinished session's entries recorded (whatever appeared since it began)."""
    now = set(entries(folder))
    listed = set(owner.get("entries") or [])
    if owner.get("open"):
        listed |= now - set(owner["open"].get("before") or [])
    return {**{k: v for k, v in owner.items() if k != "open"}, "entries": sorted(listed & now)}


def owned(folder: str | Path) -> list[str]:
    """The entries of ``folder`` explainrec wrote (by its marker; none without one)."""
    folder = Path(folder)
    owner = read_owner(folder)
    return _settled(folder, owner)["entries"] if owner else []


def foreign(folder: str | Path) -> list[str]:
    """The entries of ``folder`` explainrec did not write."""
    mine = set(owned(folder))
    return [name for name in entries(Path(folder)) if name not in mine]


@contextmanager
def session(folder: str | Path, *, kind: str, command: str, accept: Iterable[str] = (),
            adopt: Callable[[list[str]], list[str]] | None = None, note: Callable[[str], None] = _warn) -> Iterator[Path]:
    """Write ``folder`` (created when missing) as its one writer; what appears in it is recorded as explainrec's.

    ``kind`` is what the folder is (``run``, ``harness``, ``bench``, ``demo``); a folder marked with a kind outside
    ``{kind, *accept}`` is refused. ``adopt(entries)``: for a folder without a marker, the entries an older
    explainrec wrote there (legacy run folders), recorded as explainrec's; the rest stay foreign. A session that
    wrote nothing into a folder it did not mark before leaves no marker and no lock file behind.
    """
    folder = Path(folder)
    allowed = {kind, *accept}
    had = {name: (folder / name).exists() for name in (MARKER, LOCK)}
    keep = True
    try:
        with writer_lock(folder, command=command, note=note):
            key = _key(folder)
            outermost = _HELD[key].depth == 1
            owner = read_owner(folder)
            if owner is not None and owner.get("kind") not in allowed:
                raise FolderError(f"{folder}: holds what `{owner.get('made_by')}` wrote (a {owner.get('kind')} "
                                  f"folder), not a {kind} folder; choose another folder")
            if not outermost:
                yield folder
                return
            keep = False
            if owner is None:
                owner = {"tool": "explainrec", "kind": kind, "made_by": command, "entries": adopt(entries(folder))
                         if adopt else [], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            owner = _settled(folder, owner)
            before = entries(folder)
            _write_owner(folder, {**owner, "open": {"pid": os.getpid(), "command": command, "before": before}})
            try:
                yield folder
            finally:
                if folder.is_dir():
                    keep = had[MARKER] or entries(folder) != before
                    _write_owner(folder, _settled(folder, read_owner(folder) or owner))
    finally:
        if not keep:  # nothing written into a folder that had no marker: leave it as it was
            for name in (MARKER, LOCK):
                if not had[name]:
                    (folder / name).unlink(missing_ok=True)


def writing_into(folder: str | Path, *, command: str):
    """A :func:`session` on ``folder`` when explainrec made it (a command writing a file into a run folder takes
    the run's lock and records the file), else nothing (a plain folder)."""
    from contextlib import nullcontext

    owner = read_owner(folder)
    if owner is None:
        return nullcontext(Path(folder))
    return session(folder, kind=owner.get("kind", "run"), command=command)


def remove_owned(folder: str | Path, *, option: str = "--overwrite") -> None:
    """Empty ``folder`` of what explainrec wrote there; refuse, removing nothing, when anything else is in it.

    The caller holds the folder's :func:`session`.
    """
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return
    if read_owner(folder) is None and entries(folder):
        raise FolderError(f"{option}: {folder} was not made by explainrec (no {MARKER}); it was left as it is -- "
                          "remove it yourself or choose another --out")
    others = foreign(folder)
    if others:
        shown = ", ".join(others[:6]) + (" ..." if len(others) > 6 else "")
        raise FolderError(f"{option}: {folder} holds files explainrec did not write ({shown}); nothing was removed "
                          "-- move them away or choose another --out")
    for name in owned(folder):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    owner = read_owner(folder)
    if owner is not None:  # what the session writes from now on counts as new, though its names were there before
        if owner.get("open"):
            owner["open"]["before"] = entries(folder)
        _write_owner(folder, {**owner, "entries": []})


# ---------------------------------------------------------------------------------------------------- output checks


def _resolved(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path) or ".")))


def _real(path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path) or ".")))


def check_writable_folder(folder: str | Path, *, option: str = "--out") -> None:
    """The folder exists or can be made, and a file can be created in it."""
    folder = Path(folder) if str(folder) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".explainrec-write-test."):
            pass
    except OSError as err:
        raise FolderError(f"{option}: cannot write to {folder} ({err.strerror or err})") from None


def _not_an_input(target: Path, out: Path, inputs: Iterable, runs: Iterable, option: str) -> None:
    real = _real(target)
    for src in inputs:
        if src is None or not str(src):
            continue
        s = _real(src)
        if real == s:
            raise FolderError(f"{option} {out}: would overwrite the input {src}; write somewhere else")
        if s.is_dir() and s in real.parents:
            raise FolderError(f"{option} {out}: is inside the input folder {src}; write somewhere else")
    for run in runs:
        if run is None:
            continue
        r = _real(run)
        if real == r or (r in real.parents and (real.parent != r or real.name in RUN_FILES or real.is_dir())):
            raise FolderError(f"{option} {out}: would write into the run {run} itself (its model, checkpoint, "
                              f"stages or own files); write beside them, e.g. {Path(run) / 'predictions.jsonl'}")


def check_output_file(out: str | Path, *, inputs: Iterable = (), runs: Iterable = (), overwrite: bool = False,
                      option: str = "--out") -> Path:
    """``out`` may be written: a file name (not a folder), none of ``inputs`` nor inside an input folder, not a
    run's own file (``runs``: run folders read by the command; a new file directly in one is fine), not an existing
    result unless ``overwrite``, in a folder that is writable."""
    out = Path(out)
    if out.is_dir():
        raise FolderError(f"{option} {out}: is a folder; give a file name, e.g. {out / 'predictions.jsonl'}")
    _not_an_input(out, out, inputs, runs, option)
    if out.exists() and not overwrite:
        raise FolderError(f"{option} {out}: already exists (a result of an earlier command?); pass --overwrite to "
                          "replace it, or choose another name")
    check_writable_folder(out.parent, option=option)
    return out


def check_output_folder(out: str | Path, *, writes: Iterable[str] = (), inputs: Iterable = (), runs: Iterable = (),
                        overwrite: bool = False, option: str = "--out") -> Path:
    """``out`` is a folder (made when missing) where the files ``writes`` may be written (see
    :func:`check_output_file`)."""
    out = Path(out) if str(out) else Path(".")
    if out.exists() and not out.is_dir():
        raise FolderError(f"{option} {out}: is a file; this option takes a folder")
    for name in writes:
        target = out / name
        _not_an_input(target, out, inputs, runs, option)
        if target.exists() and not overwrite:
            raise FolderError(f"{option} {out}: {name} there already exists (from an earlier command?); pass "
                              "--overwrite to replace it, or choose another folder")
    check_writable_folder(out, option=option)
    return out


def check_run_folder(out: str | Path, *, inputs: Iterable = (), option: str = "--out") -> Path:
    """``out`` may be a run folder: a folder of its own (never ``/``, the home or current folder, nor a folder
    holding either), not a file, and holding no input (dataset, config file, model) nor inside an input folder."""
    out = Path(out)
    target = _resolved(out)
    cwd, home = _resolved(os.getcwd()), _resolved(Path.home())
    for place, what in ((Path(target.anchor), "the root folder"), (home, "your home folder"),
                        (cwd, "the current folder")):
        if target == place or target in place.parents:
            shown = str(out) or "''"
            raise FolderError(f"{option} {shown}: is {what}" + ("" if target == place else " or holds it")
                              + f"; a run needs a folder of its own, e.g. {option} runs/NAME")
    if out.exists() and not out.is_dir():
        raise FolderError(f"{out}: is a file; {option} takes a folder")
    real = _real(out)
    for src in inputs:
        if src is None or not str(src):
            continue
        s = _real(src)
        if s == real or real in s.parents:
            raise FolderError(f"{option} {out}: would hold or replace the input {src}; choose another folder")
        if s.is_dir() and s in real.parents:
            raise FolderError(f"{option} {out}: is inside the input folder {src}; choose another folder")
    return out
