"""Pairs to explain, read from a file a chunk at a time (JSONL or Parquet), so memory stays flat at any size.

A record is one pair or a recommender's top-k list for one user:

    {"user": "u1", "item": "i9", "title": "...", "user_profile": "...", "item_profile": "...",
     "features": ["zipper"], "rating": 4, "explanation": "the reference, if any"}
    {"user": "u1", "items": ["i9", "i4", "i7"], "scores": [0.9, 0.7, 0.4], "user_profile": "..."}

A list gives one pair per item in its order (each row then carries ``rank`` 1..k and its ``score``); the record's
other fields go to every pair of it. Pair n of the stream is the n-th pair of this expansion, and chunk k holds
pairs ``k*chunk_size .. (k+1)*chunk_size - 1`` (a list may straddle two chunks).

Why a scan first (:meth:`PairStream.scan`): it checks every record (a bad line 9,000,000 is reported before the
first pair is generated, naming the file, line and field), counts the pairs (how many chunks; the ETA),
fingerprints the bytes (a resume over a changed file is refused) and notes where each chunk starts, so a process
seeks straight to its own chunks. Only those starts are kept: a few bytes per chunk, never the pairs.

Parquet is read by row group (``pyarrow``, the ``parquet`` extra): memory follows the file's row-group size, so
write large files with row groups of at most ~100k rows.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from explainrec.data.schema import DataError, Pair

ID_FIELDS = ("user", "item")
TEXT_FIELDS = ("title", "user_profile", "item_profile", "explanation")
FIELDS = ("user", "item", "items", "scores", *TEXT_FIELDS[:3], "features", "rating", "explanation")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
PARQUET_BATCH = 1024  # rows converted to Python at once


@dataclass(frozen=True)
class StreamPair:
    """One pair of the stream and what its row adds (``rank``/``score`` of a top-k list)."""

    pair: Pair
    extra: dict


@dataclass
class StreamIndex:
    """What :meth:`PairStream.scan` found: the pair count, the file's fingerprint, and where each chunk starts.

    ``starts[k] = (position, line, skip)``: the record that holds chunk k's first pair (byte offset in JSONL, row
    number in Parquet), its line / row number for messages, and how many of its pairs belong to chunk k-1.
    """

    pairs: int
    records: int
    sha256: str
    chunk_size: int
    starts: np.ndarray  # (n_chunks, 3) int64

    @property
    def n_chunks(self) -> int:
        return len(self.starts)


def _id(value, where: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where} field '{name}': must be an id (non-empty text or an integer), got {value!r}")
    return str(value)


def parse_record(obj, where: str) -> list[StreamPair]:
    """The pairs of one record (``where``: ``file:line`` for messages); every field is type-checked."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with 'user' and 'item' (or 'items'), got "
                        f"{type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise DataError(f"{where} field '{unknown[0]}': unknown field; a record has user, item (or items, with "
                        f"optional scores) and optionally {', '.join(FIELDS[4:])}")
    if obj.get("user") is None:
        raise DataError(f"{where} field 'user': missing")
    user = _id(obj["user"], where, "user")
    has_item, has_items = obj.get("item") is not None, obj.get("items") is not None
    if has_item == has_items:
        raise DataError(f"{where} field 'item': give either 'item' (one pair) or 'items' (a top-k list), "
                        + ("not both" if has_item else "neither is there"))
    text = {}
    for name in TEXT_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where} field '{name}': must be text, got {value!r}")
        text[name] = value
    features = obj.get("features")
    if features is not None and (not isinstance(features, list) or not all(isinstance(f, str) for f in features)):
        raise DataError(f"{where} field 'features': must be a list of words, e.g. [\"collar\", \"zipper\"]; got "
                        f"{features!r}")
    rating = obj.get("rating")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))
                               or not math.isfinite(rating)):
        raise DataError(f"{where} field 'rating': must be a number, got {rating!r}")
    common = dict(user=user, title=text["title"], user_profile=text["user_profile"],
                  item_profile=text["item_profile"], features=tuple(features or ()),
                  rating=None if rating is None else float(rating), explanation=text["explanation"] or "")
    if has_item:
        if obj.get("scores") is not None:
            raise DataError(f"{where} field 'scores': only with 'items' (a top-k list)")
        return [StreamPair(Pair(item=_id(obj["item"], where, "item"), **common), {})]
    items, scores = obj["items"], obj.get("scores")
    if not isinstance(items, list) or not items:
        raise DataError(f"{where} field 'items': must be a non-empty list of item ids, got {items!r}")
    if scores is not None and (not isinstance(scores, list) or len(scores) != len(items) or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) for s in scores)):
        raise DataError(f"{where} field 'scores': must be a list of {len(items)} numbers (one per item), got "
                        f"{scores!r}")
    return [StreamPair(Pair(item=_id(item, where, f"items[{j}]"), **common),
                       {"rank": j + 1, **({"score": scores[j]} if scores is not None else {})})
            for j, item in enumerate(items)]


