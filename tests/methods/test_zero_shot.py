"""Zero-shot end to end on the tiny model: prompts -> batched generation -> a valid predictions file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from explainrec.config import ConfigError
from explainrec.data.schema import DataError, Dataset, Example, IdMap, Interactions, Pair
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods import registry
from explainrec.methods.base import Explainer
from explainrec.methods.explain import explain_split
from explainrec.metrics import load_predictions


def _dataset() -> Dataset:
    """6 users with 1..6 train interactions; one explained test pair per user."""
    users = IdMap([f"u{i}" for i in range(6)])
    items = IdMap([f"i{j}" for j in range(8)])
    edges = [(u, j) for u in range(6) for j in range(u + 1)]
    graph = Interactions(
        user=np.array([u for u, _ in edges], dtype=np.int64),
        item=np.array([j for _, j in edges], dtype=np.int64),
        split=np.array(["train"] * len(edges)),
    )
    examples = [
        Example(user=u, item=7, split="test", title=f"Cafe {u}", item_profile="Fans of coffee would enjoy it.",
                explanation=f"The user would enjoy the cafe {u} because of its coffee.", features=("coffee",))
        for u in range(6)
    ]
    examples.append(Example(user=0, item=6, split="train", explanation="train only", title="Bar"))
    return Dataset("hand", graph, examples, users, items)


def _explainer(tiny_llm) -> Explainer:
    """The zero-shot explainer on the session's tiny LLM (what registry.get('zero-shot').untrained builds)."""
    from explainrec.data.prompts import build_messages

    model, tok = tiny_llm
    return Explainer(method="zero-shot", llm=model, tokenizer=tok, model=model, prompt=build_messages)


def test_untrained_explainer_is_built_from_a_config():
    explainer = registry.get("zero-shot").untrained(registry.get("zero-shot").make_config("tiny"))
    rows = explainer.explain([Pair("u1", "i1", title="Cafe")], GenerationConfig(max_new_tokens=4))
    assert rows[0]["prediction"] and rows[0]["cold_start"] is False and explainer.info["model"] == "tiny"


def test_explain_rows(tiny_llm):
    ds = _dataset()
    test = ds.split_examples("test")
    rows, stats = explain_split(_explainer(tiny_llm), ds, "test", generation=GenerationConfig(batch_size=4,
                                max_new_tokens=6), progress=False)
    assert [r["user"] for r in rows] == [f"u{i}" for i in range(6)]
    assert all(r["item"] == "i7" and r["method"] == "zero-shot" and r["features"] == ["coffee"] for r in rows)
    assert [r["reference"] for r in rows] == [e.explanation for e in test]
    assert all(isinstance(r["prediction"], str) and r["prediction"] for r in rows)
    assert stats.explanations == 6 and stats.new_tokens > 0
    assert sorted(r["bucket"] for r in rows) == ["ds1", "ds1", "ds2", "ds2", "ds3", "ds3"]
    assert rows[5]["bucket"] == "ds1" and rows[0]["bucket"] == "ds3"  # u5 is the most active user


def test_split_writes_valid_predictions(tiny_llm, tmp_path):
    out = tmp_path / "preds.jsonl"
    _, stats = explain_split(_explainer(tiny_llm), _dataset(), "test", limit=4, out=out, progress=False,
                             generation=GenerationConfig(max_new_tokens=5, batch_size=3))
    lines = out.read_text().splitlines()
    assert len(lines) == 4 == stats.explanations
    rows = [json.loads(line) for line in lines]
    assert {"user", "item", "prediction", "reference", "features", "bucket", "method"} <= set(rows[0])
    assert list(rows[0])[:4] == ["user", "item", "prediction", "reference"]
    assert len(load_predictions(out)) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_split_of_a_dataset_folder(tiny_llm, tmp_path):
    """An XRec-style folder read through explainrec.data.load_dataset, its 'validation' alias accepted."""
    from explainrec.data import load_dataset

    folder = tmp_path / "xrec"
    folder.mkdir()
    rows = [{"user": u, "item": 10 + u, "title": f"Place {u}", "user_profile": "Likes food.", "item_profile": "Food.",
             "explanation": f"The user would enjoy place {u}.", "split": "test" if u < 3 else "train"}
            for u in range(6)]
    (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "interactions.csv").write_text("user,item,split\n" + "".join(f"{u},{10 + u},train\n" for u in range(6)))
    out = tmp_path / "preds.jsonl"
    explain_split(_explainer(tiny_llm), load_dataset(folder), "test", out=out, progress=False,
                  generation=GenerationConfig(max_new_tokens=3))
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["user"] for r in got) == ["0", "1", "2"]


def test_bad_arguments(tiny_llm, tmp_path):
    with pytest.raises(DataError, match="no explained pairs in split 'valid'"):
        explain_split(_explainer(tiny_llm), _dataset(), "validation", out=tmp_path / "p.jsonl")
    with pytest.raises(ConfigError, match="limit must be at least 1"):  # a bad setting, not bad data
        explain_split(_explainer(tiny_llm), _dataset(), "test", out=tmp_path / "p.jsonl", limit=0)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        explain_split(_explainer(tiny_llm), _dataset(), "dev", out=tmp_path / "p.jsonl")
    assert not (tmp_path / "p.jsonl").exists()


def test_int8_precision_calibrates_float_outlier_channels_first(monkeypatch):
    """apply_precision('int8') runs one calibration explanation in float, then quantises with its outlier channels."""
    from explainrec.llm import quantize
    from explainrec.methods.model_folder import apply_precision

    explainer = registry.get("zero-shot").untrained(registry.get("zero-shot").make_config("tiny"))
    calls = []
    real = quantize.outlier_channels
    monkeypatch.setattr(quantize, "outlier_channels", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    apply_precision(explainer, "int8")
    linears = [m for m in explainer.llm.modules() if isinstance(m, quantize.Int8Linear)]
    assert calls == [1] and linears and all(m.outliers is not None and len(m.outliers) == quantize.OUTLIER_CHANNELS
                                            for m in linears)
    assert explainer.info["precision"] == "int8"
    assert explainer.explain([Pair("u1", "i1", title="Cafe")], GenerationConfig(max_new_tokens=3))[0]["prediction"]


@pytest.mark.parametrize("channels", [0, 2])
def test_int8_precision_takes_the_number_of_float_channels(channels):
    from explainrec.llm import quantize
    from explainrec.methods.model_folder import apply_precision

    explainer = registry.get("zero-shot").untrained(registry.get("zero-shot").make_config("tiny"))
    apply_precision(explainer, "int8", channels=channels)
    linears = [m for m in explainer.llm.modules() if isinstance(m, quantize.Int8Linear)]
    assert linears and all(len(m._key or ()) == channels for m in linears)
