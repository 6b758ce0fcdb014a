"""The ratings file ``STUDY/ratings.jsonl``: one JSON line per (rater, pair) as it is given, appended and fsynced
before the page moves on, so a closed tab or a killed server loses at most the rating in flight.

A line holds every method's P, Q and U for one pair (a rater scores a pair's explanations side by side). A rater
who revises a pair appends a new line; the last line of a (rater, pair) counts. Lines that cannot be read (a line
torn by a crash, a hand edit) are reported with their line number and skipped; every other line is kept.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from explainrec.rate.rubric import DIMENSIONS, check_score

HUMAN = "human"
JUDGE = "judge"
JUDGE_PREFIX = "judge:"
# a person's name or token-file name; no colon, so it can never be mistaken for a judge
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,39}")
_APPEND_LOCK = threading.Lock()


def check_rater(name: object, kind: str = HUMAN) -> str:
    """A valid rater name of this kind (ValueError otherwise)."""
    if not isinstance(name, str):
        raise ValueError(f"rater must be a string, got {type(name).__name__}")
    if kind == JUDGE:
        if not name.startswith(JUDGE_PREFIX) or len(name) <= len(JUDGE_PREFIX):
            raise ValueError(f"a judge's rater name starts with {JUDGE_PREFIX!r}; got {name!r}")
        return name
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"rater name {name!r}: 1-40 letters, digits, '_', '.', '@' or '-', starting with a letter "
                         "or digit")
    return name


def rating_record(study, rater: str, kind: str, pair: int, scores: dict, **extra) -> dict:
    """A checked line for ``pair`` of ``study``: ``scores`` is method -> {P, Q, U} (every method of the study)."""
    record = {"study": study.id, "rater": rater, "kind": kind, "pair": pair,
              "user": study.pairs[pair]["user"], "item": study.pairs[pair]["item"], "scores": scores,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    return check_record(record, study)


def check_record(obj: object, study) -> dict:
    """Validate one ratings line against the study; ValueError naming the field otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("study") != study.id:
        raise ValueError(f"study: {obj.get('study')!r} is not this study ({study.id}); a rating of another design")
    kind = obj.get("kind")
    if kind not in (HUMAN, JUDGE):
        raise ValueError(f"kind: must be {HUMAN!r} or {JUDGE!r}, got {kind!r}")
    try:
        check_rater(obj.get("rater"), kind)
    except ValueError as err:
        raise ValueError(f"rater: {err}") from None
    pair = obj.get("pair")
    if isinstance(pair, bool) or not isinstance(pair, int) or not 0 <= pair < len(study.pairs):
        raise ValueError(f"pair: must be an index from 0 to {len(study.pairs) - 1}, got {pair!r}")
    scores = obj.get("scores")
    if not isinstance(scores, dict) or set(scores) != set(study.method_names):
        raise ValueError(f"scores: must give every method of the study ({', '.join(study.method_names)})")
    for method, dims in scores.items():
        if not isinstance(dims, dict) or set(dims) != set(DIMENSIONS):
            raise ValueError(f"scores.{method}: must give {', '.join(DIMENSIONS)}")
        for d in DIMENSIONS:
            try:
                dims[d] = check_score(dims[d], half_points=kind == HUMAN)
            except ValueError as err:
                raise ValueError(f"scores.{method}.{d}: {err}") from None
    return obj


def append_rating(path: str | Path, record: dict) -> None:
    """Append one line and fsync it before returning.

    One ``write`` of the whole line on an ``O_APPEND`` descriptor, under a lock (one writer per process). A line
    torn by a crash mid-write has no newline; the next append first ends it, so the torn line stays one bad line
    (reported, skipped) and never swallows the good line after it.
    """
    path = Path(path)
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with _APPEND_LOCK:
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if not created and _ends_unterminated(path):
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the new file's name is durable too
            _fsync_folder(path.parent)


def _ends_unterminated(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not POSIX
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Ratings:
    """The readable lines of a ratings file and what was wrong with the others."""

    records: list[dict] = field(default_factory=list)  # valid lines, file order
    problems: list[str] = field(default_factory=list)  # "FILE line N: why"

    def latest(self) -> dict[tuple[str, int], dict]:
        """(rater, pair) -> the last line given for it (a revision replaces the earlier one)."""
        return {(r["rater"], r["pair"]): r for r in self.records}

    def add(self, record: dict) -> None:
        self.records.append(record)


def read_ratings(study, path: str | Path | None = None) -> Ratings:
    """Every valid line of the study's ratings file (none yet: empty); bad lines go to ``problems``."""
    path = Path(path) if path is not None else study.ratings_path
    out = Ratings()
    if not path.exists():
        return out
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                why = f"broken JSON ({err.msg if isinstance(err, json.JSONDecodeError) else 'not UTF-8'})"
                out.problems.append(f"{path} line {line_no}: {why}; skipped")
                continue
            try:
                out.add(check_record(obj, study))
            except ValueError as err:
                out.problems.append(f"{path} line {line_no}: {err}; skipped")
    return out
