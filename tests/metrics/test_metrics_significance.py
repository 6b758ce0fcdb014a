"""Paired comparison of two prediction files: bootstrap interval, permutation p, pairing by (user, item)."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from explainrec.cli import app
from explainrec.data.schema import DataError
from explainrec.metrics.significance import align, compare, over_seeds, paired_bootstrap, to_markdown

REFS = ["the user loves thrilling mysteries", "the pizza is great and the staff friendly",
        "a cozy romance for a rainy day", "a fun read with strong and funny characters",
        "the coffee is good but the service is slow", "quiet rooms and a helpful front desk"]


def _rows(preds, order=None):
    order = order if order is not None else range(len(REFS))
    return [{"user": f"u{i}", "item": f"i{i}", "prediction": preds[i], "reference": REFS[i]} for i in order]


def test_a_clear_gain_has_an_interval_above_zero_and_a_small_p():
    rng = np.random.default_rng(1)
    a = rng.normal(30, 8, size=300)
    b = a + 2 + rng.normal(0, 1, size=300)  # every pair gains about 2 points
    res = paired_bootstrap(a, b, n_resamples=2000)
    assert res["diff"] == pytest.approx(float((b - a).mean()))
    assert 0 < res["ci_low"] < res["diff"] < res["ci_high"]
    assert res["p_value"] < 0.01
    flipped = paired_bootstrap(b, a, n_resamples=2000)
    assert flipped["ci_high"] < 0 and flipped["diff"] == pytest.approx(-res["diff"])


def test_no_gain_gives_an_interval_around_zero_and_a_large_p():
    rng = np.random.default_rng(2)
    a = rng.normal(30, 8, size=300)
    b = a + rng.normal(0, 3, size=300)
    res = paired_bootstrap(a, b, n_resamples=2000)
    assert res["ci_low"] < 0 < res["ci_high"]
    assert res["p_value"] > 0.05


def test_identical_scores_give_a_zero_gap():
    res = paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (res["diff"], res["ci_low"], res["ci_high"], res["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1.0, 2.0], [1.0])


@pytest.mark.parametrize("a, b, p", [
    # a gap of 1 on both of 2 pairs: of the 4 sign flips, (+,+) and (-,-) reach |mean| 1 -> 2/4 (never 0)
    ([0.0, 0.0], [1.0, 1.0], 0.5),
    ([0.0] * 5, [2.5] * 5, 2 / 32),  # any constant gap on n pairs: 2 / 2**n exactly
    ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], 0.25),  # sums of +-1+-2+-3: only +6 and -6 reach |6| -> 2/8
    # +-5 +-1 +-1 +-1 against 6: 5+t with t in {3, 1} (1 + 3 flips) and -5+t with t in {-1, -3} (3 + 1) -> 8/16
    ([0.0] * 4, [5.0, 1.0, 1.0, -1.0], 0.5),
    ([0.0, 0.0], [2.0, -1.0], 1.0),  # +-2 +-1 against 1: every flip has |sum| >= 1
])
def test_the_sign_flip_p_is_exact_on_worked_examples(a, b, p):
    """With no more flips than resamples the p is the exact fraction of the 2**n flips at least as extreme: no 0
    from a shortcut for a constant gap (2 pairs with the same gap have p 0.5, not 0)."""
    assert paired_bootstrap(a, b, n_resamples=1000)["p_value"] == pytest.approx(p, rel=1e-9)


def test_a_monte_carlo_p_counts_the_observed_flip_and_is_never_zero():
    a, b = np.zeros(40), np.full(40, 3.0) + np.linspace(0, 0.1, 40)  # 2**40 flips: sampled, not enumerated
    res = paired_bootstrap(a, b, n_resamples=200)
    assert 0 < res["p_value"] <= 2 / 201 + 1e-12  # two-sided: twice the smaller tail, observed flip counted
    assert paired_bootstrap(np.zeros(40), np.full(40, 3.0), n_resamples=200)["p_value"] == pytest.approx(2.0 ** -39)


def test_over_seeds_with_the_same_gap_on_every_seed_has_no_t_test():
    """Zero spread makes the t statistic infinite: the p is undefined (None), never the 0 of a shortcut."""
    same = over_seeds([1.0, 1.0, 1.0])
    assert same["p_value"] is None and same["sd"] == 0.0 and same["diff"] == 1.0 and same["b_ahead"] == 3


def test_align_pairs_by_user_item_whatever_the_order_and_drops_unmatched():
    a = _rows(["x"] * 6)
    b = _rows(["y"] * 6, order=[5, 3, 1, 0])
    pa, pb = align(a, b)
    assert [(r["user"], r["item"]) for r in pa] == [(r["user"], r["item"]) for r in pb] == [
        ("u0", "i0"), ("u1", "i1"), ("u3", "i3"), ("u5", "i5")]


def test_align_refuses_different_test_sets():
    a = _rows(["x"] * 6)
    b = _rows(["y"] * 6)
    b[2]["reference"] = "something else entirely"
    with pytest.raises(DataError, match="different references for user u2, item i2"):
        align(a, b, ("base", "gavamoe"))


def test_compare_scores_the_shared_pairs_b_minus_a():
    good = _rows(REFS)  # B repeats the references
    bad = _rows(["nothing to do with it"] * 6, order=[0, 1, 2, 3, 4])
    res = compare(bad, good, names=("bad", "good"), bertscore=False, n_resamples=500)
    assert res["n"] == 5 and res["unpaired"] == [0, 1]
    rouge_l = res["metrics"]["rougeL"]
    assert rouge_l["mean_b"] == pytest.approx(100.0) and rouge_l["diff"] > 50
    assert "bertscore_f1" not in res["metrics"]


def test_cli_compare_prints_the_table_and_writes_json(tmp_path):
    a, b = tmp_path / "base" / "p.jsonl", tmp_path / "gavamoe" / "p.jsonl"
    for path, preds in ((a, ["nothing to do with it"] * 6), (b, REFS)):
        path.parent.mkdir()
        path.write_text("\n".join(json.dumps(r) for r in _rows(preds)) + "\n")
    out = tmp_path / "cmp.json"
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--no-bertscore", "--resamples", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "gavamoe - base" in res.output and "| rougeL |" in res.output
    assert json.loads(out.read_text())["names"] == ["base", "gavamoe"]


def test_over_seeds_is_a_t_test_on_the_seed_gaps():
    steady = over_seeds([2.0, 2.2, 1.8])
    assert steady["diff"] == pytest.approx(2.0) and steady["ci_low"] > 0 and steady["p_value"] < 0.05
    assert steady["b_ahead"] == 3 and steady["seeds"] == 3
    mixed = over_seeds([3.0, -2.0, 0.5])
    assert mixed["ci_low"] < 0 < mixed["ci_high"] and mixed["p_value"] > 0.5 and mixed["b_ahead"] == 2
    assert over_seeds([1.5])["p_value"] is None  # one seed: a gap, no test


def _group(root, name, preds_per_seed):
    for seed, preds in preds_per_seed.items():
        path = root / name / f"seed{seed}" / "predictions.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(json.dumps(r) for r in _rows(preds)) + "\n")
    return root / name


def test_cli_compare_two_run_groups_tests_each_shared_seed_then_over_seeds(tmp_path):
    bad = ["nothing to do with it"] * 6
    half = REFS[:3] + bad[3:]
    a = _group(tmp_path, "xrec", {0: bad, 1: bad, 2: bad})
    b = _group(tmp_path, "mmp-refer", {0: REFS, 1: half, 3: REFS})  # seed 2 missing on B's side, seed 3 on A's
    out = tmp_path / "cmp.json"
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--no-bertscore", "--resamples", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["seeds"] == ["seed0", "seed1"] and result["missing"] == [["seed2"], ["seed3"]]
    per = {s: r["metrics"]["rougeL"]["diff"] for s, r in result["per_seed"].items()}
    assert per["seed0"] > per["seed1"] > 0  # all references vs half of them
    assert result["over_seeds"]["rougeL"]["diff"] == pytest.approx((per["seed0"] + per["seed1"]) / 2)
    assert "| over seeds |" in res.output and "mmp-refer minus xrec" in res.output
    mixed = CliRunner().invoke(app, ["compare", str(a), str(a / "seed0" / "predictions.jsonl"), "--no-bertscore"])
    assert mixed.exit_code == 2 and "not one of each" in mixed.output


def test_compare_seeds_loads_the_bertscore_encoder_once(tmp_path, monkeypatch):
    from explainrec.metrics import semantic
    from explainrec.metrics.significance import compare_seeds, seed_files

    loaded = []

    class Counting(semantic.BertScoreModel):
        def __init__(self, *a, **kw):
            loaded.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(semantic, "BertScoreModel", Counting)
    a = _group(tmp_path, "a", {0: ["nothing to do with it"] * 6, 1: REFS})
    b = _group(tmp_path, "b", {0: REFS, 1: REFS})
    result = compare_seeds(seed_files(a), seed_files(b), n_resamples=200)
    assert len(loaded) == 1 and "bertscore_f1" in result["over_seeds"]


class _WordsEncoder:
    """A fake sentence encoder: hashed word counts (texts sharing words are close)."""

    def encode(self, texts):
        import zlib

        import torch

        out = torch.zeros(len(texts), 256)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, zlib.crc32(w.encode()) % 256] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


def test_compare_includes_the_reciprocal_rank_of_pair_retrieval():
    good = _rows(REFS)
    template = _rows(["a great place, the user will love it"] * 6)
    res = compare(template, good, names=("template", "good"), bertscore=False, n_resamples=500,
                  encoder=_WordsEncoder())
    mrr = res["metrics"]["ret_mrr"]
    assert mrr["mean_b"] == pytest.approx(100.0) and mrr["diff"] > 0
    assert list(res["metrics"]).index("ret_mrr") == list(res["metrics"]).index("rougeL") + 1  # before avg_len
    assert "| ret_mrr |" in to_markdown(res)
    off = compare(template, good, bertscore=False, specificity=False, n_resamples=200)
    assert "ret_mrr" not in off["metrics"]


def test_compare_seeds_loads_the_sentence_encoder_once(tmp_path, monkeypatch):
    from explainrec.metrics import specificity
    from explainrec.metrics.significance import compare_seeds, seed_files

    loaded = []

    def counting(*a, **kw):
        loaded.append(1)
        return _WordsEncoder(), None

    monkeypatch.setattr(specificity, "load_sentence_encoder", counting)
    a = _group(tmp_path, "a", {0: ["nothing to do with it"] * 6, 1: REFS})
    b = _group(tmp_path, "b", {0: REFS, 1: REFS})
    result = compare_seeds(seed_files(a), seed_files(b), bertscore=False, n_resamples=200)
    assert len(loaded) == 1 and "ret_mrr" in result["over_seeds"]
    assert result["per_seed"]["seed1"]["metrics"]["ret_mrr"]["diff"] == 0.0  # same predictions: no gap


def _sensitivity_file(path, swaps):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"user": u, "other_user": o, "item": i, "change": c, "toward_profile": t} for u, o, i, c, t in swaps]
    path.write_text(json.dumps({"kind": "user_sensitivity", "swaps": rows}))
    return path


def test_user_sensitivity_is_compared_swap_by_swap_when_the_triples_match(tmp_path):
    from explainrec.metrics.significance import compare_sensitivity

    triples = [("u1", "u2", "i1"), ("u2", "u3", "i2"), ("u3", "u1", "i3"), ("u4", "u1", "i4")]
    a = _sensitivity_file(tmp_path / "a.json", [(*t, 0.0, 0.0) for t in triples])  # a template: 0 everywhere
    b = _sensitivity_file(tmp_path / "b.json", [(*t, 40.0 + k, 5.0 + k) for k, t in enumerate(triples)])
    out = compare_sensitivity(a, b, n_resamples=200)
    assert out["user_change"]["paired"] and out["user_change"]["diff"] == pytest.approx(41.5)
    assert out["user_toward"]["mean_a"] == 0.0 and out["user_toward"]["diff"] == pytest.approx(6.5)
    other = _sensitivity_file(tmp_path / "c.json", [("u1", "u9", "i1", 41.0, 6.0), ("u2", "u8", "i2", 43.0, 8.0),
                                                    ("u3", "u7", "i3", 42.0, 7.0)])
    unpaired = compare_sensitivity(a, other, n_resamples=200)
    assert not unpaired["user_change"]["paired"] and unpaired["user_change"]["diff"] == pytest.approx(42.0)
    assert unpaired["user_change"]["ci_low"] <= 42.0 <= unpaired["user_change"]["ci_high"]
    assert compare_sensitivity(a, tmp_path / "missing.json") == {}


def test_compare_seeds_adds_user_sensitivity_where_both_runs_have_it(tmp_path):
    from explainrec.metrics.significance import compare_seeds

    rows = [{"user": f"u{k}", "item": f"i{k}", "prediction": p, "reference": r} for k, (p, r) in
            enumerate([("good food", "great food"), ("nice books", "fine books"), ("a jacket", "the jacket")])]
    files = {}
    for side, change in (("a", 0.0), ("b", 30.0)):
        for seed in ("seed0", "seed1"):
            folder = tmp_path / side / seed
            _sensitivity_file(folder / "sensitivity.json",
                              [("u1", "u2", "i1", change, 1.0), ("u2", "u1", "i2", change + 2, 2.0)])
            (folder / "predictions.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n")
            files.setdefault(side, {})[seed] = folder / "predictions.jsonl"
    result = compare_seeds(files["a"], files["b"], bertscore=False, specificity=False, n_resamples=200)
    assert result["over_seeds"]["user_change"]["diff"] == pytest.approx(30.0)
    assert result["over_seeds"]["user_toward"]["diff"] == pytest.approx(0.0)
    from explainrec.metrics.significance import seeds_to_markdown

    table = seeds_to_markdown(result)
    assert "user_change" in table and "**+30.00**" in table
