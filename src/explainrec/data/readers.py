"""Readers that turn the supported on-disk formats into one :class:`~explainrec.data.schema.Dataset`.

``load_dataset`` detects the format from the source:

* ``"synthetic"`` or ``"synthetic:users=300,items=200,types=4,seed=1"`` -> :func:`make_synthetic`.
* a folder with ``explanations.jsonl`` + ``interactions.csv`` -> the XRec format.
* a folder with ``reviews.pickle`` (+ ``<index_dir>/{train,validation,test}.index``) -> PETER / PEPLER.
* a ``.csv`` or ``.jsonl`` file with named columns -> a plain table.

XRec split rule (why: the training graph must never contain a valid/test explained pair, otherwise a
graph encoder sees the very edges the explanation is evaluated on):

1. every graph edge whose (user, item) is an explained pair takes that pair's split from
   ``explanations.jsonl``; an explained pair missing from ``interactions.csv`` is added as an edge with
   its split (the user did interact with the item);
2. every other edge keeps the ``split`` column of ``interactions.csv`` when the file has train edges;
3. when it has none (amazon: XRec's train edges were never published, only valid + test ones, or the
   file has no ``split`` column) the other edges are re-split 8:1:1 by a stable hash of (user, item)
   and ``seed`` (:func:`~explainrec.data.splits.hash_split`).

Duplicated edges are kept once (the first). One pair of id maps covers the users/items of both files,
in order of first appearance (graph first).

Plain tables: every row is an interaction (kept once per (user, item)); rows with a non-empty
``explanation`` also become examples; a missing or empty ``split`` is filled 8:1:1 by the same hash.
Split values ``train``, ``valid``/``validation``/``val``, ``test`` are accepted (any case).

Every bad input raises :class:`DataError` naming the file, the line (or pickle row / index position)
and the field.
"""
from __future__ import annotations

import csv
import inspect
import json
import math
import pickle
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np

from explainrec.data.schema import DataError, Dataset, Example, IdMap, Interactions, where
from explainrec.data.splits import hash_split

XREC_FIELDS = ("user", "item", "title", "user_profile", "item_profile", "explanation", "split")
PETER_INDEX_FILES = (("train", "train.index"), ("valid", "validation.index"), ("test", "test.index"))
SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}
LFS_MAGIC = b"version https://git-lfs"

# Short keys accepted in "synthetic:k=v,..." next to make_synthetic's own parameter names.
SYNTHETIC_ALIASES = {
    "users": "n_users",
    "items": "n_items",
    "types": "n_types",
    "features": "n_features",
    "in_type": "in_type_prob",
    "noise": "rating_noise",
    "interactions": "interactions_per_user",
}


# --------------------------------------------------------------------------------------------------
# entry point


def data_path(data: str | None) -> Path | None:
    """The filesystem path of a ``--data`` value (None for the built-in synthetic data): what an output must never
    replace or be written into."""
    if data is None or data == "synthetic" or str(data).startswith("synthetic:"):
        return None
    return Path(data)


def load_dataset(
    source: str | Path,
    *,
    trust_pickle: bool = False,
    index_dir: str = "1",
    seed: int = 0,
    **synthetic_kwargs: Any,
) -> Dataset:
    """Load a dataset from ``source`` (see the module docstring for the formats).

    ``seed`` drives every hash-filled split (and the synthetic generator unless overridden);
    ``trust_pickle`` must be True to read a PETER ``reviews.pickle`` (unpickling runs code);
    ``index_dir`` picks the PETER split folder (``1`` .. ``5``).
    """
    text = str(source)
    if text == "synthetic" or text.startswith("synthetic:"):
        return _load_synthetic(text, seed, synthetic_kwargs)
    if synthetic_kwargs:
        raise DataError(
            f"{source}: options {sorted(synthetic_kwargs)} only apply to the synthetic dataset"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected 'synthetic[:k=v,...]', a dataset folder, "
                        "or a .csv / .jsonl file)")
    _check_fits_in_memory(path)
    if path.is_dir():
        if (path / "explanations.jsonl").exists() or (path / "interactions.csv").exists():
            return read_xrec(path, seed=seed)
        if (path / "reviews.pickle").exists():
            return read_peter(path, trust_pickle=trust_pickle, index_dir=index_dir)
        raise DataError(
            f"{path}: unrecognised dataset folder; expected explanations.jsonl + interactions.csv (XRec) "
            "or reviews.pickle + <index_dir>/{train,validation,test}.index (PETER/PEPLER)"
        )
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        return read_table(path, seed=seed)
    if path.name == "reviews.pickle":
        return read_peter(path.parent, trust_pickle=trust_pickle, index_dir=index_dir)
    raise DataError(f"{path}: unsupported file type '{path.suffix}'; expected .csv, .jsonl, a dataset folder "
                    "or 'synthetic'")


