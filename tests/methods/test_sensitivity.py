"""User sensitivity (explainrec.methods.sensitivity): a template scores 0, an explainer that writes the user's profile
moves toward the new user, a method with clusters is swapped into another cluster whenever one exists, the sampled
triples are the same per seed, and the originals are reused from a predictions file only when they match."""
from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods.base import Prepared
from explainrec.methods.sensitivity import to_markdown, user_sensitivity

TOWARD = ("toward_profile", "toward_reference", "away_from_own")


class BagOfWords:
    """A stand-in for SentenceEncoder: unit vectors of hashed word counts (texts sharing words are close)."""

    description = "bag of words (test)"

    def encode(self, texts):
        out = torch.zeros(len(texts), 256)
        for k, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(",", " ").split():
                out[k, zlib.crc32(word.encode()) % 256] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


class FakeExplainer:
    """Writes ``write(pair)`` for every pair; ``cluster(pair)`` (optional) is reported through Prepared.extras like
    GaVaMoE's. Records the pairs of every explain call."""

    def __init__(self, write, cluster=None, method="fake"):
        self.write, self.cluster, self.method = write, cluster, method
        self.info, self.calls, self.prepared = {}, [], 0
        self.prepare = self._prepare if cluster is not None else None

    def _prepare(self, pairs):
        self.prepared += 1
        found = [self.cluster(p) for p in pairs]
        return Prepared(cold_start=[False] * len(pairs), extras=lambda i, _text: {"cluster": found[i]})

    def explain(self, pairs, generation=None, **_):
        self.calls.append(list(pairs))
        rows = [{"user": p.user, "item": p.item, "prediction": self.write(p)} for p in pairs]
        if self.cluster is not None:
            for row, p in zip(rows, pairs):
                row["cluster"] = self.cluster(p)
        return rows


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)


def _triples(result):
    return [(s["user"], s["other_user"], s["item"]) for s in result["swaps"]]


def test_a_template_scores_zero_everywhere(data):
    result = user_sensitivity(FakeExplainer(lambda p: "A great item, well made."), data, n=10, encoder=BagOfWords())
    assert result["n"] == 10 and len(result["swaps"]) == 10
    m = result["means"]
    assert m["changed"] == 0.0 and m["change"] == 0.0
    for key in TOWARD:
        assert m[key] == 0.0 and result["counts"][key] == 10
    assert m["toward_profile_positive"] == m["toward_reference_positive"] == m["away_from_own_negative"] == 0.0
    assert result["control"] == {"pairs": 8, "changed": 0.0, "change": 0.0} and not result["notes"]
    assert all(not s["changed"] and s["original"] == s["swapped"] for s in result["swaps"])
    assert all(s["other_user"] != s["user"] for s in result["swaps"])
    md = to_markdown(result)
    assert "| change | 0.00 | 10 | 0 |" in md and "scores 0 on every line" in md and "reports none" in md


def test_echoing_the_users_profile_moves_toward_the_new_user(data):
    result = user_sensitivity(FakeExplainer(lambda p: p.user_profile), data, n=10, encoder=BagOfWords())
    m = result["means"]
    assert m["changed"] > 0 and m["change"] > 0 and m["toward_profile"] > 0 and m["away_from_own"] < 0
    assert m["toward_profile_positive"] > 50
    swap = result["swaps"][0]
    assert swap["original"] == data.pair(swap["user"], swap["item"])[0].user_profile
    assert swap["swapped"] == data.pair(swap["other_user"], swap["item"])[0].user_profile


def test_the_swapped_prompt_holds_the_new_users_profile_and_the_same_item(data):
    explainer = FakeExplainer(lambda p: "x")
    result = user_sensitivity(explainer, data, n=6, encoder=BagOfWords())
    asked, again = explainer.calls
    originals, swapped = asked[:6], asked[6:]
    assert again == originals  # the noise-floor control: the originals generated again, in a call of their own
    for s, o, w in zip(result["swaps"], originals, swapped):
        assert (o.user, o.item, w.user, w.item) == (s["user"], s["item"], s["other_user"], s["item"])
        assert w.user != o.user
        assert w.title == o.title and w.item_profile == o.item_profile
        assert w.user_profile == data.pair(s["other_user"], "nothing")[0].user_profile


def _cluster_of(pair):
    """A pair's cluster depends on user and item, as GaVaMoE's VAE-GMM does; most users are in cluster 0."""
    return int((int(pair.user[1:]) * 7 + int(pair.item[1:])) % 5 == 0)


