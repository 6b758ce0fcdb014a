"""The GaVaMoE run folder on the tiny LLaMA: what training writes, a resume with other settings refused, implicit
data (the cross-method checks -- save/load/explain, exact resume -- are in tests/methods/test_contract.py)."""
from __future__ import annotations

import pytest

from explainrec.data import make_synthetic
from explainrec.methods import registry
from explainrec.methods.runs import RunFolderError, train_run

QUIET = dict(progress=False, echo=lambda *_: None)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)


def _cfg(*overrides):
    return registry.get("gavamoe").make_config("tiny", list(overrides))


def test_run_folder_contents(data, tmp_path):
    trained = train_run(registry.get("gavamoe"), data, tmp_path / "run", _cfg("max_steps=3"), **QUIET)
    assert trained.summary.steps == 3 and trained.summary.metrics["budget_hit"]
    for name in ("config.yaml", "stage1/model/model.safetensors", "stage1/clusters.csv", "stage1/metrics.json",
                 "model/model.safetensors", "model/explainrec.json", "model/id_maps.json", "model/tokenizer.json",
                 "checkpoint/COMPLETE", "train_log.jsonl", "loss_curves.png", "train_summary.json"):
        assert (tmp_path / "run" / name).exists(), name


def test_resume_refuses_other_settings(data, tmp_path):
    train_run(registry.get("gavamoe"), data, tmp_path / "r", _cfg("max_steps=1"), **QUIET)
    with pytest.raises(RunFolderError, match=r"lr: was 0\.001, now 0\.0005"):
        train_run(registry.get("gavamoe"), data, tmp_path / "r", _cfg("max_steps=2", "lr=5e-4"), resume=True, **QUIET)


def test_implicit_feedback_data_trains_and_validates(data, tmp_path):
    """XRec's data has no ratings: the joint ELBO (also in validation) reconstructs sampled interactions only."""
    from dataclasses import replace

    from explainrec.data import Dataset, Interactions

    inter = data.interactions
    implicit = Dataset(name="implicit", interactions=Interactions(inter.user, inter.item, inter.split),
                       examples=[replace(e, rating=None) for e in data.examples], users=data.users, items=data.items)
    summary = train_run(registry.get("gavamoe"), implicit, tmp_path / "run", _cfg(), **QUIET).summary
    assert summary.steps == 2
    assert summary.metrics["last_valid"]["valid_elbo"] > 0 and summary.metrics["last_valid"]["valid_nll"] > 0


def test_the_papers_input_leaves_the_profiles_out_in_training_and_after_loading(data, tmp_path, monkeypatch):
    """profiles=false: soft tokens, title, features and rating, no profile text; the loaded run prompts the same."""
    from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
    from explainrec.methods import llm_method
    from explainrec.methods.gavamoe.prompting import gavamoe_prompt
    from explainrec.methods.model_folder import load_run

    trained_on = []
    real = llm_method.encode_splits
    monkeypatch.setattr(llm_method, "encode_splits", lambda d, tok, prompt_fn, cfg, **kw: (
        trained_on.extend(prompt_fn(e)[-1]["content"] for e in d.split_examples("train")),
        real(d, tok, prompt_fn, cfg, **kw))[1])

    example = data.split_examples("test")[0]
    with_profiles = gavamoe_prompt(example)[-1]["content"]
    without = gavamoe_prompt(example, profiles=False)[-1]["content"]
    assert example.user_profile in with_profiles and example.item_profile in with_profiles
    assert example.user_profile not in without and example.item_profile not in without
    assert USER_TOKEN in without and ITEM_TOKEN in without and example.title in without
    assert ", ".join(example.features) in without
    trained = train_run(registry.get("gavamoe"), data, tmp_path / "run", _cfg("max_steps=1", "profiles=false"),
                        **QUIET)
    pair = data.pair_of(example)
    assert trained.explainer.prompt(pair) == load_run(tmp_path / "run").prompt(pair) == gavamoe_prompt(pair, profiles=False)
    assert load_run(tmp_path / "run").prompt(pair) != gavamoe_prompt(pair)
    assert trained_on and not any("profile" in text for text in trained_on)
