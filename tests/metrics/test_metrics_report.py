"""evaluate(): metric registry, per-bucket corpus metrics, Markdown and atomic report files."""
import json

import pytest

from explainrec.data.schema import DataError
from explainrec.metrics import METRICS, evaluate, report_paths, save_report, text, to_markdown
from explainrec.metrics import feature_metrics

ROWS = [
    {"prediction": "the user enjoys thrilling mystery books", "reference": "the user loves thrilling mysteries", "bucket": "ds1", "features": ["mystery"]},
    {"prediction": "great pizza and a friendly staff", "reference": "the pizza is great and the staff friendly", "bucket": "ds1", "features": ["pizza"]},
    {"prediction": "the user enjoys thrilling mystery books", "reference": "a cozy romance for a rainy day", "bucket": "ds2", "features": ["romance"]},
    {"prediction": "a fun read with strong characters", "reference": "a fun read with strong and funny characters", "bucket": "ds3", "features": ["characters"]},
    {"prediction": "good coffee but slow service", "reference": "the coffee is good but the service is slow", "bucket": "ds3", "features": ["service"]},
]


def _expected(rows):
    preds = [r["prediction"] for r in rows]
    refs = [r["reference"] for r in rows]
    return {
        "bleu1": text.bleu(preds, refs, 1),
        "bleu4": text.bleu(preds, refs, 4),
        "sacrebleu": text.sacrebleu_corpus(preds, refs)[0],
        "distinct1": text.distinct(preds, 1),
        "distinct2": text.distinct(preds, 2),
        "usr": text.usr(preds),
        **text.rouge(preds, refs),
        **{k: v for k, v in feature_metrics(preds, [r["features"] for r in rows]).items() if k in ("fmr", "fcr", "div")},
    }


def test_evaluate_overall_equals_direct_functions():
    res = evaluate(ROWS, bertscore=False)
    assert res["n"] == 5
    assert set(res["metrics"]) <= set(METRICS)
    for name, value in _expected(ROWS).items():
        assert res["metrics"][name] == pytest.approx(value), name
    assert res["metrics"]["usr"] == pytest.approx(4 / 5)
    assert "bertscore_f1" not in res["metrics"] and res["config"]["bertscore"] == "disabled"
    # std only for metrics with per-example values
    assert {"rouge1", "rouge2", "rougeL", "sent_bleu", "avg_len"} <= set(res["std"])
    assert "bleu4" not in res["std"] and "usr" not in res["std"]
    per = text.rouge_per_example([r["prediction"] for r in ROWS], [r["reference"] for r in ROWS])["rouge1"]
    mean = sum(per) / 5
    assert res["std"]["rouge1"] == pytest.approx((sum((v - mean) ** 2 for v in per) / 5) ** 0.5)


def test_buckets_use_only_their_rows():
    res = evaluate(ROWS, bertscore=False)
    assert list(res["buckets"]) == ["ds1", "ds2", "ds3"]
    for b, n in (("ds1", 2), ("ds2", 1), ("ds3", 2)):
        sub = [r for r in ROWS if r["bucket"] == b]
        got = res["buckets"][b]
        assert got["n"] == n
        for name, value in _expected(sub).items():
            assert got["metrics"][name] == pytest.approx(value), (b, name)
    # the bucket BLEU is a corpus BLEU of the bucket, not an average of the overall
    assert res["buckets"]["ds2"]["metrics"]["bleu1"] != pytest.approx(res["metrics"]["bleu1"])
    assert "buckets" not in evaluate(ROWS, bertscore=False, buckets=False)
    assert "buckets" not in evaluate([{k: v for k, v in r.items() if k != "bucket"} for r in ROWS], bertscore=False)


def test_registry_entries_are_well_formed():
    for name, (label, higher, description) in METRICS.items():
        assert label and description and higher in (True, False, None)
    assert METRICS["div"][1] is False and METRICS["bleu4"][1] is True


def test_mixed_methods_and_bad_rows_are_refused():
    with pytest.raises(DataError, match="methods"):
        evaluate([{**ROWS[0], "method": "a"}, {**ROWS[1], "method": "b"}], bertscore=False)
    with pytest.raises(DataError, match="field 'reference'"):
        evaluate([{"prediction": "x"}], bertscore=False)
    with pytest.raises(DataError):
        evaluate([], bertscore=False)
    assert evaluate([{**r, "method": "m"} for r in ROWS], bertscore=False)["config"]["method"] == "m"


def test_markdown_and_saved_files(tmp_path):
    res = evaluate(ROWS, bertscore=False, per_example=True)
    assert len(res["per_example"]["rouge1"]) == 5
    md = to_markdown(res, title="Demo")
    assert md.startswith("# Demo")
    assert "| Metric | Mean | Std | Better |" in md
    assert f"| BLEU-4 | {res['metrics']['bleu4']:.2f} | – | ↑ |" in md
    assert "| DIV |" in md and "↓" in md
    assert "ds1 (n=2)" in md and "ds3 (n=2)" in md
    j, m = save_report(res, tmp_path / "run1")
    assert (j, m) == (tmp_path / "run1" / "metrics.json", tmp_path / "run1" / "metrics.md")
    assert json.loads(j.read_text())["metrics"] == pytest.approx(res["metrics"])
    assert m.read_text() == to_markdown(res)
    assert report_paths(tmp_path / "out" / "test.json") == (tmp_path / "out" / "test.json", tmp_path / "out" / "test.md")
    assert report_paths(tmp_path / "amazon.gavamoe")[0].name == "amazon.gavamoe.metrics.json"
    assert not list(tmp_path.rglob("*.tmp"))
