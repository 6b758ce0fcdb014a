"""dataset_stats and format_stats."""
from __future__ import annotations

import numpy as np

from explainrec.data import Dataset, Example, IdMap, Interactions, dataset_stats, make_synthetic
from explainrec.data.stats import format_stats


def test_stats_of_an_implicit_graph():
    inter = Interactions(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), np.array(["train", "train", "valid", "test"]))
    examples = [Example(0, 0, "train", "x"), Example(2, 2, "test", "y")]
    ds = Dataset("tiny", inter, examples, IdMap(["a", "b", "c", "d"]), IdMap(["x", "y", "z"]))
    s = dataset_stats(ds)
    assert (s["users"], s["items"], s["interactions"]) == (4, 3, 4)
    assert s["interactions_per_split"] == {"train": 2, "valid": 1, "test": 1}
    assert s["explained_pairs"] == 2 and s["explained_pairs_per_split"] == {"train": 1, "valid": 0, "test": 1}
    assert s["density"] == 4 / 12 and s["feedback"] == "implicit" and "rating_min" not in s
    table = format_stats(s)
    assert "tiny" in table and "implicit" in table and "2 / 1 / 1" in table and "rating" not in table


def test_stats_of_explicit_synthetic():
    ds = make_synthetic(n_users=40, n_items=30, n_types=2, seed=1)
    s = dataset_stats(ds)
    assert s["feedback"] == "explicit" and s["rating_min"] >= 1 and s["rating_max"] <= 5
    assert s["interactions"] == len(ds.interactions) == sum(s["interactions_per_split"].values())
    assert s["user_types"] == 2
    table = format_stats(s)
    assert "rating range" in table and f"{s['interactions']:,}" in table