def test_a_method_with_clusters_swaps_into_another_cluster_whenever_one_exists(data):
    explainer = FakeExplainer(lambda p: "x", cluster=_cluster_of)
    result = user_sensitivity(explainer, data, n=20, encoder=BagOfWords(), candidates=100)
    split_users = {data.users.decode(e.user) for e in data.split_examples("test")}
    assert result["clusters"]["reported"] is True
    for s in result["swaps"]:
        assert s["cluster"] == _cluster_of(data.pair(s["user"], s["item"])[0])
        assert s["other_cluster"] == _cluster_of(data.pair(s["other_user"], s["item"])[0])
        crossing = {u for u in split_users - {s["user"]} if _cluster_of(data.pair(u, s["item"])[0]) != s["cluster"]}
        assert s["crossed"] == bool(crossing) and (not crossing or s["other_user"] in crossing)
    assert result["clusters"]["crossed"] == sum(s["crossed"] for s in result["swaps"]) > 0
    assert len(explainer.calls) == 2  # the explanations and the noise control: clusters come from prepare
    assert "crossed clusters" in to_markdown(result)


def test_a_method_whose_clusters_never_cross_gets_the_plain_triples(data):
    plain = user_sensitivity(FakeExplainer(lambda p: "x"), data, n=12, seed=3, encoder=BagOfWords())
    one_cluster = user_sensitivity(FakeExplainer(lambda p: "x", cluster=lambda p: 0), data, n=12, seed=3,
                                   encoder=BagOfWords())
    assert _triples(one_cluster) == _triples(plain)
    assert one_cluster["clusters"]["crossed"] == 0 and plain["clusters"]["crossed"] is None


def test_the_same_seed_gives_the_same_triples_and_figures(data):
    def echo(p):
        return f"{p.user_profile} {p.title}"

    a = user_sensitivity(FakeExplainer(echo), data, n=8, seed=7, encoder=BagOfWords())
    b = user_sensitivity(FakeExplainer(lambda p: "other method"), data, n=8, seed=7, encoder=BagOfWords())
    again = user_sensitivity(FakeExplainer(echo), data, n=8, seed=7, encoder=BagOfWords())
    other = user_sensitivity(FakeExplainer(echo), data, n=8, seed=8, encoder=BagOfWords())
    assert _triples(a) == _triples(b) == _triples(again) != _triples(other)
    assert a == again
    assert user_sensitivity(FakeExplainer(echo), data, n=1000, encoder=BagOfWords())["n"] == len(
        data.split_examples("test"))


def test_missing_profiles_leave_the_toward_terms_out_and_say_so(data):
    bare = dataclasses.replace(data, examples=[dataclasses.replace(e, user_profile=None) for e in data.examples])
    result = user_sensitivity(FakeExplainer(lambda p: p.title), bare, n=5, encoder=BagOfWords())
    assert result["means"]["toward_profile"] is None and result["counts"]["toward_profile"] == 0
    assert result["means"]["away_from_own"] is None and result["counts"]["toward_reference"] == 5
    assert any("toward_profile: left out for 5 of 5 swaps" in n for n in result["notes"])
    assert "| toward_profile | n/a | 0 |" in to_markdown(result)


def test_original_rows_are_reused_when_they_match_and_explained_again_when_not(data):
    def write(p):
        return f"about {p.title} for {p.user}"

    rows = [{"user": data.users.decode(e.user), "item": data.items.decode(e.item), "reference": e.explanation,
             "prediction": write(data.pair_of(e))} for e in data.split_examples("test")]
    explainer = FakeExplainer(write)
    fresh = user_sensitivity(FakeExplainer(write), data, n=6, encoder=BagOfWords())
    reused = user_sensitivity(explainer, data, n=6, encoder=BagOfWords(), original_rows=rows, control=2)
    assert [len(c) for c in explainer.calls] == [6, 2]  # the six swapped pairs; two originals checked again
    assert reused["originals"]["source"] == "given rows" and reused["originals"]["reused"] == 6
    assert [s["swapped"] for s in reused["swaps"]] == [s["swapped"] for s in fresh["swaps"]]
    assert [s["original"] for s in reused["swaps"]] == [s["original"] for s in fresh["swaps"]]
    assert reused["means"] == fresh["means"]

    stale = [{**r, "prediction": "made with other settings"} for r in rows]
    explainer = FakeExplainer(write)
    redone = user_sensitivity(explainer, data, n=6, encoder=BagOfWords(), original_rows=stale)
    assert redone["originals"]["source"] == "explained" and "came out differently" in redone["originals"]["note"]
    assert redone["swaps"] == fresh["swaps"] and redone["control"]["changed"] == 0.0

    other_split = [{**r, "reference": "another text"} for r in rows]
    result = user_sensitivity(FakeExplainer(write), data, n=6, encoder=BagOfWords(), original_rows=other_split)
    assert result["originals"]["reused"] == 0 and "none of the sampled pairs" in result["originals"]["note"]


