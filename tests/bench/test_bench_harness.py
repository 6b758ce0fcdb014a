"""`explainrec bench` end to end on configs/mini.yaml (tiny LLaMA, tiny synthetic data): report, resume, failures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from explainrec.bench import harness
from explainrec.bench.config import load_config, plan
from explainrec.cli import app

QUIET = dict(echo=lambda *_: None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, write_config):
    """The whole mini config, run once through the CLI: ``(folder, config path, CLI result)``."""
    root = tmp_path_factory.mktemp("mini")
    config = write_config(root / "mini.yaml", root / "out")
    result = CliRunner().invoke(app, ["bench", str(config)])
    return root, config, result


def copy_of(finished, tmp_path, **changes):
    """A private copy of the finished bench (runs and config) that a test may change."""
    root, _, _ = finished
    shutil.copytree(root / "out", tmp_path / "out")
    config = yaml.safe_load((root / "mini.yaml").read_text())
    config["out"] = str(tmp_path / "out")
    config.update(changes)
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def count_run_one(monkeypatch) -> list[str]:
    """Record the run folder of every run_one call the harness makes (the calls still happen)."""
    calls: list[str] = []
    real = harness.run_one

    def counting(spec, run_dir, **kw):
        calls.append(f"{run_dir.parent.name}")
        return real(spec, run_dir, **kw)

    monkeypatch.setattr(harness, "run_one", counting)
    return calls


def mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.glob("*/*/seed*/done.json")}


def test_mini_config_end_to_end(finished):
    root, _, result = finished
    out = root / "out"
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    for text in ("## How this was run", "explainrec bench", "## Main comparison (Table 2)", "| zero-shot |",
                 "BLEU-4", "ROUGE-L", "Distinct-2", "USR", "## Ablation (Figure 3)", "| single-gate |",
                 "## Number of gates K (Table 3)", "| vae-gmm-k3 | 3 |", "## Sparsity (Figure 4)", "**ds1**",
                 "## Latent space (Figure 5)", "## Cost per run", "```yaml", "Machine:"):
        assert text in report, text
    # pair retrieval (evaluate's default) beside the overlap metrics, with its chance levels
    assert "| Ret-R@1↑ | Ret-MRR↑ |" in report and "chance levels (a random ranking): N = " in report
    # the ablation says what each of its runs sets, from the config (not from a fixed text about one method)
    assert '- `single-gate`: gavamoe, {"moe": {"variant": "single-gate"}}' in report
    assert "- `gavamoe`: gavamoe, its defaults" in report
    for name in ("ablation_synthetic", "sparsity_synthetic", "gates_synthetic", "latent_synthetic_gavamoe_seed0",
                 "latent_synthetic_vae-gmm-k3_seed0"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", name
        assert f"figures/{name}.png" in report
    runs = out / "synthetic"
    # the cost table shows each trained run's last validation NLL, as its train_summary.json has it
    nll = json.loads((runs / "gavamoe" / "seed0" / "train_summary.json").read_text())["metrics"]["last_valid"]["valid_nll"]
    cost_row = next(line for line in report.splitlines() if line.startswith("| synthetic/gavamoe/seed0 | done |"))
    assert f"| {nll:.3f} |" in cost_row
    # a stage trained epoch by epoch counts epochs, not optimizer steps
    epochs = json.loads((runs / "vae-gmm-k3" / "seed0" / "done.json").read_text())["train_epochs"]
    assert f"| synthetic/vae-gmm-k3/seed0 | done | {epochs} epochs |" in report
    assert sorted(p.name for p in runs.iterdir()) == sorted(load_config(root / "mini.yaml")["runs"])
    for run in runs.iterdir():
        assert (run / "seed0" / "done.json").exists(), run.name
        assert not (run / "seed0" / "checkpoint").exists(), "keep_checkpoints: false"
    # vae-gmm: a stage alone, its numbers in done.json
    done = json.loads((runs / "vae-gmm-k3" / "seed0" / "done.json").read_text())
    stage = json.loads((runs / "vae-gmm-k3" / "seed0" / "stage" / "metrics.json").read_text())
    assert len(done["stage"]["cluster_sizes"]) == 3 and done["stage"]["test_auc"] == stage["test_auc"]
    assert not (runs / "vae-gmm-k3" / "seed0" / "predictions.jsonl").exists()
    # base, gavamoe and single-gate share stage-1 settings: fitted once (by base, the first), copied after
    assert result.output.count("stage copied") == 2
    assert result.output.count("[vae-gmm] training the stage1 stage") == 1
    s1 = [(runs / r / "seed0" / "stage1" / "model" / "model.safetensors").read_bytes()
          for r in ("base", "gavamoe", "single-gate")]
    assert s1[0] == s1[1] == s1[2]
    log = [json.loads(x) for x in (out / "bench_log.jsonl").read_text().splitlines()]
    assert log[-1]["done"] == 7 and log[-1]["failed"] == 0 and not log[-1]["interrupted"]
    # RecExplainer: its alignment report beside the text metrics
    assert (runs / "recexplainer-h" / "seed0" / "alignment.json").exists()
    assert "## Alignment to the recommender (Table 1)" in report and "| recexplainer-h (hybrid) |" in report
    assert "| random | " in report and "| popularity | " in report  # the report's own baseline rows


def test_rerun_skips_finished_runs(finished, tmp_path, monkeypatch):
    config = copy_of(finished, tmp_path)
    before = mtimes(tmp_path / "out")
    calls = count_run_one(monkeypatch)
    result = harness.run_bench(config, **QUIET)
    assert calls == [] and {o.status for o in result.outcomes} == {"skipped"}
    assert mtimes(tmp_path / "out") == before
    assert (tmp_path / "out" / "report.md").exists()


def test_changed_option_reruns_only_that_run(finished, tmp_path, monkeypatch):
    config = copy_of(finished, tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["runs"]["gavamoe"]["options"] = {"max_steps": 3}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = mtimes(tmp_path / "out")
    calls = count_run_one(monkeypatch)
    lines: list[str] = []
    result = harness.run_bench(config, echo=lines.append)
    assert calls == ["gavamoe"]
    assert {o.key: o.status for o in result.outcomes}["synthetic/gavamoe/seed0"] == "done"
    after = mtimes(tmp_path / "out")
    others = {k for k in before if not k.startswith("synthetic/gavamoe/")}
    assert {k for k in others if after.get(k) != before[k]} == set()
    done = json.loads((tmp_path / "out" / "synthetic" / "gavamoe" / "seed0" / "done.json").read_text())
    assert done["train_steps"] == 3
    kept = list((tmp_path / "out" / "synthetic" / "gavamoe").glob("seed0.stale-*"))  # set aside, not deleted
    assert len(kept) == 1 and json.loads((kept[0] / "done.json").read_text())["train_steps"] != 3
    assert any("settings changed" in x for x in lines)
    assert any("stage1 from" in x and x.rstrip().endswith("base/seed0/stage1") for x in lines)  # same stage 1


def test_changed_evaluation_settings_keep_the_training(finished, tmp_path, monkeypatch):
    """A new generation setting (or split, precision, decoding search) redoes what comes after training only: the
    model stays, the old outputs are kept aside in RUN/previous-TIME/."""
    config = copy_of(finished, tmp_path, generation={"batch_size": 9, "max_new_tokens": 4})
    run = tmp_path / "out" / "synthetic" / "gavamoe" / "seed0"
    model_time = (run / "model").stat().st_mtime_ns
    old_predictions = (run / "predictions.jsonl").read_text()
    from explainrec.bench.state import run_state

    assert {run_state(p) for p in plan(load_config(config)) if p.run_dir == run} == {"partial"}
    calls = count_run_one(monkeypatch)
    lines: list[str] = []
    harness.run_bench(config, echo=lines.append)
    assert "gavamoe" in calls
    assert (run / "model").stat().st_mtime_ns == model_time and not list(run.parent.glob("seed0.stale-*"))
    (previous,) = run.glob("previous-*")
    assert (previous / "predictions.jsonl").read_text() == old_predictions and (previous / "done.json").exists()
    assert json.loads((run / "run.json").read_text())["generation"]["max_new_tokens"] == 4
    assert (run / "done.json").exists() and (run / "predictions.jsonl").read_text() != old_predictions
    assert any("evaluation settings changed" in x and "training is kept" in x for x in lines)


def test_runs_scored_by_an_older_evaluation_are_scored_again_from_their_texts(finished, tmp_path, monkeypatch):
    from explainrec.bench.runner import EVALUATION_VERSION

    config = copy_of(finished, tmp_path)
    run = tmp_path / "out" / "synthetic" / "base" / "seed0"
    done = json.loads((run / "done.json").read_text())
    assert done["evaluation"] == EVALUATION_VERSION
    del done["evaluation"]  # as written before the evaluation had a version
    (run / "done.json").write_text(json.dumps(done))
    texts = (run / "predictions.jsonl").stat().st_mtime_ns
    calls = count_run_one(monkeypatch)
    harness.run_bench(config, **QUIET)
    assert calls == ["base"]
    assert (run / "predictions.jsonl").stat().st_mtime_ns == texts  # the texts are kept, only scored again
    assert json.loads((run / "done.json").read_text())["evaluation"] == EVALUATION_VERSION


def test_a_new_decoding_search_keeps_the_test_texts(finished, tmp_path):
    """Only the files a changed setting decides are made again (here: the decoding search's)."""
    from explainrec.bench.runner import RunSpec

    spec = RunSpec(data="synthetic", method="zero-shot", generation={"max_new_tokens": 6})
    saved = spec.to_dict()
    assert spec.outdated_outputs(saved) == []
    tuned = RunSpec(data="synthetic", method="zero-shot", generation={"max_new_tokens": 6},
                    tune_decoding={"limit": 4})
    assert tuned.trains_like(saved) and "predictions.jsonl" not in tuned.outdated_outputs(saved)
    assert {"decoding.json", "predictions_tuned.jsonl", "metrics_tuned.json"} <= set(tuned.outdated_outputs(saved))
    probed = RunSpec(data="synthetic", method="zero-shot", generation={"max_new_tokens": 6}, sensitivity={"n": 8})
    assert probed.outdated_outputs(saved) == ["sensitivity.json", "sensitivity.md"]
    longer = RunSpec(data="synthetic", method="zero-shot", generation={"max_new_tokens": 8})
    assert {"predictions.jsonl", "metrics.json", "decoding.json"} <= set(longer.outdated_outputs(saved))
    assert not RunSpec(data="synthetic", method="zero-shot", seed=1).trains_like(saved)


def test_report_only_rebuilds_from_the_run_folders(finished, tmp_path, monkeypatch):
    config = copy_of(finished, tmp_path)
    (tmp_path / "out" / "report.md").unlink()
    shutil.rmtree(tmp_path / "out" / "figures")
    calls = count_run_one(monkeypatch)
    result = CliRunner().invoke(app, ["bench", str(config), "--report-only"])
    assert result.exit_code == 0, result.output
    assert calls == []
    assert "| gavamoe |" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "figures" / "ablation_synthetic.png").exists()


