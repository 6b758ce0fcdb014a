"""The GaVaMoE recipe end to end on the tiny LLaMA: stage 1 -> stage 2 -> saved model -> explanations; resume."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from explainrec.data import make_synthetic
from explainrec.methods.gavamoe.modeling import MoEConfig
from explainrec.methods.gavamoe.recipe import TrainConfig, train

STAGE1 = dict(epochs=2, pretrain_epochs=1, batch_size=512, plot_method="pca", embed_dim=16, latent_dim=8)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)


def _cfg(**kw):
    base = dict(model="tiny", clusters=2, batch_size=4, lr=1e-3, log_every=1, checkpoint_every=1000, stage1=STAGE1,
                moe=MoEConfig(n_experts=4, top_k=2, granularity=2))
    return TrainConfig(**{**base, **kw})


def test_train_then_explain(data, tmp_path):
    from explainrec.methods.gavamoe.explain import explain_split
    from explainrec.metrics import load_predictions

    summary = train(data, tmp_path / "run", _cfg(max_steps=3), progress_bar=False, echo=lambda *_: None)
    run = tmp_path / "run"
    assert summary["steps"] == 3 and summary["budget_hit"]
    for name in ("stage1/model.safetensors", "model/model.safetensors", "model/gavamoe.json", "model/id_maps.json",
                 "checkpoint/COMPLETE", "train_log.jsonl", "loss_curves.png", "train_summary.json"):
        assert (run / name).exists(), name
    rows, stats = explain_split(run, data, "test", limit=5, out=tmp_path / "preds.jsonl", max_new_tokens=5, progress=False)
    assert len(rows) == 5 and stats.explanations == 5
    assert {"cluster", "top_experts", "bucket", "cold_start"} <= set(rows[0])
    assert len(load_predictions(tmp_path / "preds.jsonl")) == 5


def test_resume_continues_the_same_run(data, tmp_path):
    quiet = dict(progress_bar=False, echo=lambda *_: None)
    train(data, tmp_path / "a", _cfg(max_steps=4), **quiet)
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "stage1", tmp_path / "b" / "stage1")
    train(data, tmp_path / "b", _cfg(max_steps=2), **quiet)
    summary = train(data, tmp_path / "b", _cfg(max_steps=4), resume=True, **quiet)
    assert summary["steps"] == 4
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_resume_refuses_another_config(data, tmp_path):
    from explainrec.train.checkpoint import CheckpointError

    quiet = dict(progress_bar=False, echo=lambda *_: None)
    train(data, tmp_path / "r", _cfg(max_steps=1), **quiet)
    with pytest.raises(CheckpointError, match="lr"):
        train(data, tmp_path / "r", _cfg(max_steps=2, lr=5e-4), resume=True, **quiet)


def test_implicit_feedback_data_trains_and_validates(data, tmp_path):
    """XRec's data has no ratings: the joint ELBO (also in validation) reconstructs sampled interactions only."""
    from dataclasses import replace

    from explainrec.data import Dataset, Interactions

    inter = data.interactions
    implicit = Dataset(name="implicit", interactions=Interactions(inter.user, inter.item, inter.split),
                       examples=[replace(e, rating=None) for e in data.examples], users=data.users, items=data.items)
    summary = train(implicit, tmp_path / "run", _cfg(max_steps=2), progress_bar=False, echo=lambda *_: None)
    assert summary["steps"] == 2
    assert summary["last_valid"]["valid_elbo"] > 0 and summary["last_valid"]["valid_nll"] > 0
