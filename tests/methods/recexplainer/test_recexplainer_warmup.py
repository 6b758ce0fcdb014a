"""RecExplainer's alignment levers and instruments (issue 31): the projector warm-up resumes like any training and
leaves the joint stage a projector that already decides Task 3 better; the alignment curve writes its three
figures at every validation without changing what training does; the task mixture repeats and thins rows."""
from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from explainrec import interrupt
from explainrec.config import ConfigError
from explainrec.data import make_synthetic
from explainrec.methods import registry
from explainrec.methods.recexplainer.recipe import weigh_tasks
from explainrec.methods.runs import train_run

QUIET = dict(progress=False, echo=lambda *_: None)
WARM = ["warmup.steps=4", "max_steps=2", "checkpoint_every=1000"]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)


@pytest.fixture(scope="module")
def method():
    return registry.get("recexplainer")


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _log(file) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in file.read_text().splitlines()]


def _curve(run, name: str) -> dict:
    return json.loads((run / "curve" / name).read_text())


def test_warmup_interrupted_and_resumed_equals_an_uninterrupted_run(data, method, tmp_path, monkeypatch):
    cfg = method.make_config("tiny", WARM)
    train_run(method, data, tmp_path / "full", cfg, **QUIET)
    # a stop requested during warm-up step 2 (as Ctrl-C does): the loop finishes the step, checkpoints and stops
    stop = {"at": "[recexplainer-warmup] step 2 "}
    monkeypatch.setattr(interrupt, "requested", lambda: signal.SIGINT if stop["at"] is None else None)

    def echo(line: str) -> None:
        if stop["at"] and str(line).startswith(stop["at"]):
            stop["at"] = None

    with pytest.raises(interrupt.Interrupted):
        train_run(method, data, tmp_path / "cut", cfg, progress=False, echo=echo)
    cut = tmp_path / "cut"
    assert json.loads((cut / "warmup" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (cut / "checkpoint").exists() and not (cut / "model").exists()
    stop["at"] = "never"
    said: list[str] = []
    train_run(method, data, cut, cfg, resume=True, progress=False, echo=lambda line: said.append(str(line)))
    assert any(f"resumed from {cut / 'warmup' / 'checkpoint'}: continuing after step 2" in s for s in said)
    a, b = _weights(tmp_path / "full"), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for log in ("warmup/train_log.jsonl", "train_log.jsonl"):
        assert _log(cut / log) == _log(tmp_path / "full" / log), log
    assert [r["step"] for r in _log(cut / "warmup/train_log.jsonl") if "kind" not in r] == [1, 2, 3, 4]


def test_warm_up_trains_the_projectors_alone(data, method, tmp_path):
    """After the warm-up (and before any joint step can move them) the LLM and its adapters are untouched."""
    train_run(method, data, tmp_path / "w", method.make_config("tiny", ["warmup.steps=3", "max_steps=1"]), **QUIET)
    train_run(method, data, tmp_path / "p", method.make_config("tiny", ["max_steps=1"]), **QUIET)
    warm = load_file(str(tmp_path / "w" / "warmup" / "checkpoint" / "model.safetensors"))
    plain_start = load_file(str(tmp_path / "p" / "checkpoint" / "model.safetensors"))
    assert warm.keys() == plain_start.keys()
    # the plain run's checkpoint is after one joint step, which moves only LoRA and the projectors: the warm-up's
    # base weights equal it, its LoRA is still at its start (B = 0), its projectors moved
    for key, value in warm.items():
        if key.startswith(("user_proj.", "item_proj.")):
            assert not torch.equal(value, plain_start[key]), key
        elif "lora_B" in key:
            assert not value.any(), key
        elif "lora_" not in key:
            assert torch.equal(value, plain_start[key]), key


def test_a_warmed_up_projector_reaches_a_lower_task3_loss(data, method, tmp_path):
    """Same seed, data and joint budget: with the warm-up, the held-out Task 3 decision loss (-log p of the
    recommender's Yes/No between the two) is lower at the end of the joint stage."""
    curve = ["max_steps=4", "valid_every=4", "curve_alignment_rows=8"]
    train_run(method, data, tmp_path / "cold", method.make_config("tiny", curve), **QUIET)
    train_run(method, data, tmp_path / "warm", method.make_config("tiny", curve + ["warmup.steps=20"]), **QUIET)
    cold = _curve(tmp_path / "cold", "alignment-step000004.json")["interest"]
    warm = _curve(tmp_path / "warm", "alignment-step000004.json")["interest"]
    assert cold["n"] == warm["n"] == 8
    assert warm["decision_nll"] < cold["decision_nll"] - 0.05, (warm, cold)
    # and the warm-up itself already lowered it from where the joint stage of the cold run starts
    start = _curve(tmp_path / "warm", "warmup-step000020.json")["interest"]["decision_nll"]
    assert start < cold["decision_nll"]


def test_alignment_curve_files_hold_the_three_figures(data, method, tmp_path):
    plain = train_run(method, data, tmp_path / "plain", method.make_config("tiny", ["max_steps=4", "valid_every=2"]),
                      **QUIET)
    run = tmp_path / "run"
    curved = train_run(method, data, run, method.make_config("tiny", ["max_steps=4", "valid_every=2",
                                                                      "curve_alignment_rows=3"]), **QUIET)
    assert not (tmp_path / "plain" / "curve").exists()
    assert sorted(p.name for p in (run / "curve").iterdir()) == ["alignment-step000002.json",
                                                                  "alignment-step000004.json"]
    for name in ("alignment-step000002.json", "alignment-step000004.json"):
        point = _curve(run, name)
        assert 0 <= point["task3_accuracy"] <= 1 and 0 <= point["task1_hr@5"] <= 1 and point["alignment_nll"] > 0
        assert point["interest"]["n"] == 4  # whole Yes/No pairs: 3 rounded up to 2 pairs
        assert point["next_item"]["n"] <= 3 and {"interest", "next_item", "all"} <= set(point["nll_by_task"])
    test_rows = [json.loads(x) for x in (run / "alignment" / "hybrid.test.jsonl").read_text().splitlines()]
    interest = [r["target"] for r in test_rows if r["task"] == "interest"][:4]
    assert sorted(interest) == ["No", "No", "Yes", "Yes"]
    # drawing the curve neither consumes the training's random streams nor leaves the model in eval mode
    a, b = _weights(tmp_path / "plain"), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.summary.metrics["last_valid"] == curved.summary.metrics["last_valid"]


def test_task_weights_repeat_and_thin_rows():
    rows = [{"task": "interest", "k": k} for k in range(10)] + [{"task": "summary", "k": k} for k in range(10)]
    mixed = weigh_tasks(rows, {"interest": 2.5, "summary": 0.3}, seed=0)
    assert sum(r["task"] == "interest" for r in mixed) == 25 and sum(r["task"] == "summary" for r in mixed) == 3
    assert mixed == weigh_tasks(rows, {"interest": 2.5, "summary": 0.3}, seed=0)  # seeded
    assert weigh_tasks(rows, {}, seed=0) == rows and weigh_tasks(rows, {"summary": 0}, seed=0) == rows[:10]


def test_warmup_and_mixture_settings_are_checked(method):
    with pytest.raises(ConfigError, match="warmup.tasks: 'next_item' is not one of"):
        method.make_config("tiny", ["warmup.tasks=next_item"])
    with pytest.raises(ConfigError, match="behaviour variant reads no vectors"):
        method.make_config("tiny", ["warmup.steps=2", "variant=behaviour"])
    with pytest.raises(ConfigError, match="task_weights: unknown task 'foo'"):
        method.make_config("tiny", ["alignment.task_weights={foo: 1}"])
    assert method.make_config("tiny", ["warmup.steps=2"]).warmup.lr == 1e-3