class PairStream:
    """A file of pair records, read in chunks; ``limit`` keeps the first N pairs only."""

    def __init__(self, path: str | Path, limit: int | None = None) -> None:
        self.path = Path(path)
        self.limit = limit
        self.format = FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise DataError(f"{self.path}: unknown pair file format; expected {', '.join(sorted(FORMATS))} "
                            "(JSON lines or Parquet)")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        if limit is not None and limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}")
        self._scanned: dict[int, StreamIndex] = {}

    # -------------------------------------------------------------------------------------------- scanning

    def scan(self, chunk_size: int) -> StreamIndex:
        """Check every record, count the pairs, fingerprint the file and note each chunk's start (see above).

        Done once per chunk size (kept), so a caller can check the file before loading a model."""
        if chunk_size in self._scanned:
            return self._scanned[chunk_size]
        if chunk_size < 1:
            raise DataError(f"chunk size must be at least 1, got {chunk_size}")
        starts: list[tuple[int, int, int]] = []
        pairs = records = 0
        cap = self.limit if self.limit is not None else math.inf
        for position, line, n in self._counts():
            if pairs >= cap:
                break
            records += 1
            # a chunk starts inside this record at every multiple of chunk_size in [pairs, pairs + n)
            first = -(-pairs // chunk_size) * chunk_size
            for start in range(first, int(min(pairs + n, cap)), chunk_size):
                starts.append((position, line, start - pairs))
            pairs = int(min(pairs + n, cap))
        if pairs == 0:
            raise DataError(f"{self.path}: holds no pairs")
        index = StreamIndex(pairs=pairs, records=records, sha256=self._sha256(), chunk_size=chunk_size,
                            starts=np.asarray(starts, dtype=np.int64).reshape(-1, 3))
        self._scanned[chunk_size] = index
        return index

    def _counts(self) -> Iterator[tuple[int, int, int]]:
        """``(position, line, pairs)`` of every record, each record checked."""
        if self.format == "jsonl":
            for position, line, obj in self._jsonl(0, 1):
                yield position, line, len(parse_record(obj, f"{self.path}:{line}"))
        else:
            for row, obj in self._parquet(0):
                yield row, row + 1, len(parse_record(obj, f"{self.path}: row {row + 1}"))

    def _sha256(self) -> str:
        from explainrec.io import sha256_file

        return sha256_file(self.path)

    # -------------------------------------------------------------------------------------------- reading

    def chunks(self, index: StreamIndex, ks: Iterable[int]) -> Iterator[tuple[int, list[StreamPair]]]:
        """``(k, pairs of chunk k)`` for each ``k`` of ``ks`` (ascending), reading only what those chunks hold."""
        for k in ks:
            position, line, skip = (int(v) for v in index.starts[k])
            want = min(index.chunk_size, index.pairs - k * index.chunk_size)
            out: list[StreamPair] = []
            for where, obj in self._records_from(position, line):
                out += parse_record(obj, where)[skip:]
                skip = 0
                if len(out) >= want:
                    break
            if len(out) < want:
                raise DataError(f"{self.path}: ended inside chunk {k + 1} (the file changed since it was scanned?)")
            yield k, out[:want]

    def _records_from(self, position: int, line: int) -> Iterator[tuple[str, object]]:
        if self.format == "jsonl":
            for _, n, obj in self._jsonl(position, line):
                yield f"{self.path}:{n}", obj
        else:
            for row, obj in self._parquet(position):
                yield f"{self.path}: row {row + 1}", obj

    def _jsonl(self, offset: int, line: int) -> Iterator[tuple[int, int, object]]:
        """``(byte offset, line number, object)`` of each non-blank line from ``offset`` on."""
        from explainrec.data.readers import check_not_lfs

        if offset == 0:
            check_not_lfs(self.path)
        with open(self.path, "rb") as f:
            f.seek(offset)
            for raw in f:
                if raw.strip():
                    try:
                        obj = json.loads(raw)
                    except UnicodeDecodeError as err:
                        raise DataError(f"{self.path}:{line}: not UTF-8 text ({err.reason})") from None
                    except json.JSONDecodeError as err:
                        raise DataError(f"{self.path}:{line}: broken JSON line ({err.msg} at column {err.colno})"
                                        ) from None
                    yield offset, line, obj
                offset += len(raw)
                line += 1

    def _parquet(self, row: int) -> Iterator[tuple[int, dict]]:
        """``(row number, record)`` from row ``row`` on: whole row groups skipped, the rest converted a batch at a
        time (null fields become absent)."""
        pf = _parquet_file(self.path)
        names = [n for n in pf.schema_arrow.names]
        unknown = sorted(set(names) - set(FIELDS))
        if unknown:
            raise DataError(f"{self.path} field '{unknown[0]}': unknown column; a record has user, item (or items, "
                            f"with optional scores) and optionally {', '.join(FIELDS[4:])}")
        first, group = 0, 0
        meta = pf.metadata
        while group < meta.num_row_groups and first + meta.row_group(group).num_rows <= row:
            first += meta.row_group(group).num_rows
            group += 1
        if group >= meta.num_row_groups:
            return
        at = first
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=range(group, meta.num_row_groups)):
            if at + batch.num_rows <= row:
                at += batch.num_rows
                continue
            lo = max(0, row - at)
            for j, rec in enumerate(batch.slice(lo).to_pylist()):
                yield at + lo + j, {k: v for k, v in rec.items() if v is not None}
            at += batch.num_rows


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'explainrec[parquet]'") from None
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