def _check_fits_in_memory(path: Path) -> None:
    """Refuse data whose files alone are larger than the memory available: parsed, it takes more than its bytes,
    and the reader would be killed for memory after minutes, with no message."""
    from explainrec.io import memory_available

    names = ("explanations.jsonl", "interactions.csv", "reviews.pickle")  # what the folder readers read
    files = [path / n for n in names if (path / n).is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files)
    free = memory_available()
    if free is not None and size > free:
        raise DataError(f"{path}: {size / 1e9:.1f} GB of data, more than the {free / 1e9:.1f} GB of memory available "
                        "(read, it takes more than its size); use a machine with more memory or a subset")


def _load_synthetic(text: str, seed: int, kwargs: dict[str, Any]) -> Dataset:
    """Parse ``synthetic:k=v,...``; the string's options win over keyword options, which win over ``seed``."""
    from explainrec.data.synthetic import make_synthetic

    allowed = set(inspect.signature(make_synthetic).parameters)
    options: dict[str, Any] = {"seed": seed, **kwargs}
    _, _, spec = text.partition(":")
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, eq, value = part.partition("=")
        key = SYNTHETIC_ALIASES.get(key.strip(), key.strip())
        if not eq or key not in allowed:
            raise DataError(f"synthetic option '{part}': expected key=value with key in "
                            f"{sorted(set(SYNTHETIC_ALIASES) | allowed)}")
        options[key] = _parse_option(key, value.strip())
    unknown = set(options) - allowed
    if unknown:
        raise DataError(f"synthetic: unknown options {sorted(unknown)}")
    try:
        return make_synthetic(**options)
    except (TypeError, ValueError) as exc:  # e.g. types=9 with users=4: a bad option, not a crash
        raise DataError(f"synthetic: {exc}") from None


