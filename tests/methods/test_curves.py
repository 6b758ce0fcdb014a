"""Learning-curve texts (``curve_pairs``): every LLM method that has the setting explains the first valid pairs at
each validation into ``RUN/curve/``, with the model as it is at that step, without changing what training does."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from explainrec.data import make_synthetic
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods import registry
from explainrec.methods.llm_method import curve_file
from explainrec.methods.runs import train_run

QUIET = dict(progress=False, echo=lambda *_: None)
CURVED = [n for n in registry.names() if "curve_pairs" in registry.get(n).config_class.__dataclass_fields__]
CURVE = ["valid_every=2", "curve_pairs=3", "curve_max_new_tokens=5", "curve_batch_size=2"]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _weights(run):
    return {k: v for p in sorted(run.rglob("model/*.safetensors")) for k, v in load_file(p).items()}


def test_the_llm_methods_have_curves():
    assert {"gavamoe", "xrec", "mmp-refer"} <= set(CURVED)


@pytest.mark.parametrize("name", CURVED)
def test_curve_texts_are_the_models_own_and_leave_training_unchanged(name, data, tmp_path):
    method = registry.get(name)
    plain = train_run(method, data, tmp_path / "plain", method.make_config("tiny", ["max_steps=4", "valid_every=2"]),
                      **QUIET)
    trained = train_run(method, data, tmp_path / "run", method.make_config("tiny", ["max_steps=4"] + CURVE), **QUIET)
    assert not (tmp_path / "plain" / "curve").exists()
    files = sorted((tmp_path / "run" / "curve").glob("*.jsonl"))
    assert [f.name for f in files] == ["step000002.jsonl", "step000004.jsonl"]
    valid = data.split_examples("valid")[:3]
    last = _rows(files[-1])
    assert [(r["user"], r["item"], r["reference"]) for r in last] == [
        (data.users.decode(e.user), data.items.decode(e.item), e.explanation) for e in valid]
    # the last curve point is the final model: the same texts as the trained model explaining those pairs now
    again = trained.explainer.explain([data.pair_of(e) for e in valid], GenerationConfig(max_new_tokens=5, batch_size=2))
    assert [r["prediction"] for r in last] == [r["prediction"] for r in again]
    # drawing curves neither consumes the training's random streams nor leaves the model in eval mode
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plain.summary.metrics["last_valid"]["valid_nll"] == trained.summary.metrics["last_valid"]["valid_nll"]


def test_a_curve_point_lost_in_an_interruption_is_written_on_resume(data, tmp_path):
    method = registry.get("gavamoe")
    cfg = method.make_config("tiny", ["max_steps=2"] + CURVE)
    train_run(method, data, tmp_path / "run", cfg, **QUIET)
    point = curve_file(tmp_path / "run", 2)
    first = point.read_text()
    point.unlink()  # as if the process had been stopped while it explained (the checkpoint already holds step 2)
    train_run(method, data, tmp_path / "run", cfg, resume=True, **QUIET)
    assert point.read_text() == first
