"""BERTScore with the embedded MiniLM (offline) and its error paths."""
import pytest

from explainrec.metrics import BERTScoreError, BertScoreModel, bertscore, evaluate, to_markdown
from explainrec.metrics.semantic import MINILM_NOTE


@pytest.fixture(scope="module")
def minilm():
    try:
        return BertScoreModel("minilm")
    except BERTScoreError as e:
        if "embedded encoder not found" in str(e):
            pytest.skip(str(e))
        raise


@pytest.mark.embedded
def test_identical_text_scores_100_and_unrelated_lower(minilm):
    same = "the user would enjoy this thrilling mystery novel"
    out = bertscore([same, same, "the soup was cold and the waiter rude"],
                    [same, "this user likes suspenseful detective stories", same], scorer=minilm)
    assert out["f1"][0] == pytest.approx(100.0, abs=1e-3)
    assert out["precision"][0] == pytest.approx(100.0, abs=1e-3)
    assert out["f1"][2] < out["f1"][1] < 100.0  # paraphrase beats unrelated
    cfg = out["config"]
    assert cfg["num_layers"] == 6 and cfg["rescale_with_baseline"] is False and cfg["note"] == MINILM_NOTE


@pytest.mark.embedded
def test_an_empty_prediction_scores_zero(minilm):
    """A trained model can stop at once; bert_score would crash on the empty string (transformers 5)."""
    same = "the user would enjoy this thrilling mystery novel"
    out = bertscore(["", same, "   "], [same, same, same], scorer=minilm)
    assert out["f1"][0] == out["precision"][0] == out["recall"][0] == 0.0 and out["f1"][2] == 0.0
    assert out["f1"][1] == pytest.approx(100.0, abs=1e-3)


@pytest.mark.embedded
def test_evaluate_reports_bertscore_with_note(minilm):
    rows = [
        {"prediction": "great pizza and friendly staff", "reference": "the pizza is great and the staff friendly", "bucket": "ds1"},
        {"prediction": "a slow and boring plot", "reference": "a gripping page-turner", "bucket": "ds2"},
    ]
    res = evaluate(rows, bertscore_kwargs={"scorer": minilm})
    f1 = res["metrics"]["bertscore_f1"]
    assert 0 < f1 < 100 and res["std"]["bertscore_f1"] > 0
    assert res["buckets"]["ds1"]["metrics"]["bertscore_f1"] > res["buckets"]["ds2"]["metrics"]["bertscore_f1"]
    assert res["buckets"]["ds1"]["std"]["bertscore_f1"] == 0.0  # one row
    assert MINILM_NOTE in to_markdown(res)


def test_unloadable_encoder_raises_clear_error(tmp_path):
    with pytest.raises(BERTScoreError, match="could not load encoder"):
        BertScoreModel(str(tmp_path / "no-such-model"), num_layers=2)
    with pytest.raises(BERTScoreError, match="num_layers"):
        BertScoreModel("no-such-org/no-such-model")
    try:
        from explainrec.llm.load import resolve_encoder_path

        resolve_encoder_path("minilm")
    except FileNotFoundError:
        return
    with pytest.raises(BERTScoreError, match="no rescale baseline"):
        BertScoreModel("minilm", rescale_with_baseline=True)
