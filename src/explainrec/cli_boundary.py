"""The command line's one error boundary, and the checks every command runs before it starts any work.

Expected failures end in one line naming what is wrong and how to fix it: exit code 2 for usage errors (a bad
option or setting), 1 for failures (unreadable data, a damaged model folder, a loss that became NaN, a disk
that refuses a write). ``--debug`` or ``EXPLAINREC_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path

import typer

DEBUG = {"on": False}


def debug_enabled() -> bool:
    return DEBUG["on"] or os.environ.get("EXPLAINREC_DEBUG", "") not in ("", "0")


class UsageError(Exception):
    """A bad option value or combination (exit code 2)."""


def fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def boundary(fn):
    """Run a command; turn the exceptions users can cause into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from explainrec.config import ConfigError
        from explainrec.data.schema import DataError

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except (typer.BadParameter, UsageError, ConfigError) as err:  # ConfigError before DataError: a subclass
            if debug_enabled():
                raise
            fail(_one_line(err), 2)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            fail("interrupted; what was written so far is kept (training resumes with --resume)", 130)
        except (DataError, OSError, MemoryError) as err:
            if debug_enabled():
                raise
            fail(_one_line(err), 1)
        except Exception as err:  # noqa: BLE001 -- the boundary: a bug still ends in one line
            if debug_enabled():
                raise
            from explainrec.train.loop import TrainingError

            if isinstance(err, TrainingError):
                fail(_one_line(err), 1)
            fail(f"unexpected {type(err).__name__}: {_one_line(err)} -- this is a bug; rerun with --debug for the "
                 "traceback and report it", 1)

    return wrapper


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(str(err).split())
    return text if len(text) <= 800 else text[:780] + " ... (truncated)"


# ---------------------------------------------------------------------------------------------------- checks


def check_output_file(out: Path, *, inputs: tuple = (), option: str = "--out") -> Path:
    """``out`` can be written (its folder exists or can be made, is writable) and is none of the inputs."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{option} {out}: is a folder; give a file name, e.g. {out / 'predictions.jsonl'}")
    target = out.resolve()
    for src in inputs:
        if src is None:
            continue
        src = Path(src).resolve()
        if target == src or (src.is_dir() and src in target.parents):
            raise UsageError(f"{option} {out}: would overwrite the input {src}; write somewhere else")
    check_writable_folder(out.parent, option=option)
    return out


def check_output_folder(out: Path, *, option: str = "--out") -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out}: is a file; this option takes a folder")
    check_writable_folder(out, option=option)
    return out


def check_writable_folder(folder: Path, *, option: str = "--out") -> None:
    folder = Path(folder) if str(folder) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".explainrec-write-test."):
            pass
    except OSError as err:
        raise UsageError(f"{option}: cannot write to {folder} ({err.strerror or err})") from None


def check_input_file(path: Path, *, option: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file")
    return path


def data_path(data: str | None) -> Path | None:
    """The filesystem path of a ``--data`` value (None for the built-in synthetic data)."""
    if data is None or data == "synthetic" or str(data).startswith("synthetic:"):
        return None
    return Path(data)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