def test_report_only_with_only_reports_the_chosen_runs_alone(finished, tmp_path):
    config = copy_of(finished, tmp_path)
    result = CliRunner().invoke(app, ["bench", str(config), "--report-only", "--only", "gavamoe,base"])
    assert result.exit_code == 0, result.output
    main = (tmp_path / "out" / "report.md").read_text().split("## Main comparison (Table 2)")[1].split("\n## ")[0]
    assert "| gavamoe |" in main and "| base |" in main
    assert "| xrec |" not in main and "| zero-shot |" not in main
    other = copy_of(finished, tmp_path / "two", datasets={"synthetic": "synthetic:users=30,items=25,types=2,seed=5",
                                                          "other": "synthetic:users=20,items=15,types=2,seed=6"})
    result = CliRunner().invoke(app, ["bench", str(other), "--report-only", "--only", "synthetic/*"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "two" / "out" / "report.md").read_text()
    assert "### synthetic" in report and "### other" not in report  # no section of a dataset left out


def test_a_run_limited_to_one_dataset_has_no_row_on_another(finished, tmp_path):
    """single-gate moved to a second dataset: the first dataset's tables no longer list it (not even empty)."""
    config = copy_of(finished, tmp_path, datasets={"synthetic": "synthetic:users=30,items=25,types=2,seed=5",
                                                   "other": "synthetic:users=20,items=15,types=2,seed=6"})
    cfg = yaml.safe_load(config.read_text())
    cfg["runs"]["single-gate"]["datasets"] = ["other"]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["bench", str(config), "--report-only"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report.md").read_text()
    synthetic = report.split("## Ablation (Figure 3)")[1].split("### other")[0]
    assert "| gavamoe |" in synthetic and "| single-gate" not in synthetic
    assert "### other" in report.split("## Ablation (Figure 3)")[1]


def test_interrupt_then_rerun_resumes(tmp_path, monkeypatch, write_config):
    """Ctrl-C inside GaVaMoE's stage 2: the rerun keeps the finished run and the fitted stage 1, does the rest."""
    import explainrec.methods.gavamoe.stage1_method as stage1
    import explainrec.methods.llm_method as llm_method

    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot", "gavamoe", "vae-gmm-k3"])
    run = tmp_path / "out" / "synthetic"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(llm_method, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            harness.run_bench(config, **QUIET)
    assert (run / "zero-shot" / "seed0" / "done.json").exists()
    assert (run / "gavamoe" / "seed0" / "stage1" / "model" / "model.safetensors").exists()
    assert not (run / "gavamoe" / "seed0" / "done.json").exists()
    assert not (run / "vae-gmm-k3").exists()
    log = [json.loads(x) for x in (tmp_path / "out" / "bench_log.jsonl").read_text().splitlines()]
    assert log[-1]["interrupted"] and log[-1]["done"] == 1

    zero_shot_done = (run / "zero-shot" / "seed0" / "done.json").stat().st_mtime_ns
    stage1_weights = (run / "gavamoe" / "seed0" / "stage1" / "model" / "model.safetensors").stat().st_mtime_ns
    calls = count_run_one(monkeypatch)
    fits: list[int] = []
    real_fit = stage1.VaeGmmStage.train

    def counted_fit(self, ds, out, config, **kw):
        fits.append(config.clusters)
        return real_fit(self, ds, out, config, **kw)

    monkeypatch.setattr(stage1.VaeGmmStage, "train", counted_fit)
    result = harness.run_bench(config, **QUIET)
    assert {o.key: o.status for o in result.outcomes} == {
        "synthetic/zero-shot/seed0": "skipped", "synthetic/gavamoe/seed0": "done", "synthetic/vae-gmm-k3/seed0": "done"}
    assert calls == ["gavamoe", "vae-gmm-k3"]
    assert fits == [3]  # only the vae-gmm run's K=3; gavamoe kept its stage 1
    assert (run / "zero-shot" / "seed0" / "done.json").stat().st_mtime_ns == zero_shot_done
    assert (run / "gavamoe" / "seed0" / "stage1" / "model" / "model.safetensors").stat().st_mtime_ns == stage1_weights


def test_a_failing_run_is_recorded_keeps_its_checkpoint_and_the_others_finish(tmp_path, write_config, monkeypatch):
    """A run that fails after its training wrote a checkpoint: error.txt with the traceback, the other runs finish,
    and the checkpoint stays although keep_checkpoints is false (its rerun resumes from it; only a done run's
    checkpoints go)."""
    import explainrec.methods.gavamoe.stage1_eval as stage1_eval

    def fail(*args, **kwargs):
        raise RuntimeError("the disk refused the cluster table")

    monkeypatch.setattr(stage1_eval, "evaluate_and_write", fail)
    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot"], keep_checkpoints=False)
    cfg = yaml.safe_load(config.read_text())
    cfg["runs"] = {"broken": {"method": "vae-gmm", "options": {"clusters": 2, "epochs": 1, "pretrain_epochs": 1}},
                   **cfg["runs"]}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["bench", str(config)])
    assert result.exit_code == 1
    assert "FAILED synthetic/broken/seed0" in result.output
    broken = tmp_path / "out" / "synthetic" / "broken" / "seed0"
    assert "the disk refused the cluster table" in (broken / "error.txt").read_text()
    assert "Traceback" in (broken / "error.txt").read_text()
    assert (broken / "stage" / "checkpoint" / "COMPLETE").is_file()  # a failed run's checkpoint is kept
    assert (tmp_path / "out" / "synthetic" / "zero-shot" / "seed0" / "done.json").exists()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed runs" in report and "synthetic/broken/seed0" in report
    # still failing on a rerun, the finished run untouched
    again = CliRunner().invoke(app, ["bench", str(config)])
    assert again.exit_code == 1 and "finished before, skipped" in again.output


def _digest(folder: Path) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


@pytest.mark.parametrize("change, expected", [
    ({"runs": {"broken": {"method": "vae-gmm", "options": {"clusters": 100000}}}}, "cannot fill 100000 clusters"),
    ({"split": "dev"}, "split: unknown split 'dev'"),
    ({"tune_decoding": {"rule": "bogus"}}, "tune_decoding.rule: expected one of"),
    ({"limit": 0}, "field 'limit' must be a whole number >= 1"),
], ids=["stage-1 clusters", "split", "decoding rule", "limit"])
def test_what_a_run_would_reject_stops_the_bench_before_any_run(tmp_path, write_config, change, expected):
    """Docs: a bad config exits 2 before any work -- not after the first runs have trained."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot"])
    cfg = yaml.safe_load(config.read_text())
    if "runs" in change:
        cfg["runs"] = {**change["runs"], **cfg["runs"]}
    else:
        cfg.update(change)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    before = _digest(tmp_path / "out")
    result = CliRunner().invoke(app, ["bench", str(config)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert _digest(tmp_path / "out") == before  # no run started, nothing written


def test_two_benches_on_one_output_the_second_is_refused_naming_the_first(tmp_path, write_config):
    import subprocess
    import sys

    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot"])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from explainrec.folders import writer_lock\n"
                               "with writer_lock(sys.argv[1], command='explainrec bench other.yaml'):\n"
                               "    print('held', flush=True); time.sleep(120)", str(tmp_path / "out")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["bench", str(config)])
        assert result.exit_code == 1, result.output
        assert f"pid {holder.pid} (`explainrec bench other.yaml`" in result.output and "one writer" in result.output
        assert not (tmp_path / "out" / "synthetic").exists()
    finally:
        holder.kill()
        holder.wait()
    assert CliRunner().invoke(app, ["bench", str(config)]).exit_code == 0  # the holder gone, its lock is free


def test_dry_run_and_only(tmp_path, write_config):
    config = write_config(tmp_path / "c.yaml", tmp_path / "out")
    result = CliRunner().invoke(app, ["bench", str(config), "--dry-run", "--only", "synthetic/gavamoe*,xrec"])
    assert result.exit_code == 0, result.output
    assert "[   todo] synthetic/gavamoe/seed0: gavamoe" in result.output
    assert "synthetic/xrec/seed0" in result.output and "zero-shot" not in result.output
    assert "2 run(s) of 7" in result.output
    assert not (tmp_path / "out" / "synthetic").exists()
    none = CliRunner().invoke(app, ["bench", str(config), "--only", "nothing*"])
    assert none.exit_code == 2 and "matches none" in none.output


def test_parallel_jobs(tmp_path, write_config):
    """Two stage-1-only runs in two worker processes (vae-gmm keeps the workers' imports light)."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["vae-gmm-k3"], jobs=2)
    cfg = yaml.safe_load(config.read_text())
    cfg["runs"]["vae-gmm-k2"] = {"method": "vae-gmm", "options": {"clusters": 2}}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = harness.run_bench(config, **QUIET)
    assert [o.status for o in result.outcomes] == ["done", "done"], [o.error for o in result.outcomes]
    for run in ("vae-gmm-k3", "vae-gmm-k2"):
        assert (tmp_path / "out" / "synthetic" / run / "seed0" / "done.json").exists()
        assert (tmp_path / "out" / "logs" / f"synthetic_{run}_seed0.log").exists()


def test_plan_covers_every_seed_and_dataset(tmp_path, write_config):
    config = write_config(tmp_path / "c.yaml", tmp_path / "out", seeds=[0, 1],
                          datasets={"a": "synthetic:users=30,items=25,types=2", "b": "synthetic:users=40"})
    planned = plan(load_config(config))
    assert len(planned) == 2 * 2 * 7
    assert planned[0].run_dir == tmp_path / "out" / "a" / "zero-shot" / "seed0"
    assert harness.select(planned, ["b/*/seed1"]) == [p for p in planned if p.dataset == "b" and p.seed == 1]


def test_sigterm_stops_the_bench_like_ctrl_c(tmp_path, monkeypatch, write_config):
    import os
    import signal

    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot"])
    monkeypatch.setattr(harness, "run_one", lambda *a, **kw: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        harness.run_bench(config, **QUIET)
    assert signal.getsignal(signal.SIGTERM) is before
    log = json.loads((tmp_path / "out" / "bench_log.jsonl").read_text().splitlines()[-1])
    assert log["interrupted"] and log["done"] == 0


def test_decoding_chosen_on_valid_then_applied_to_test(tmp_path, write_config):
    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot"],
                          tune_decoding={"limit": 3, "rule": "rougeL"}, experiments={"decoding": ["zero-shot"]})
    result = harness.run_bench(config, **QUIET)
    assert [o.status for o in result.outcomes] == ["done"], [o.error for o in result.outcomes]
    run = tmp_path / "out" / "synthetic" / "zero-shot" / "seed0"
    record = json.loads((run / "decoding.json").read_text())
    assert record["split"] == "valid" and record["pairs"] == 3 and len(record["tried"]) == 6
    assert record["chosen"] == max(record["tried"], key=lambda t: t["score"])["settings"]
    done = json.loads((run / "done.json").read_text())
    assert done["tuned"]["chosen"] == record["chosen"] and "rougeL" in done["tuned"]["metrics"]
    assert len((run / "predictions_tuned.jsonl").read_text().splitlines()) == done["n"]
    assert "## Decoding chosen on the validation split" in (tmp_path / "out" / "report.md").read_text()


def test_report_shows_pair_retrieval_beside_overlap_and_a_dash_for_runs_evaluated_before_it(tmp_path, write_config):
    """Finished runs written by hand: one evaluated before pair retrieval existed (no ret_* metrics), one after."""
    from explainrec.bench.report import write_report

    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot", "gavamoe"],
                          experiments={"main": ["zero-shot", "gavamoe"]})
    cfg = load_config(config)
    planned = plan(cfg)
    metrics = {"zero-shot": {"rougeL": 10.0, "bertscore_f1": 50.0},
               "gavamoe": {"rougeL": 20.0, "bertscore_f1": 60.0, "ret_r1": 4.0, "ret_mrr": 12.5}}
    for p in planned:
        p.run_dir.mkdir(parents=True)
        (p.run_dir / "run.json").write_text(json.dumps(p.spec.to_dict()))
        (p.run_dir / "done.json").write_text(json.dumps({"metrics": metrics[p.run], "n": 30}))
        if p.run == "gavamoe":
            (p.run_dir / "metrics.json").write_text(json.dumps(
                {"metrics": metrics[p.run], "chance": {"ret_r1": 100 / 30, "ret_r10": 1000 / 30, "ret_mrr": 13.3187},
                 "config": {"specificity": {"candidates": 30}}}))
    report = write_report(cfg, planned, tmp_path / "out").read_text()
    assert "| Run | n | ROUGE-L↑ | BERTScore F1↑ | Ret-R@1↑ | Ret-MRR↑ |" in report
    assert "| zero-shot | 30 | 10.00 | 50.00 | – | – |" in report
    assert "| gavamoe | 30 | **20.00** | **60.00** | 4.00 | 12.50 |" in report
    assert "chance levels (a random ranking): N = 30: Ret-R@1 3.33, Ret-MRR 13.32." in report


def test_user_sensitivity_runs_in_the_bench_and_sits_beside_the_text_metrics(tmp_path, write_config):
    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["zero-shot", "base"],
                          sensitivity={"n": 3, "precision": "fp32"})
    result = harness.run_bench(config, **QUIET)
    assert {o.status for o in result.outcomes} == {"done"}, [o.error for o in result.outcomes]
    for run in ("zero-shot", "base"):
        folder = tmp_path / "out" / "synthetic" / run / "seed0"
        record = json.loads((folder / "sensitivity.json").read_text())
        done = json.loads((folder / "done.json").read_text())
        assert record["n"] == 3 and (folder / "sensitivity.md").exists()
        assert done["metrics"]["user_change"] == record["means"]["change"]
        assert done["metrics"]["user_toward"] == record["means"]["toward_profile"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "User-Δ↑" in report and "User→↑" in report and "A template scores 0 on both" in report


def test_curve_texts_are_scored_with_the_run(tmp_path, write_config):
    """Runs trained with curve_pairs: each curve point's valid texts scored for overlap and specificity, ranked
    among all references of the valid split, in done.json's curve."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["gavamoe"], experiments={"curves": ["gavamoe"]})
    cfg = yaml.safe_load(config.read_text())
    cfg["defaults"]["gavamoe"].update(valid_every=1, curve_pairs=3, curve_max_new_tokens=5)
    config.write_text(yaml.safe_dump(cfg))
    result = harness.run_bench(config, **QUIET)
    assert {o.status for o in result.outcomes} == {"done"}, [o.error for o in result.outcomes]
    done = json.loads((tmp_path / "out" / "synthetic" / "gavamoe" / "seed0" / "done.json").read_text())
    assert [c["step"] for c in done["curve"]] == [1, 2] and [c["pairs"] for c in done["curve"]] == [4, 8]
    assert all({"rougeL", "ret_mrr", "distinct2"} <= set(c) for c in done["curve"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "ROUGE-L (valid texts):" in report and "Ret-MRR (valid texts):" in report
