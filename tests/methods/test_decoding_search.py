"""Decoding chosen on the valid split: the joint rule takes the most specific candidate that keeps greedy's overlap."""
from __future__ import annotations

import pytest
import torch

from explainrec.config import ConfigError
from explainrec.data import make_synthetic
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods import decoding_search


class BagOfWords:
    """A stand-in sentence encoder: hashed word counts, unit length."""

    def encode(self, texts):
        rows = torch.zeros(len(texts), 256)
        for i, t in enumerate(texts):
            for w in t.lower().replace(",", " ").replace(".", " ").split():
                rows[i, hash(w) % 256] += 1.0
        return torch.nn.functional.normalize(rows, dim=-1)


class Scripted:
    """Writes a text per decoding setting: greedy one reference for every pair (a template), repetition penalty
    the template with the pair's first feature in it,
    beams the item's title and features as a list (specific, but far from the references' phrasing)."""

    method = "scripted"

    def __init__(self, data):
        self.data = data

    def explain(self, pairs, generation, stats=None, progress=False):
        def text(p):
            if generation.num_beams > 1:
                return f"{p.title}: {', '.join(p.features)}"
            if generation.repetition_penalty != 1.0:
                return f"The user would enjoy this jacket for its {p.features[0]}, sleeves and fabric."
            return "The user would enjoy this jacket for its pockets, sleeves and fabric."
        return [{"user": p.user, "item": p.item, "prediction": text(p), "cold_start": False} for p in pairs]


GRID = ({}, {"repetition_penalty": 1.2}, {"num_beams": 4})


@pytest.fixture()
def scorers(monkeypatch):
    def fake(bertscore, candidates):
        return {"specificity_kwargs": {"encoder": BagOfWords(), "candidates": candidates}}

    monkeypatch.setattr(decoding_search, "_loaded_scorers", fake)


def test_the_joint_rule_keeps_overlap_and_buys_specificity(scorers):
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)
    record = decoding_search.choose_decoding(Scripted(data), data, GenerationConfig(), grid=GRID, limit=12,
                                             rule="mrr@overlap-1", bertscore=False, echo=lambda *_: None)
    greedy, feature, listed = record["tried"]
    assert listed["score"] > feature["score"] > greedy["score"]  # the bare list is the most specific ...
    assert listed["overlap"] < greedy["overlap"] - decoding_search.TOLERANCE  # ... and far from the references
    assert [t["eligible"] for t in record["tried"]] == [True, True, False]
    assert record["chosen"] == {"repetition_penalty": 1.2}
    # every candidate's figures are kept: the trade-off curve, not only the chosen point
    assert all({"rougeL", "ret_mrr", "distinct2"} <= set(t["metrics"]) for t in record["tried"])
    by_overlap = decoding_search.choose_decoding(Scripted(data), data, GenerationConfig(), grid=GRID, limit=12,
                                                 rule="rougeL", bertscore=False, echo=lambda *_: None)
    assert by_overlap["chosen"] == max(by_overlap["tried"], key=lambda t: t["score"])["settings"]


def test_grids_by_name_and_greedy_first(scorers):
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)
    assert decoding_search.GRIDS["specificity"][: len(decoding_search.DEFAULT_GRID)] == decoding_search.DEFAULT_GRID
    assert any(c.get("candidates", 1) > 1 for c in decoding_search.GRIDS["specificity"])
    with pytest.raises(ConfigError, match="grid 'wide': expected one of default, specificity"):
        decoding_search.choose_decoding(Scripted(data), data, GenerationConfig(), grid="wide")
    with pytest.raises(ConfigError, match="starts with greedy"):
        decoding_search.choose_decoding(Scripted(data), data, GenerationConfig(), grid=GRID[1:])
    with pytest.raises(ConfigError, match="rule 'mrr': expected one of"):
        decoding_search.choose_decoding(Scripted(data), data, GenerationConfig(), rule="mrr")