def _parse_option(key: str, value: str) -> Any:
    if key == "interactions_per_user":
        lo, sep, hi = value.partition("-")
        try:
            return (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise DataError(f"synthetic option '{key}={value}': expected MIN-MAX, e.g. 3-40") from None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


# --------------------------------------------------------------------------------------------------
# shared helpers


@contextmanager
def _text_file(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """Open UTF-8 text (a BOM is skipped); decoding and CSV errors become DataErrors naming the file."""
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as f:
            yield f
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from None


def check_not_lfs(path: Path) -> None:
    """Raise when ``path`` is a Git LFS pointer instead of the data it points to."""
    with open(path, "rb") as f:
        head = f.read(len(LFS_MAGIC))
    if head.startswith(LFS_MAGIC):
        raise DataError(f"{where(path, 1)}: this file is a Git LFS pointer, not the data; "
                        "fetch the real file (git lfs pull) and try again")


def _norm_split(value: Any, path: Path, line: int, field_name: str = "split") -> str | None:
    """Canonical split name; None when the value is empty (the caller fills it)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    out = SPLIT_ALIASES.get(text)
    if out is None:
        raise DataError(f"{where(path, line, field_name)}: unknown split {value!r}; expected one of "
                        f"{sorted(SPLIT_ALIASES)}")
    return out


def _norm_id(value: Any, path: Path, line: int, field_name: str) -> str:
    """Raw id as text; ints and integral floats agree (``14849`` == ``"14849"`` == ``14849.0``)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise DataError(f"{where(path, line, field_name)}: expected an id, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise DataError(f"{where(path, line, field_name)}: empty id")
    return text


def _norm_float(value: Any, path: Path, line: int, field_name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise DataError(f"{where(path, line, field_name)}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where(path, line, field_name)}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise DataError(f"{where(path, line, field_name)}: expected a finite number, got {value!r}")
    return out


def _norm_timestamp(value: Any, path: Path, line: int, field_name: str = "timestamp") -> float | None:
    """Seconds since the epoch from a number or an ISO-8601 date."""
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            try:
                return datetime.fromisoformat(value.strip()).timestamp()
            except ValueError:
                raise DataError(f"{where(path, line, field_name)}: expected a number or an ISO date, "
                                f"got {value!r}") from None
    return _norm_float(value, path, line, field_name)


def _norm_text(value: Any, path: Path, line: int, field_name: str, required: bool = False) -> str | None:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    else:
        raise DataError(f"{where(path, line, field_name)}: expected text, got {type(value).__name__}")
    if not text:
        if required:
            raise DataError(f"{where(path, line, field_name)}: empty {field_name}")
        return None
    return text


def _norm_features(value: Any, path: Path, line: int, field_name: str = "features") -> tuple[str, ...]:
    """A list of words, or one string separated by ';' or '|'."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.replace("|", ";").split(";")
    elif isinstance(value, (list, tuple)):
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            raise DataError(f"{where(path, line, field_name)}: expected a list of words, got {value!r}")
        parts = [str(v) for v in value]
    else:
        raise DataError(f"{where(path, line, field_name)}: expected a list or a ';'-separated string, "
                        f"got {type(value).__name__}")
    return tuple(p.strip() for p in parts if p.strip())


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    check_not_lfs(path)
    with _text_file(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where(path, line_no)}: broken JSON line ({exc.msg} at column "
                                f"{exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where(path, line_no)}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def _csv_header(reader: Any, path: Path, required: tuple[str, ...]) -> dict[str, int]:
    """Column name -> position; raises naming the first missing required column."""
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{where(path, 1)}: empty file, expected a header line") from None
    columns = {name.strip().lower(): pos for pos, name in enumerate(header)}
    for name in required:
        if name not in columns:
            raise DataError(f"{where(path, 1, name)}: missing column '{name}' (header: {', '.join(header)})")
    return columns


def _interactions(
    user: list[int], item: list[int], split: list[str], rating: list[float] | None = None,
    timestamp: list[float] | None = None,
) -> Interactions:
    return Interactions(
        user=np.asarray(user, dtype=np.int64),
        item=np.asarray(item, dtype=np.int64),
        split=np.asarray(split, dtype="<U5"),
        rating=None if rating is None else np.asarray(rating, dtype=np.float32),
        timestamp=None if timestamp is None else np.asarray(timestamp, dtype=np.float64),
    )


# --------------------------------------------------------------------------------------------------
# XRec folder


def read_xrec(folder: str | Path, *, seed: int = 0) -> Dataset:
    """Read an XRec folder (``explanations.jsonl`` + ``interactions.csv``); see the module docstring."""
    folder = Path(folder)
    exp_path, graph_path = folder / "explanations.jsonl", folder / "interactions.csv"
    for p in (exp_path, graph_path):
        if not p.exists():
            raise DataError(f"{p}: missing; an XRec folder holds explanations.jsonl and interactions.csv")
    user_raw, item_raw, file_split = _read_graph_csv(graph_path)
    # raw id -> index (order of first appearance, graph first); turned into IdMaps at the end
    edge_u, u_raw = _codes(user_raw)
    edge_i, i_raw = _codes(item_raw)
    u_index = {k: n for n, k in enumerate(u_raw)}
    i_index = {k: n for n, k in enumerate(i_raw)}

    # explained pairs
    examples: list[Example] = []
    pair_split: dict[tuple[int, int], tuple[str, int]] = {}
    for line, obj in iter_jsonl(exp_path):
        for name in XREC_FIELDS:
            if name not in obj:
                raise DataError(f"{where(exp_path, line, name)}: missing field '{name}'")
        u = u_index.setdefault(_norm_id(obj["user"], exp_path, line, "user"), len(u_index))
        i = i_index.setdefault(_norm_id(obj["item"], exp_path, line, "item"), len(i_index))
        split = _norm_split(obj["split"], exp_path, line)
        if split is None:
            raise DataError(f"{where(exp_path, line, 'split')}: empty split")
        seen = pair_split.get((u, i))
        if seen is not None and seen[0] != split:
            raise DataError(f"{where(exp_path, line, 'split')}: pair ({obj['user']}, {obj['item']}) is "
                            f"'{split}' here but '{seen[0]}' on line {seen[1]}")
        pair_split.setdefault((u, i), (split, line))
        examples.append(Example(
            user=u, item=i, split=split,
            explanation=_norm_text(obj["explanation"], exp_path, line, "explanation", required=True),
            title=_norm_text(obj["title"], exp_path, line, "title"),
            user_profile=_norm_text(obj["user_profile"], exp_path, line, "user_profile"),
            item_profile=_norm_text(obj["item_profile"], exp_path, line, "item_profile"),
        ))

    users, items = IdMap(list(u_index)), IdMap(list(i_index))

    # keep the first occurrence of each edge; int64 keys u * n_items + i
    n_items = len(items)
    first = np.sort(np.unique(edge_u * n_items + edge_i, return_index=True)[1])
    edge_u, edge_i, splits = edge_u[first], edge_i[first], file_split[first]
    edge_key = edge_u * n_items + edge_i

    # explained pairs take their own split
    pairs = list(pair_split)
    pair_key = np.array([u * n_items + i for u, i in pairs], dtype=np.int64)
    pair_sp = np.array([pair_split[k][0] for k in pairs], dtype="<U5")
    loc, in_graph = _locate(edge_key, pair_key)
    explained = np.zeros(len(edge_key), dtype=bool)
    explained[loc[in_graph]] = True

    # the other edges: file split when the file has train edges, else a hash split
    file_has_train = bool((splits == "train").any())
    free = ~explained & ((splits == "") | (not file_has_train))
    free_rows = np.flatnonzero(free)
    if len(free_rows):
        u_raw, i_raw = users.raw, items.raw
        splits[free_rows] = hash_split(((u_raw[edge_u[n]], i_raw[edge_i[n]]) for n in free_rows), seed=seed)
    moved = int(((splits[loc[in_graph]] != pair_sp[in_graph]) & (splits[loc[in_graph]] != "")).sum())
    splits[loc[in_graph]] = pair_sp[in_graph]
    add = ~in_graph  # explained pairs missing from the graph become edges with their split
    add_u = np.array([pairs[n][0] for n in np.flatnonzero(add)], dtype=np.int64)
    add_i = np.array([pairs[n][1] for n in np.flatnonzero(add)], dtype=np.int64)
    inter = Interactions(
        user=np.concatenate([edge_u, add_u]),
        item=np.concatenate([edge_i, add_i]),
        split=np.concatenate([splits, pair_sp[add]]).astype("<U5"),
    )
    meta = {
        "format": "xrec",
        "source": str(folder),
        "file_has_train_edges": file_has_train,
        "resplit_edges": int(len(free_rows)),
        "explained_edges_moved": moved,
        "explained_edges_added": int(add.sum()),
        "split_seed": seed,
    }
    return Dataset(name=folder.name, interactions=inter, examples=examples, users=users, items=items, meta=meta)


def _codes(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Contiguous codes (N,) int64 of ``values`` numbered in order of first appearance, and the distinct values."""
    if not values:
        return np.zeros(0, dtype=np.int64), []
    distinct, first, inverse = np.unique(np.array(values), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # distinct values in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)].astype(np.int64), distinct[order].tolist()


def _locate(keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each query in ``keys`` (unique) and whether it is there at all."""
    if len(keys) == 0:
        return np.zeros(len(queries), dtype=np.int64), np.zeros(len(queries), dtype=bool)
    order = np.argsort(keys)
    pos = np.minimum(np.searchsorted(keys, queries, sorter=order), len(keys) - 1)
    loc = order[pos]
    return loc, keys[loc] == queries


def _read_graph_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Columns user, item (raw text) and split (canonical; "" where not given) of ``interactions.csv``.

    Column-wise (list comprehensions, map, numpy) because the google graph has 411k lines.
    """
    check_not_lfs(path)
    with _text_file(path, newline="") as f:
        reader = csv.reader(f)
        cols = _csv_header(reader, path, ("user", "item"))
        rows = list(filter(None, reader))  # C-level loops where possible: this is the hot path
    width = max(cols.values()) + 1
    if rows and min(map(len, rows)) < width:
        short = next(n for n, r in enumerate(rows) if len(r) < width)
        raise DataError(f"{where(path, _csv_line_of(path, short))}: expected {width} columns, "
                        f"got {len(rows[short])}")
    iu, ii, isp = cols["user"], cols["item"], cols.get("split")
    users = list(map(str.strip, [r[iu] for r in rows]))
    items = list(map(str.strip, [r[ii] for r in rows]))
    for name, values in (("user", users), ("item", items)):
        if not all(values):
            n = values.index("")
            raise DataError(f"{where(path, _csv_line_of(path, n), name)}: empty id")
    if isp is None:
        return users, items, np.full(len(rows), "", dtype="<U5")
    raw = [r[isp] for r in rows]
    canon = {}
    for value in set(raw):  # few distinct values: check each once, find the line only on error
        try:
            canon[value] = _norm_split(value, path, 0) or ""
        except DataError:
            n = raw.index(value)
            _norm_split(value, path, _csv_line_of(path, n))
    return users, items, np.array([canon[v] for v in raw], dtype="<U5")


def _csv_line_of(path: Path, record: int) -> int:
    """Line number of the ``record``-th non-blank data record (0-based) of a CSV, for error messages."""
    with _text_file(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        n = -1
        for row in reader:
            if row:
                n += 1
                if n == record:
                    return reader.line_num
    return reader.line_num


# --------------------------------------------------------------------------------------------------
# PETER / PEPLER folder


def read_peter(folder: str | Path, *, trust_pickle: bool = False, index_dir: str = "1") -> Dataset:
    """Read ``reviews.pickle`` and the split index files of PETER/PEPLER.

    Every review is one rated interaction and one example whose explanation is the template's
    sentence and whose features are ``(feature,)``.
    """
    folder = Path(folder)
    pkl = folder / "reviews.pickle"
    if not pkl.exists():
        raise DataError(f"{pkl}: missing")
    check_not_lfs(pkl)
    if not trust_pickle:
        raise DataError(
            f"{pkl}: refusing to unpickle (a pickle can run arbitrary code); if you trust this file pass "
            "--trust-pickle on the command line or trust_pickle=True in Python"
        )
    try:
        with open(pkl, "rb") as f:
            reviews = pickle.load(f)  # noqa: S301 -- explicit opt-in above
    except Exception as exc:  # any unpickling failure is bad data
        raise DataError(f"{pkl}: cannot unpickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(reviews, (list, tuple)):
        raise DataError(f"{pkl}: expected a list of review dicts, got {type(reviews).__name__}")

    row_split = _read_peter_indices(folder / index_dir, len(reviews))
    users, items = IdMap(), IdMap()
    u_col: list[int] = []
    i_col: list[int] = []
    s_col: list[str] = []
    r_col: list[float] = []
    examples: list[Example] = []
    for row, review in enumerate(reviews):
        split = row_split.get(row)
        if split is None:
            continue  # not part of this benchmark split
        if not isinstance(review, dict):
            raise DataError(f"{pkl} row {row}: expected a dict, got {type(review).__name__}")
        for name in ("user", "item", "rating", "template"):
            if name not in review:
                raise DataError(f"{where(pkl, row, name)}: missing field '{name}' (row {row})")
        u = users.add(_norm_id(review["user"], pkl, row, "user"))
        i = items.add(_norm_id(review["item"], pkl, row, "item"))
        rating = _norm_float(review["rating"], pkl, row, "rating")
        if rating is None:
            raise DataError(f"{where(pkl, row, 'rating')}: missing rating (row {row})")
        template = review["template"]
        if not isinstance(template, (list, tuple)) or len(template) < 3:
            raise DataError(f"{where(pkl, row, 'template')}: expected (feature, adjective, sentence, sentiment), "
                            f"got {template!r} (row {row})")
        feature = _norm_text(template[0], pkl, row, "template.feature")
        sentence = _norm_text(template[2], pkl, row, "template.sentence", required=True)
        u_col.append(u)
        i_col.append(i)
        s_col.append(split)
        r_col.append(rating)
        examples.append(Example(user=u, item=i, split=split, explanation=sentence, rating=rating,
                                features=(feature,) if feature else ()))
    inter = _interactions(u_col, i_col, s_col, rating=r_col)
    meta = {"format": "peter", "source": str(folder), "index_dir": str(index_dir), "reviews": len(reviews)}
    return Dataset(name=folder.name, interactions=inter, examples=examples, users=users, items=items, meta=meta)


def _read_peter_indices(index_folder: Path, n_rows: int) -> dict[int, str]:
    """Row -> split from ``train.index`` / ``validation.index`` / ``test.index``."""
    out: dict[int, str] = {}
    origin: dict[int, Path] = {}
    for split, name in PETER_INDEX_FILES:
        path = index_folder / name
        if not path.exists():
            raise DataError(f"{path}: missing split index file (choose the split folder with index_dir / "
                            "--index-dir)")
        check_not_lfs(path)
        with _text_file(path) as f:
            tokens = [(line_no, tok) for line_no, line in enumerate(f, 1) for tok in line.split()]
        for pos, (line_no, tok) in enumerate(tokens, start=1):
            try:
                row = int(tok)
            except ValueError:
                raise DataError(f"{where(path, line_no)}: position {pos}: '{tok}' is not an integer row "
                                "index") from None
            if not 0 <= row < n_rows:
                raise DataError(f"{where(path, line_no)}: position {pos}: row {row} is out of range "
                                f"(reviews.pickle has {n_rows} rows)")
            if row in out:
                raise DataError(f"{where(path, line_no)}: position {pos}: row {row} is already listed in "
                                f"{origin[row]}")
            out[row] = split
            origin[row] = path
    return out


# --------------------------------------------------------------------------------------------------
# plain CSV / JSON lines


def _table_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row dict) for a .csv (header line required) or a .jsonl file; checks user/item exist."""
    if path.suffix.lower() == ".jsonl":
        for line, obj in iter_jsonl(path):
            row = {str(k).strip().lower(): v for k, v in obj.items()}
            for name in ("user", "item"):
                if name not in row:
                    raise DataError(f"{where(path, line, name)}: missing field '{name}'")
            yield line, row
        return
    check_not_lfs(path)
    with _text_file(path, newline="") as f:
        reader = csv.reader(f)
        cols = _csv_header(reader, path, ("user", "item"))
        names = list(cols)
        for values in reader:
            if not values:
                continue
            line = reader.line_num
            if len(values) != len(names):
                raise DataError(f"{where(path, line)}: expected {len(names)} columns, got {len(values)}")
            yield line, {name: values[cols[name]] for name in names}


def read_table(path: str | Path, *, seed: int = 0) -> Dataset:
    """Read a .csv / .jsonl with columns user, item and optionally rating, timestamp, explanation, title,
    user_profile, item_profile, features, split (see the module docstring)."""
    path = Path(path)
    users, items = IdMap(), IdMap()
    first_row: dict[tuple[int, int], int] = {}
    u_col: list[int] = []
    i_col: list[int] = []
    s_col: list[str | None] = []
    r_col: list[float | None] = []
    t_col: list[float | None] = []
    lines: list[int] = []
    examples: list[Example] = []
    example_rows: list[int] = []
    for line, row in _table_rows(path):
        u = users.add(_norm_id(row["user"], path, line, "user"))
        i = items.add(_norm_id(row["item"], path, line, "item"))
        split = _norm_split(row.get("split"), path, line)
        rating = _norm_float(row.get("rating"), path, line, "rating")
        ts = _norm_timestamp(row.get("timestamp"), path, line)
        explanation = _norm_text(row.get("explanation"), path, line, "explanation")
        n = first_row.get((u, i))
        if n is not None and split is not None and s_col[n] is not None and s_col[n] != split:
            raise DataError(f"{where(path, line, 'split')}: pair ({row['user']}, {row['item']}) is '{split}' "
                            f"here but '{s_col[n]}' on line {lines[n]}")
        if n is not None and s_col[n] is None:
            s_col[n] = split
        if n is None:
            n = first_row[(u, i)] = len(u_col)
            u_col.append(u)
            i_col.append(i)
            s_col.append(split)
            r_col.append(rating)
            t_col.append(ts)
            lines.append(line)
        if explanation is not None:
            examples.append(Example(
                user=u, item=i, split="", explanation=explanation, rating=rating,
                features=_norm_features(row.get("features"), path, line),
                title=_norm_text(row.get("title"), path, line, "title"),
                user_profile=_norm_text(row.get("user_profile"), path, line, "user_profile"),
                item_profile=_norm_text(row.get("item_profile"), path, line, "item_profile"),
                timestamp=ts,
            ))
            example_rows.append(n)
    if not u_col:
        raise DataError(f"{path}: no rows")

    # a column is used when any row fills it; then every row must fill it
    rating = _complete_column(r_col, lines, path, "rating")
    timestamp = _complete_column(t_col, lines, path, "timestamp")
    missing = [n for n, s in enumerate(s_col) if s is None]
    if missing:
        filled = hash_split(((users.raw[u_col[n]], items.raw[i_col[n]]) for n in missing), seed=seed)
        for n, s in zip(missing, filled):
            s_col[n] = str(s)
    for ex, n in zip(examples, example_rows):
        ex.split = s_col[n]  # one split per pair, so no explained pair leaks into the train graph
    inter = _interactions(u_col, i_col, s_col, rating=rating, timestamp=timestamp)
    meta = {"format": "table", "source": str(path), "hashed_splits": len(missing), "split_seed": seed}
    return Dataset(name=path.stem, interactions=inter, examples=examples, users=users, items=items, meta=meta)


def _complete_column(values: list[float | None], lines: list[int], path: Path, name: str) -> list[float] | None:
    if all(v is None for v in values):
        return None
    for v, line in zip(values, lines):
        if v is None:
            raise DataError(f"{where(path, line, name)}: missing {name} (other rows have one)")
    return values  # type: ignore[return-value]
