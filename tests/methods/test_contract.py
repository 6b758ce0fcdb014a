"""The method contract, checked on every registered method (a new method is covered by adding it to the registry):
tiny train -> save -> load -> explain equals the in-memory model; an interrupted run resumed equals an
uninterrupted one (weights and loss log, exactly); bad settings are clear errors."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from explainrec.config import ConfigError
from explainrec.data import make_synthetic
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods import registry
from explainrec.methods.base import TrainSummary
from explainrec.methods.model_folder import load_run
from explainrec.methods.runs import read_summary, train_run

QUIET = dict(progress=False, echo=lambda *_: None)
ALL = registry.names()
EXPLAINING = [n for n in ALL if registry.get(n).explains]
TRAINING = [n for n in ALL if registry.get(n).trains]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)


def test_registry_lists_the_methods_and_refuses_unknown_ones():
    assert {"zero-shot", "gavamoe", "xrec"} <= set(ALL)
    with pytest.raises(ConfigError, match="unknown method 'pepler'; known methods: zero-shot, gavamoe, xrec"):
        registry.get("pepler")


@pytest.mark.parametrize("name", ALL)
def test_every_method_ships_tiny_cpu_and_paper_presets(name):
    method = registry.get(name)
    assert {"tiny", "cpu", "paper"} <= set(method.presets())
    for preset in method.presets():
        method.make_config(preset)  # each loads and validates


@pytest.mark.parametrize("name", EXPLAINING)
def test_trained_model_explains_the_same_after_save_and_load(name, data, tmp_path):
    method = registry.get(name)
    trained = train_run(method, data, tmp_path / "run", method.make_config("tiny"), **QUIET)
    pairs = [data.pair_of(e) for e in data.split_examples("test")[:4]]
    gen = GenerationConfig(max_new_tokens=6, batch_size=2)
    in_memory = trained.explainer.explain(pairs, gen)
    reloaded = load_run(tmp_path / "run").explain(pairs, gen)
    assert [r["prediction"] for r in in_memory] == [r["prediction"] for r in reloaded]
    assert all(r["prediction"] for r in in_memory)
    assert in_memory == reloaded  # the method's extras (cluster, experts, ...) too
    manifest = json.loads((tmp_path / "run" / "model" / "explainrec.json").read_text())
    assert manifest["method"] == name and manifest["config"] == method.make_config("tiny").to_dict()
    # one typed summary for every method and each of its stages (every stage-only entry is some method's stage),
    # written by train_run and read back as it was returned
    assert isinstance(trained.summary, TrainSummary) and trained.summary.steps is not None
    assert trained.summary.config == manifest["config"]
    assert read_summary(tmp_path / "run").to_dict() == json.loads(json.dumps(trained.summary.to_dict()))
    for use in method.stages(method.make_config("tiny")):
        stage = read_summary(tmp_path / "run" / use.folder)
        assert stage is not None and stage.seconds >= 0 and stage.config == use.config.to_dict(), use.folder
        assert stage.metrics == json.loads((tmp_path / "run" / use.folder / "metrics.json").read_text())


def _budget(config) -> tuple[str, int, int]:
    """The setting a run can be interrupted by (a step budget, else the first epoch count), short and full values."""
    keys = [k for k, _, _ in type(config).describe()]
    if "max_steps" in keys:
        return "max_steps", 2, 4
    return next(k for k in keys if k.split(".")[-1] == "epochs"), 1, 2


def _weights(run) -> dict[str, torch.Tensor]:
    return {f"{p.parent.name}/{k}": v for p in sorted(run.rglob("model/*.safetensors")) for k, v in load_file(p).items()}


def _losses(run) -> list:
    """The training loss log without timings (train_log.jsonl for LLM methods, history.json for stages)."""
    rows = []
    for name in ("train_log.jsonl", "history.json"):
        for file in sorted(run.rglob(name)):
            text = file.read_text()
            items = json.loads(text) if name.endswith(".json") else [json.loads(x) for x in text.splitlines()]
            rows += [{k: v for k, v in r.items() if "second" not in k and k != "edges_per_s"}
                     for r in items if r.get("kind") != "valid"]
    return rows


@pytest.mark.parametrize("name", TRAINING)
def test_interrupted_run_resumed_equals_an_uninterrupted_one(name, data, tmp_path):
    method = registry.get(name)
    key, short, full = _budget(method.make_config("tiny"))
    train_run(method, data, tmp_path / "full", method.make_config("tiny", [f"{key}={full}"]), **QUIET)
    train_run(method, data, tmp_path / "cut", method.make_config("tiny", [f"{key}={short}"]), **QUIET)
    cut_losses = _losses(tmp_path / "cut")
    train_run(method, data, tmp_path / "cut", method.make_config("tiny", [f"{key}={full}"]), resume=True, **QUIET)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full") != cut_losses
    # resuming a run whose budget is spent takes no step more
    train_run(method, data, tmp_path / "cut", method.make_config("tiny", [f"{key}={full}"]), resume=True, **QUIET)
    again = _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")


@pytest.mark.parametrize("name", ALL)
def test_bad_settings_are_clear_errors(name):
    method = registry.get(name)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['no_such_key'\]; allowed: "):
        method.make_config(overrides=["no_such_key=1"])
    limited = next((f for f in dataclasses.fields(method.config_class) if f.metadata.get("min") is not None), None)
    if limited is not None:
        with pytest.raises(ConfigError, match=rf"{limited.name}: must be >= "):
            method.make_config(overrides=[f"{limited.name}={limited.metadata['min'] - 1}"])
    typed = next((f for f in dataclasses.fields(method.config_class) if f.type in ("int", int)), None)
    if typed is not None:
        with pytest.raises(ConfigError, match=rf"{typed.name}: expected an integer"):
            method.make_config(overrides=[f"{typed.name}=lots"])


def test_a_run_folder_is_never_silently_replaced(data, tmp_path):
    from explainrec.methods.runs import RunFolderError

    method = registry.get("vae-gmm")
    cfg = method.make_config("tiny")
    train_run(method, data, tmp_path / "run", cfg, **QUIET)
    with pytest.raises(RunFolderError, match="already holds a run .*--resume .*--overwrite"):
        train_run(method, data, tmp_path / "run", cfg, **QUIET)
    with pytest.raises(RunFolderError, match=r"clusters: was 2, now 3"):
        train_run(method, data, tmp_path / "run", cfg.replace(clusters=3), resume=True, **QUIET)
    train_run(method, data, tmp_path / "run", cfg.replace(clusters=3), overwrite=True, **QUIET)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_clusters"] == 3
    # a run started before a setting existed resumes with that setting's current value
    from explainrec.methods.runs import write_run_config

    file = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(file.read_text())
    del saved["config"]["seed"]
    file.write_text(yaml.safe_dump(saved))
    write_run_config(tmp_path / "run", method, cfg.replace(clusters=3), resume=True)


def test_a_reused_stage_must_match_the_run(data, tmp_path):
    """A run folder's stage trained with other settings stops the run with a message (never K gates on a
    stage with another number of clusters)."""
    from explainrec.methods.runs import RunFolderError, ensure_stage

    gavamoe = registry.get("gavamoe")
    cfg = gavamoe.make_config("tiny")
    (use,) = gavamoe.stages(cfg)
    ensure_stage(use, data, tmp_path, resume=False, **QUIET)
    (other,) = gavamoe.stages(cfg.replace(clusters=3))
    with pytest.raises(RunFolderError, match=r"stage1: this vae-gmm stage was trained with other settings .*clusters"):
        ensure_stage(other, data, tmp_path, resume=False, **QUIET)
    other_data = make_synthetic(n_users=31, n_items=25, n_types=2, seed=5)
    with pytest.raises(RunFolderError, match="trained on other data"):
        ensure_stage(use, other_data, tmp_path, resume=False, **QUIET)
