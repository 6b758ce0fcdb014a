"""The one in-memory dataset every method reads.

A dataset has two tables that share one pair of id maps:

* ``interactions`` -- the user-item graph (optionally rated and timestamped). Stage 1 of GaVaMoE,
  LightGCN and the sparsity buckets read it.
* ``examples`` -- the user-item pairs that carry an explanation text (plus profiles, title, feature
  words). The LLM stages read them.

For PETER-style reviews and the synthetic data both tables describe the same rows; for XRec data
the graph is much larger than the set of explained pairs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Bad input data. The message names the file, line and field."""


def where(path: str | Path, line: int | None = None, field_name: str | None = None) -> str:
    """Render ``file:line field 'x'`` for error messages."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field_name is not None:
        out += f" field '{field_name}'"
    return out


@dataclass
class IdMap:
    """Raw ids (strings) <-> contiguous indices 0..n-1, in order of first appearance.

    Saved with every model, so that a checkpoint maps the same raw ids to the same rows.
    """

    raw: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.raw = [str(r) for r in self.raw]
        self._index = {r: i for i, r in enumerate(self.raw)}
        if len(self._index) != len(self.raw):
            raise DataError("IdMap: duplicate raw ids")

    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, raw_id: object) -> bool:
        return str(raw_id) in self._index

    def add(self, raw_id: object) -> int:
        """Index of ``raw_id``, appending it when new."""
        key = str(raw_id)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self.raw)
            self.raw.append(key)
            self._index[key] = idx
        return idx

    def encode(self, raw_id: object, default: int | None = None) -> int:
        """Index of a known raw id; ``default`` (or a KeyError naming the id) when unseen."""
        idx = self._index.get(str(raw_id))
        if idx is None:
            if default is None:
                raise KeyError(f"unknown id {raw_id!r}")
            return default
        return idx

    def decode(self, index: int) -> str:
        return self.raw[int(index)]

    def encode_all(self, raw_ids, default: int = -1) -> list[int]:
        """Indices of many raw ids; unseen ones become ``default`` (a model's cold-start row)."""
        get = self._index.get
        return [get(str(r), default) for r in raw_ids]

    def to_list(self) -> list[str]:
        return list(self.raw)


@dataclass
class Example:
    """One user-item pair with its explanation and whatever context the source provides.

    ``user``/``item`` are contiguous indices into the dataset's id maps.
    """

    user: int
    item: int
    split: str = "train"
    explanation: str = ""
    rating: float | None = None
    features: tuple[str, ...] = ()
    title: str | None = None
    user_profile: str | None = None
    item_profile: str | None = None
    timestamp: float | None = None


@dataclass
class Pair:
    """A user-item pair to explain, by raw ids, with the text the prompt may use.

    What the methods' explainers take: from a dataset (:meth:`Dataset.pair_of`, :meth:`Dataset.pair`), the
    command line or an HTTP request. The text fields have :class:`Example`'s names, so the prompt builders read
    either; ``explanation`` is the reference, never part of a prompt.
    """

    user: str
    item: str
    title: str | None = None
    user_profile: str | None = None
    item_profile: str | None = None
    features: tuple[str, ...] = ()
    rating: float | None = None
    explanation: str = ""


@dataclass
class Interactions:
    """Column arrays of the interaction graph. ``rating`` is None for implicit feedback."""

    user: np.ndarray  # (N,) int64
    item: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) str: train / valid / test
    rating: np.ndarray | None = None  # (N,) float32
    timestamp: np.ndarray | None = None  # (N,) float64

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, mask: np.ndarray) -> "Interactions":
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return Interactions(self.user[mask], self.item[mask], self.split[mask], pick(self.rating), pick(self.timestamp))

    def of_split(self, split: str) -> "Interactions":
        return self.subset(self.split == split)


@dataclass
class Dataset:
    """A named dataset: interaction graph + explained pairs + id maps (+ optional ground truth)."""

    name: str
    interactions: Interactions
    examples: list[Example]
    users: IdMap
    items: IdMap
    # Synthetic data only: the latent type of every user (index = contiguous user id).
    user_types: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def implicit(self) -> bool:
        """True when the graph has no ratings (GaVaMoE then uses a Bernoulli likelihood)."""
        return self.interactions.rating is None

    def split_examples(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [e for e in self.examples if e.split == split]

    def pair_of(self, example: Example) -> Pair:
        """The :class:`Pair` of one of this dataset's examples (raw ids, the same text)."""
        return Pair(user=self.users.decode(example.user), item=self.items.decode(example.item), title=example.title,
                    user_profile=example.user_profile, item_profile=example.item_profile,
                    features=tuple(example.features), rating=example.rating, explanation=example.explanation)

    def pair(self, user: str, item: str) -> tuple[Pair, str]:
        """A pair by raw ids with what this dataset knows about it, and where that came from.

        The pair's own example when it has one (exactly the training prompt); otherwise the item's title and
        profile from any example of that item and the user's profile from any example of that user. Returns
        ``(pair, source)`` with ``source`` one of ``example``, ``profiles``, ``unknown``.
        """
        u = self.users.encode(user, default=-1)
        i = self.items.encode(item, default=-1)
        if u >= 0 and i >= 0:
            for e in self.examples:
                if e.user == u and e.item == i:
                    return self.pair_of(e), "example"
        item_ex = next((e for e in self.examples if e.item == i), None) if i >= 0 else None
        user_ex = next((e for e in self.examples if e.user == u and e.user_profile), None) if u >= 0 else None
        pair = Pair(user=str(user), item=str(item),
                    title=item_ex.title if item_ex else None,
                    item_profile=item_ex.item_profile if item_ex else None,
                    features=tuple(item_ex.features) if item_ex else (),
                    user_profile=user_ex.user_profile if user_ex else None)
        known = item_ex is not None or user_ex is not None
        return pair, "profiles" if known else "unknown"

    def save_id_maps(self, path: str | Path) -> None:
        """Write the id maps as JSON (atomic), so that a model can map raw ids later."""
        from explainrec.io import atomic_write_text

        atomic_write_text(path, json.dumps({"users": self.users.raw, "items": self.items.raw}))


def load_id_maps(path: str | Path) -> tuple[IdMap, IdMap]:
    data = json.loads(Path(path).read_text())
    return IdMap(data["users"]), IdMap(data["items"])


EXAMPLE_FIELDS = tuple(f.name for f in fields(Example))


def content_fingerprint(dataset: Dataset) -> str:
    """A short hash of everything a model learns from: the id maps, every interaction (ids, rating, time, split)
    and every explained pair with its texts. Two loads of the same data agree; data with the same ids but other
    content (``synthetic:...,seed=7``, an edited file, another split) does not."""
    import hashlib

    h = hashlib.sha256()
    for ids in (dataset.users.raw, dataset.items.raw):
        h.update(json.dumps(ids).encode())
    inter = dataset.interactions
    for column in (inter.user, inter.item, inter.split, inter.rating, inter.timestamp):
        h.update(b"-" if column is None else np.ascontiguousarray(column).tobytes())
    for e in dataset.examples:
        h.update(json.dumps([e.user, e.item, e.split, e.explanation, e.rating, list(e.features), e.title,
                             e.user_profile, e.item_profile, e.timestamp], ensure_ascii=False).encode())
    return h.hexdigest()[:16]