def test_generation_that_depends_on_the_batch_shows_a_noise_floor(data):
    """Greedy int8 text on a CPU can change with the batch it is generated in; the control measures that floor."""

    class BatchDependent(FakeExplainer):
        def explain(self, pairs, generation=None, **_):
            return [{**r, "prediction": f"{r['prediction']} {len(pairs)}"}
                    for r in super().explain(pairs, generation)]

    result = user_sensitivity(BatchDependent(lambda p: "the same for all"), data, n=10, encoder=BagOfWords(),
                              control=4)
    assert result["means"]["changed"] == 0.0  # originals and swapped pairs shared one call
    assert result["control"]["pairs"] == 4 and result["control"]["changed"] == 100.0
    assert result["control"]["change"] > 0 and any(n.startswith("noise floor: 4 of 4") for n in result["notes"])
    assert [s["regenerated"] is not None for s in result["swaps"]] == [True] * 4 + [False] * 6
    assert "| noise floor: changed (%) | 100.00 | 4 |" in to_markdown(result)


def test_bad_arguments_are_clear_errors(data):
    from explainrec.config import ConfigError
    from explainrec.data.schema import DataError

    with pytest.raises(ConfigError, match="n must be at least 1"):
        user_sensitivity(FakeExplainer(str), data, n=0, encoder=BagOfWords())
    with pytest.raises(ConfigError, match="unknown split 'tests'"):
        user_sensitivity(FakeExplainer(str), data, split="tests", encoder=BagOfWords())
    lonely = dataclasses.replace(data, examples=[dataclasses.replace(e, user=0) for e in data.examples])
    with pytest.raises(DataError, match="one user only"):
        user_sensitivity(FakeExplainer(str), lonely, encoder=BagOfWords())


def test_tiny_zero_shot_and_gavamoe_runs(data, tmp_path):
    """The real explainers: zero-shot on the tiny LLaMA (no clusters) and a tiny GaVaMoE, whose clusters come from
    its Prepared.extras without generating."""
    from explainrec.methods import registry
    from explainrec.methods.runs import train_run

    gen = GenerationConfig(max_new_tokens=4, batch_size=8)
    zs = registry.get("zero-shot")
    zero_shot = zs.untrained(zs.make_config(overrides={"model": "tiny"}))
    a = user_sensitivity(zero_shot, data, n=4, generation=gen, encoder=BagOfWords())
    assert a == user_sensitivity(zero_shot, data, n=4, generation=gen, encoder=BagOfWords())
    assert a["clusters"]["reported"] is False and a["settings"]["generation"]["max_new_tokens"] == 4

    gv = registry.get("gavamoe")
    trained = train_run(gv, data, tmp_path / "g", gv.make_config("tiny", ["max_steps=1"]), progress=False,
                        echo=lambda *_: None)
    b = user_sensitivity(trained.explainer, data, n=4, generation=gen, encoder=BagOfWords(), candidates=100)
    assert b["clusters"]["reported"] is True and _triples(b)[:1] != []
    rows = trained.explainer.explain([data.pair(s["other_user"], s["item"])[0] for s in b["swaps"]], gen)
    assert [r["cluster"] for r in rows] == [s["other_cluster"] for s in b["swaps"]]
    assert [r["prediction"] for r in rows] == [s["swapped"] for s in b["swaps"]]


@pytest.mark.embedded
def test_with_the_embedded_minilm(data):
    from explainrec.llm.load import resolve_encoder_path

    try:
        resolve_encoder_path()
    except Exception as err:  # noqa: BLE001 -- the wheel is optional
        pytest.skip(str(err))
    result = user_sensitivity(FakeExplainer(lambda p: p.user_profile), data, n=6)
    assert result["means"]["toward_profile"] > 0 and result["means"]["away_from_own"] < 0
    assert "MiniLM" in result["settings"]["encoder"]
    template = user_sensitivity(FakeExplainer(lambda p: "A great item."), data, n=6)
    assert all(template["means"][k] == pytest.approx(0.0, abs=1e-4) for k in TOWARD)
