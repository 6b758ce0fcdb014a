"""Read and check prediction files: one JSON object per line, a generated text and its reference.

Every method writes its test-set outputs in this one format so that a single evaluator scores them
all alike. Keys are normalised so that files written by older scripts (``pred``/``ref``,
``generated``/``explanation``) load too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from explainrec.data.schema import DataError, where

PREDICTION_KEYS = ("prediction", "pred", "generated")
REFERENCE_KEYS = ("reference", "ref", "explanation", "gold")


def _pick(obj: dict, keys: tuple[str, ...], path: str | Path, line: int | None, role: str) -> str:
    """The first of ``keys`` present in ``obj``; it must hold a string."""
    for key in keys:
        if key in obj:
            value = obj[key]
            if not isinstance(value, str):
                raise DataError(f"{where(path, line, key)}: {role} must be a string, got {type(value).__name__}")
            return value
    raise DataError(f"{where(path, line, keys[0])}: missing {role} (accepted keys: {', '.join(keys)})")


def _features(value: object, path: str | Path, line: int | None) -> list[str]:
    """A list of feature words/phrases; a plain string is one feature (PETER keeps one per review)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        out = []
        for i, f in enumerate(value):
            if not isinstance(f, str):
                raise DataError(f"{where(path, line, 'features')}: item {i} must be a string, got {type(f).__name__}")
            if f.strip():
                out.append(f)
        return out
    raise DataError(f"{where(path, line, 'features')}: must be a list of strings or a string, got {type(value).__name__}")


def check_row(obj: object, path: str | Path = "<rows>", line: int | None = None) -> dict:
    """Validate one prediction row and return it with ``prediction``/``reference`` keys.

    Other keys are kept as they are (after a type check for the known optional ones), so callers can
    carry their own columns through. The reference must not be empty (nothing to score against); an
    empty prediction is a legal, if poor, output.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where(path, line)}: expected a JSON object, got {type(obj).__name__}")
    prediction = _pick(obj, PREDICTION_KEYS, path, line, "prediction")
    reference = _pick(obj, REFERENCE_KEYS, path, line, "reference")
    if not reference.strip():
        raise DataError(f"{where(path, line, 'reference')}: reference is empty")
    row = {k: v for k, v in obj.items() if k not in PREDICTION_KEYS and k not in REFERENCE_KEYS}
    row["prediction"] = prediction
    row["reference"] = reference
    for key in ("user", "item", "cluster"):
        if key in row and row[key] is not None and (isinstance(row[key], bool) or not isinstance(row[key], (str, int))):
            raise DataError(f"{where(path, line, key)}: must be a string or an integer, got {type(row[key]).__name__}")
    for key in ("bucket", "method"):
        if key in row and row[key] is not None and not isinstance(row[key], str):
            raise DataError(f"{where(path, line, key)}: must be a string, got {type(row[key]).__name__}")
    if "features" in row:
        row["features"] = _features(row["features"], path, line)
    return row


def check_rows(rows: Iterable[object], source: str | Path = "<rows>") -> list[dict]:
    """:func:`check_row` over an in-memory list; errors name the row index (1-based, like a file line)."""
    out = [check_row(obj, source, i) for i, obj in enumerate(rows, start=1)]
    if not out:
        raise DataError(f"{where(source)}: no prediction rows")
    return out


def load_predictions(path: str | Path) -> list[dict]:
    """Read a JSON-lines prediction file; blank lines are skipped, anything else must be a valid row.

    Each row gets ``prediction`` and ``reference`` (from any accepted alias) plus whichever optional
    fields it carries: ``user``, ``item``, ``features``, ``bucket`` (ds1/ds2/ds3), ``cluster``, ``method``.
    """
    from explainrec.data.readers import iter_jsonl

    path = Path(path)
    rows = [check_row(obj, path, line_no) for line_no, obj in iter_jsonl(path)]
    if not rows:
        raise DataError(f"{where(path)}: empty prediction file")
    return rows
