"""The XRec benchmark folders in ../shared/data/xrec (skipped when they are not there)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explainrec.data import load_dataset

XREC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "xrec"

pytestmark = pytest.mark.realdata


def _load(name: str):
    folder = XREC / name
    if not (folder / "explanations.jsonl").exists():
        pytest.skip(f"XRec data not found at {folder}")
    return load_dataset(folder)


def _no_held_out_pair_in_train_graph(ds) -> None:
    inter = ds.interactions
    edge_key = inter.user * ds.n_items + inter.item  # (N,) int64, one per edge
    assert len(np.unique(edge_key)) == len(edge_key)  # no duplicated edge
    ex_key = np.array([e.user * ds.n_items + e.item for e in ds.examples])
    ex_split = np.array([e.split for e in ds.examples])
    held_out = ex_key[ex_split != "train"]
    assert len(held_out) > 0 and not np.isin(held_out, edge_key[inter.split == "train"]).any()
    # every explained pair is an edge with the same split
    order = np.argsort(edge_key)
    loc = order[np.searchsorted(edge_key, ex_key, sorter=order)]
    assert np.array_equal(edge_key[loc], ex_key) and np.array_equal(inter.split[loc], ex_split)


def test_google():
    ds = _load("google")
    assert len(ds.examples) == 3000 and ds.implicit
    assert 411_000 <= len(ds.interactions) <= 412_000
    assert ds.meta["file_has_train_edges"] and ds.meta["resplit_edges"] == 0
    assert 0.78 < float((ds.interactions.split == "train").mean()) < 0.82
    _no_held_out_pair_in_train_graph(ds)


def test_amazon():
    ds = _load("amazon")
    assert len(ds.examples) == 3000 and ds.implicit
    assert not ds.meta["file_has_train_edges"] and ds.meta["resplit_edges"] > 60_000
    split = ds.interactions.split
    assert 0.77 < float((split == "train").mean()) < 0.83 and np.isin(split, ["valid", "test"]).sum() > 10_000
    _no_held_out_pair_in_train_graph(ds)
