"""hash_split, train_interaction_counts and the GaVaMoE sparsity buckets."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from explainrec.data import Dataset, Example, IdMap, Interactions, sparsity_buckets
from explainrec.data.splits import hash_split, train_interaction_counts


def test_hash_split_is_deterministic_and_about_8_1_1():
    keys = [(u, i) for u in range(200) for i in range(50)]
    a = hash_split(keys, seed=0)
    assert a.shape == (10_000,) and set(a.tolist()) == {"train", "valid", "test"}
    assert np.array_equal(a, hash_split(keys, seed=0))
    share = {s: float((a == s).mean()) for s in ("train", "valid", "test")}
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["valid"] - 0.1) < 0.015 and abs(share["test"] - 0.1) < 0.015
    # a key's split depends on the key and the seed only, not on the other keys
    assert np.array_equal(hash_split(keys[::7], seed=0), a[::7])
    b = hash_split(keys, seed=1)
    assert 0.2 < float((a != b).mean()) < 0.5


def test_hash_split_ratios():
    keys = range(1000)
    assert set(hash_split(keys, ratios=(1, 0, 0)).tolist()) == {"train"}
    half = hash_split(keys, ratios=(0.5, 0.0, 0.5))
    assert set(half.tolist()) == {"train", "test"} and 400 < int((half == "train").sum()) < 600
    with pytest.raises(ValueError):
        hash_split(keys, ratios=(0.8, 0.2))
    with pytest.raises(ValueError):
        hash_split(keys, ratios=(0.8, -0.1, 0.3))


def test_hash_split_is_stable_across_processes():
    """Python's hash() is salted per process; the split must not be."""
    code = "from explainrec.data.splits import hash_split; print(''.join(s[1] for s in hash_split(range(64), seed=3)))"
    outs = set()
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.strip())
    assert outs == {"".join(s[1] for s in hash_split(range(64), seed=3))}


def _graph_dataset(train_counts: list[int]) -> Dataset:
    """User u has train_counts[u] train edges (plus one test edge each, which must not count)."""
    users, items, splits = [], [], []
    for u, n in enumerate(train_counts):
        for k in range(n):
            users.append(u), items.append(k), splits.append("train")
        users.append(u), items.append(99), splits.append("test")
    inter = Interactions(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), np.array(splits))
    return Dataset("g", inter, [], IdMap([str(u) for u in range(len(train_counts))]),
                   IdMap([str(i) for i in range(100)]))


def test_train_interaction_counts():
    ds = _graph_dataset([3, 0, 5])
    counts = train_interaction_counts(ds)
    assert counts.dtype == np.int64 and counts.tolist() == [3, 0, 5]


def test_sparsity_buckets_equal_thirds_ordered():
    train_counts = [1, 9, 4, 7, 2, 6, 3, 8, 5, 10]
    ds = _graph_dataset(train_counts)
    examples = [Example(user=u, item=0, split="test") for u in range(10)]
    buckets = sparsity_buckets(ds, examples)
    assert [buckets.count(b) for b in ("ds1", "ds2", "ds3")] == [4, 3, 3]
    by = {b: [train_counts[e.user] for e, x in zip(examples, buckets) if x == b] for b in ("ds1", "ds2", "ds3")}
    assert min(by["ds1"]) >= max(by["ds2"]) and min(by["ds2"]) >= max(by["ds3"])
    assert sorted(by["ds1"]) == [7, 8, 9, 10]


def test_sparsity_buckets_ties_are_stable():
    ds = _graph_dataset([2, 2, 2, 2, 2, 2])
    examples = [Example(user=u, item=0) for u in (5, 3, 1, 0, 2, 4)]
    # all tie: the order of the examples decides
    assert sparsity_buckets(ds, examples) == ["ds1", "ds1", "ds2", "ds2", "ds3", "ds3"]
    assert sparsity_buckets(ds, []) == []
