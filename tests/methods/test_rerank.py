"""Candidate reranking: k sampled texts per pair, the one closest to what the prompt says about the pair kept."""
from __future__ import annotations

import pytest
import torch

from explainrec.config import ConfigError
from explainrec.data import make_synthetic
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods import rerank


class WordEncoder:
    """One dimension per word of a small vocabulary: cosine = shared words."""

    vocab = ("tacos", "salsa", "service", "food", "books", "jacket", "zipper")

    def encode(self, texts):
        rows = torch.tensor([[float(w in t.lower()) for w in self.vocab] for t in texts])
        return torch.nn.functional.normalize(rows, dim=-1)


class Scripted:
    """An explainer stand-in: candidate j of a pair is ``texts[j]``, with an extra field kept through reranking."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def explain(self, pairs, generation, stats=None, progress=False):
        self.calls.append((len(pairs), generation.candidates))
        k = len(self.texts)
        return [{"user": p, "item": "i", "prediction": self.texts[n % k], "cluster": n % k} for n, p in enumerate(pairs)]

    def prompt(self, pair):
        about = {"u1": "Item: Sonoratown <|item_emb|> tacos and salsa", "u2": "Item: Jacket; features: zipper"}[pair]
        return [{"role": "system", "content": "great service and food"}, {"role": "user", "content": about}]


def test_the_candidate_closest_to_the_pairs_inputs_is_kept(monkeypatch):
    monkeypatch.setattr(rerank, "_encoder", lambda name: WordEncoder())
    explainer = Scripted(["great service, great food", "fantastic tacos and salsa", "a warm jacket with a zipper"])
    gen = GenerationConfig(do_sample=True, candidates=3)
    rows = rerank.explain_reranked(explainer, ["u1", "u2"], gen)
    assert explainer.calls == [(6, 1)]  # one call, every pair three times, each candidate decoded once
    assert [r["prediction"] for r in rows] == ["fantastic tacos and salsa", "a warm jacket with a zipper"]
    assert [r["cluster"] for r in rows] == [1, 2] and {r["candidates"] for r in rows} == {3}
    assert rows[0]["rerank_similarity"] > 0


def test_the_target_is_the_user_turn_without_placeholders():
    messages = Scripted([]).prompt("u1")
    assert rerank.rerank_target(messages) == "Item: Sonoratown   tacos and salsa"


def test_candidates_need_sampling():
    with pytest.raises(ConfigError, match="candidates: 4 texts per pair need do_sample=true"):
        GenerationConfig(candidates=4)


def test_a_real_explainer_returns_one_row_per_pair_chosen_among_its_samples(monkeypatch):
    from explainrec.methods import registry

    monkeypatch.setattr(rerank, "_encoder", lambda name: WordEncoder())
    method = registry.get("zero-shot")
    explainer = method.untrained(method.make_config("tiny"))
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)
    pairs = [data.pair_of(e) for e in data.split_examples("test")[:2]]
    gen = GenerationConfig(do_sample=True, candidates=3, max_new_tokens=5, batch_size=6, seed=1)
    rows = explainer.explain(pairs, gen)
    samples = explainer.explain([p for p in pairs for _ in range(3)], gen.replace(candidates=1))
    assert [(r["user"], r["item"]) for r in rows] == [(p.user, p.item) for p in pairs]
    for i, row in enumerate(rows):
        assert row["prediction"] in [s["prediction"] for s in samples[3 * i: 3 * i + 3]]
