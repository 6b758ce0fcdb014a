"""Pair retrieval (specificity): ranks of each pair's own reference, chance levels, and its place in evaluate().

The logic tests use fake encoders (objects with ``.encode``) and run in milliseconds; the tests marked ``embedded``
load the real MiniLM.
"""
import json
import math
import zlib

import pytest
import torch

from explainrec.data.schema import DataError
from explainrec.metrics import evaluate, save_report, to_markdown
from explainrec.metrics.specificity import chance_levels, harmonic, pair_retrieval

REFS = ["the user loves thrilling mysteries with a clever detective",
        "the pizza is great and the staff friendly",
        "a cozy romance for a rainy day by the fire",
        "a fun read with strong and funny characters",
        "the coffee is good but the service is slow",
        "quiet rooms and a helpful front desk near the station",
        "spicy noodles and cheap beer on a busy street",
        "a haunting war novel about two brothers",
        "fresh sushi though the portions are small",
        "the gym has new machines and long opening hours",
        "a sci-fi epic with space battles and politics",
        "the museum shop sells lovely prints and postcards"]


class BagOfWords:
    """Word counts hashed (crc32, stable across runs) into 512 dimensions: texts sharing words are close."""

    description = "fake bag of words"

    def encode(self, texts):
        out = torch.zeros(len(texts), 512)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % 512] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


