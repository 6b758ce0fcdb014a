"""Deterministic train/valid/test splits and the sparsity buckets of GaVaMoE (sec. 4.5.4).

Splits come from a cryptographic hash of each key (``hashlib.blake2b``), not from Python's ``hash()``,
which is salted per process: the same key lands in the same split on every machine and every run.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np

from explainrec.data.schema import SPLITS, Dataset, Example

BUCKETS = ("ds1", "ds2", "ds3")


def split_key(key: object) -> str:
    """The text a key is hashed from: tuples/lists are joined with ',' (``(3, 7)`` -> ``"3,7"``)."""
    if isinstance(key, (tuple, list)):
        return ",".join(str(k) for k in key)
    return str(key)


def hash_unit(key: object, seed: int = 0) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``."""
    digest = hashlib.blake2b(f"{seed}|{split_key(key)}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def hash_split(
    keys: Iterable[object], seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> np.ndarray:
    """Assign each key to train/valid/test with probabilities ``ratios``; returns a (N,) str array.

    Only the key and the seed decide a key's split, so adding rows never moves the others.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers with a positive sum, got {tuple(ratios)}")
    total = float(sum(ratios))
    cut_train = ratios[0] / total
    cut_valid = (ratios[0] + ratios[1]) / total
    u = np.fromiter((hash_unit(k, seed) for k in keys), dtype=np.float64)
    out = np.full(u.shape[0], SPLITS[2], dtype="<U5")
    out[u < cut_valid] = SPLITS[1]
    out[u < cut_train] = SPLITS[0]
    return out


def train_interaction_counts(ds: Dataset) -> np.ndarray:
    """Number of train interactions of every user, indexed by contiguous user id; (n_users,) int64."""
    inter = ds.interactions
    users = inter.user[inter.split == "train"]
    return np.bincount(users, minlength=ds.n_users).astype(np.int64)


def sparsity_buckets(ds: Dataset, examples: Sequence[Example]) -> list[str]:
    """'ds1' / 'ds2' / 'ds3' for each example, by how active its user is in the training graph.

    As in GaVaMoE (sec. 4.5.4) the examples are sorted by their user's number of train interactions,
    most active first, and cut into three parts of equal size (sizes differ by at most one): ds1 holds
    the most frequent users, ds3 the sparsest. Ties keep the order of ``examples`` (stable sort), so the
    result is deterministic.
    """
    if not examples:
        return []
    counts = train_interaction_counts(ds)
    per_example = np.array([counts[e.user] for e in examples], dtype=np.int64)
    order = np.argsort(-per_example, kind="stable")
    out = [""] * len(examples)
    for bucket, part in zip(BUCKETS, np.array_split(order, 3)):
        for idx in part:
            out[int(idx)] = bucket
    return out