class DatasetText:
    """Fills what a streamed pair leaves out from a dataset, as :meth:`Dataset.pair` does, in O(1) per pair.

    The pair's own example when the dataset has it (its text and its reference); else the item's title, profile
    and features from any example of the item and the user's profile from any example of the user. Fields the
    record gives win. Why not :meth:`Dataset.pair`: it scans every example per call, fine for one pair, hours for
    a million.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.by_pair, self.by_item, self.by_user = {}, {}, {}
        for e in dataset.examples:
            self.by_pair.setdefault((e.user, e.item), e)
            self.by_item.setdefault(e.item, e)
            if e.user_profile:
                self.by_user.setdefault(e.user, e)

    def fill(self, pair: Pair) -> Pair:
        u = self.dataset.users.encode(pair.user, default=-1)
        i = self.dataset.items.encode(pair.item, default=-1)
        own = self.by_pair.get((u, i))
        if own is not None:
            known = self.dataset.pair_of(own)
        else:
            item_ex, user_ex = self.by_item.get(i), self.by_user.get(u)
            known = Pair(user=pair.user, item=pair.item,
                         title=item_ex.title if item_ex else None,
                         item_profile=item_ex.item_profile if item_ex else None,
                         features=tuple(item_ex.features) if item_ex else (),
                         user_profile=user_ex.user_profile if user_ex else None)
        return Pair(user=pair.user, item=pair.item,
                    title=pair.title if pair.title is not None else known.title,
                    user_profile=pair.user_profile if pair.user_profile is not None else known.user_profile,
                    item_profile=pair.item_profile if pair.item_profile is not None else known.item_profile,
                    features=pair.features or known.features,
                    rating=pair.rating if pair.rating is not None else known.rating,
                    explanation=pair.explanation or known.explanation)