class RandomVectors:
    """A Gaussian vector per distinct text (seeded by its crc32): no two texts tie."""

    def encode(self, texts):
        return torch.stack([torch.randn(16, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                            for t in texts])


def test_chance_levels_are_k_over_n_and_harmonic_over_n():
    assert harmonic(1) == 1.0 and harmonic(4) == pytest.approx(25 / 12)
    c = chance_levels(4)
    assert c["ret_r1"] == pytest.approx(25.0) and c["ret_r10"] == pytest.approx(100.0)  # k >= N: certain
    assert c["ret_mrr"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    c = chance_levels(300)
    assert c["ret_r1"] == pytest.approx(100 / 300) and c["ret_r10"] == pytest.approx(1000 / 300)
    assert c["ret_mrr"] == pytest.approx(100 * sum(1 / k for k in range(1, 301)) / 300)
    assert chance_levels(1) == {"ret_r1": 100.0, "ret_r10": 100.0, "ret_mrr": 100.0}
    with pytest.raises(ValueError):
        chance_levels(0)


def test_predictions_that_are_the_references_rank_far_above_the_same_predictions_shuffled():
    own = pair_retrieval(REFS, REFS, encoder=BagOfWords())
    assert own["rank"] == [1] * len(REFS) and own["ret_r1"] == own["ret_mrr"] == 100.0
    shuffled = REFS[1:] + REFS[:1]  # every row gets another row's reference as its prediction
    other = pair_retrieval(shuffled, REFS, encoder=BagOfWords())
    assert all(r > 1 for r in other["rank"]) and other["ret_r1"] == 0.0
    assert other["ret_mrr"] < own["ret_mrr"] - 50
    assert other["reciprocal_rank"] == [1 / r for r in other["rank"]]
    assert own["n_candidates"] == other["n_candidates"] == len(REFS) and own["encoder"] == "fake bag of words"
    assert own["chance"] == chance_levels(len(REFS))


def test_a_constant_prediction_scores_exactly_at_chance():
    """One fixed ranking of the N references for every pair; each reference is the own one of exactly one pair, so
    the ranks are 1..N once each: MRR = H_N / N and R@k = k / N, exactly."""
    for n in (3, 12):
        res = pair_retrieval(["great service, great food"] * n, REFS[:n], encoder=RandomVectors())
        assert sorted(res["rank"]) == list(range(1, n + 1))
        assert res["ret_mrr"] == pytest.approx(res["chance"]["ret_mrr"], abs=1e-9)
        assert res["ret_r1"] == pytest.approx(res["chance"]["ret_r1"])
        assert res["ret_r10"] == pytest.approx(res["chance"]["ret_r10"])


def test_candidates_given_explicitly_enlarge_the_ranking_and_must_hold_every_reference():
    rows = REFS[:4]
    alone = pair_retrieval(REFS[4:8], rows, encoder=RandomVectors())
    larger = pair_retrieval(REFS[4:8], rows, candidates=REFS + ["  ", REFS[0]], encoder=RandomVectors())
    assert alone["n_candidates"] == 4 and larger["n_candidates"] == len(REFS)  # blank and repeated ones dropped
    assert larger["chance"] == chance_levels(len(REFS))
    assert all(b >= a for a, b in zip(alone["rank"], larger["rank"]))  # more candidates can only push a pair down
    with pytest.raises(DataError, match=r"1 of 4 references are not among the 3 given candidates"):
        pair_retrieval(REFS[4:8], rows, candidates=REFS[:3], encoder=RandomVectors())


def test_duplicate_references_count_once_and_each_pair_owns_the_shared_text():
    refs = [REFS[0], REFS[1], REFS[0] + "  ", REFS[2]]  # rows 1 and 3 share a text (up to surrounding spaces)
    res = pair_retrieval(refs, refs, encoder=BagOfWords())
    assert res["n_candidates"] == 3 and res["rank"] == [1, 1, 1, 1]
    assert res["chance"] == chance_levels(3)


def test_ties_go_to_the_pair_and_a_blank_prediction_ranks_last():
    class Same:
        def encode(self, texts):
            return torch.ones(len(texts), 4)

    res = pair_retrieval(["anything", "   ", "more"], REFS[:3], encoder=Same())
    assert res["rank"] == [1, 3, 1]  # every candidate ties; a blank text retrieves nothing
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        pair_retrieval(["a", "b"], REFS[:3], encoder=Same())


ROWS = [{"prediction": REFS[i] if i % 2 == 0 else REFS[(i + 1) % 6], "reference": REFS[i],
         "bucket": "ds1" if i < 3 else "ds2"} for i in range(6)]


def test_evaluate_reports_retrieval_with_chance_per_example_and_per_bucket(tmp_path):
    res = evaluate(ROWS, bertscore=False, per_example=True, specificity_kwargs={"encoder": BagOfWords()})
    direct = pair_retrieval([r["prediction"] for r in ROWS], REFS[:6], encoder=BagOfWords())
    for key in ("ret_r1", "ret_r10", "ret_mrr"):
        assert res["metrics"][key] == pytest.approx(direct[key]) and key in res["std"]
    assert res["per_example"]["ret_mrr"] == pytest.approx([100 / r for r in direct["rank"]])
    assert res["chance"] == pytest.approx(chance_levels(6))
    assert res["config"]["specificity"]["candidates"] == 6
    # a bucket averages its rows' reciprocal ranks; the candidates stay the whole file's references
    for b, idx in (("ds1", [0, 1, 2]), ("ds2", [3, 4, 5])):
        mean = sum(100 / direct["rank"][i] for i in idx) / 3
        assert res["buckets"][b]["metrics"]["ret_mrr"] == pytest.approx(mean)
    md = to_markdown(res)
    assert f"| Ret-MRR (chance {chance_levels(6)['ret_mrr']:.2f}) | {res['metrics']['ret_mrr']:.2f} |" in md
    assert "N = 6 candidates" in md
    json_path, _ = save_report(res, tmp_path)
    saved = json.loads(json_path.read_text())
    assert {"ret_r1", "ret_r10", "ret_mrr"} <= set(saved["metrics"]) and saved["chance"]["ret_r1"] == pytest.approx(100 / 6)


def test_evaluate_with_given_candidates_and_without_specificity():
    res = evaluate(ROWS, bertscore=False, specificity_kwargs={"encoder": RandomVectors(), "candidates": REFS})
    assert res["config"]["specificity"]["candidates"] == len(REFS)
    assert res["chance"]["ret_r1"] == pytest.approx(100 / len(REFS))
    off = evaluate(ROWS, bertscore=False, specificity=False)
    assert not any(k.startswith("ret_") for k in off["metrics"]) and "chance" not in off
    assert off["config"]["specificity"] == "disabled"


def test_an_encoder_that_does_not_load_skips_retrieval_with_a_reason(tmp_path):
    with pytest.warns(UserWarning, match="pair retrieval skipped"):
        res = evaluate(ROWS, bertscore=False, specificity_kwargs={"model": str(tmp_path / "no-such-encoder")})
    assert "ret_mrr" not in res["metrics"] and "chance" not in res
    assert res["config"]["specificity"].startswith("skipped: could not load sentence encoder")
    assert "specificity: skipped" in to_markdown(res)


# ------------------------------------------------------------------------------------------- the real MiniLM


@pytest.fixture(scope="module")
def minilm():
    from explainrec.metrics.specificity import load_sentence_encoder

    encoder, why = load_sentence_encoder()
    if encoder is None:
        pytest.skip(why)
    return encoder


@pytest.mark.embedded
def test_minilm_finds_the_own_reference_of_a_paraphrase_and_not_of_a_shuffled_one(minilm):
    paraphrases = ["this reader adores clever detective mysteries", "tasty pizza, nice staff",
                   "a warm love story for a wet afternoon", "funny characters make it an enjoyable book",
                   "decent coffee, slow service", "calm rooms, useful reception, close to the station",
                   "hot noodles and inexpensive beer", "a sad novel of two brothers at war"]
    refs = REFS[:8]
    own = pair_retrieval(paraphrases, refs, encoder=minilm)
    shuffled = pair_retrieval(paraphrases[1:] + paraphrases[:1], refs, encoder=minilm)
    assert own["ret_r1"] >= 75.0 and own["ret_mrr"] > shuffled["ret_mrr"] + 40
    assert own["encoder"].startswith("all-MiniLM-L6-v2")
    constant = pair_retrieval(["great service, great food"] * 8, refs, encoder=minilm)
    assert constant["ret_mrr"] == pytest.approx(100 * harmonic(8) / 8, abs=1e-9)
    assert math.isclose(constant["ret_r1"], 12.5)
