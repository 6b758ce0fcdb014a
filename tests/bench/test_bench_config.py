"""Bench configs: every mistake names the file and the key; the shipped configs load; the report's seed statistics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from explainrec.bench.config import load_config, plan
from explainrec.bench.report import seed_stats, write_report
from explainrec.cli import app
from explainrec.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _mutate(cfg: dict, change: str) -> None:
    if change == "top":
        cfg["tables"] = 1
    elif change == "option":
        cfg["runs"]["gavamoe"]["options"] = {"max_stepz": 3}
    elif change == "variant":
        cfg["runs"]["base"]["options"]["moe"]["variant"] = "sparse"
    elif change == "stage1":
        cfg["runs"]["gavamoe"]["options"] = {"stage1": {"epoch": 3}}
    elif change == "defaults":
        cfg["defaults"]["xrec"]["lightgcn"]["dims"] = 8
    elif change == "defaults-method":
        cfg["defaults"]["llama"] = {}
    elif change == "zero-shot":
        cfg["runs"]["zero-shot"]["options"]["temperature"] = 0.7
    elif change == "method":
        cfg["runs"]["xrec"]["method"] = "pepler"
    elif change == "experiment-run":
        cfg["experiments"]["main"].append("nope")
    elif change == "experiment-kind":
        cfg["experiments"]["tables"] = ["gavamoe"]
    elif change == "seeds":
        cfg["seeds"] = "0"
    elif change == "generation":
        cfg["generation"]["beams"] = 2
    elif change == "vae-gmm":
        cfg["runs"]["vae-gmm-k3"]["options"]["lrate"] = 0.1
    elif change == "jobs":
        cfg["jobs"] = 0
    elif change == "run-seeds":
        cfg["runs"]["base"]["seeds"] = [0, "1"]
    elif change == "run-datasets":
        cfg["runs"]["base"]["datasets"] = ["nowhere"]


@pytest.mark.parametrize("change, expected", [
    ("top", "unknown key(s) ['tables']"),
    ("option", "runs.gavamoe.options: unknown key(s) ['max_stepz']; allowed: model, lr,"),
    ("variant", "runs.base.options.moe.variant: 'sparse' is not one of ['full', 'single-gate', 'coarse', 'base']"),
    ("stage1", "runs.gavamoe.options.stage1: unknown key(s) ['epoch']; allowed: epochs,"),
    ("defaults", "defaults.xrec.lightgcn: unknown key(s) ['dims']; allowed: dim,"),
    ("defaults-method", "defaults.llama: unknown method 'llama'; known methods: zero-shot, gavamoe"),
    ("zero-shot", "runs.zero-shot.options: unknown key(s) ['temperature']"),
    ("method", "runs.xrec: unknown method 'pepler'"),
    ("experiment-run", "experiments.main: run(s) ['nope'] are not in 'runs'"),
    ("experiment-kind", "experiments.tables: unknown experiment"),
    ("seeds", "field 'seeds'"),
    ("generation", "generation: unknown key(s) ['beams']"),
    ("vae-gmm", "runs.vae-gmm-k3.options: unknown key(s) ['lrate']"),
    ("jobs", "field 'jobs'"),
    ("run-seeds", "runs.base.seeds must be a non-empty list of integers"),
    ("run-datasets", "runs.base.datasets must be a non-empty list of names from 'datasets'"),
])
def test_config_errors_name_the_file_and_key(tmp_path, change, expected):
    cfg = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    _mutate(cfg, change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        plan(load_config(path))
    assert str(path) in str(err.value) and expected in str(err.value), str(err.value)


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\ndatasets = {a = "synthetic"}\nruns = {zs = {method = "zero-shot", options = {modle = "tiny"}}}\n')
    result = CliRunner().invoke(app, ["bench", str(path)])
    assert result.exit_code == 2
    assert f"{path}: runs.zs.options: unknown key(s) ['modle']" in result.output
    assert "Traceback" not in result.output
    path.write_text("name = [unclosed\n")
    result = CliRunner().invoke(app, ["bench", str(path)])
    assert result.exit_code == 2 and "not valid toml" in result.output
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "no such config file" in result.output


def test_a_run_may_narrow_its_seeds_and_datasets(tmp_path):
    cfg = {"name": "n", "datasets": {"a": "synthetic", "b": "synthetic:users=40"}, "seeds": [0, 1, 2],
           "runs": {"zs": {"method": "zero-shot", "seeds": [0]}, "base": {"method": "gavamoe", "datasets": ["b"]}}}
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cells = sorted((p.dataset, p.run, p.seed) for p in plan(load_config(path)))
    assert cells == [("a", "zs", 0), ("b", "base", 0), ("b", "base", 1), ("b", "base", 2), ("b", "zs", 0)]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_plan(name):
    cfg = load_config(REPO / "configs" / name)
    planned = plan(cfg)
    assert planned and all(p.spec.method for p in planned)
    runs = {p.run for p in planned}
    assert all(set(names) <= runs for names in cfg["experiments"].values())


def test_demo_config_covers_the_paper_experiments():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    exp = cfg["experiments"]
    assert set(exp) == {"main", "ablation", "gates", "sparsity", "latent"}
    variants = {cfg["runs"][r].get("options", {}).get("moe", {}).get("variant", "full") for r in exp["ablation"]}
    assert variants == {"full", "single-gate", "coarse", "base"}
    ks = sorted(cfg["runs"][r].get("options", {}).get("clusters", 4) for r in exp["gates"])
    assert ks == [2, 3, 4, 5]
    assert {cfg["runs"][r]["method"] for r in exp["main"]} == {"zero-shot", "gavamoe", "xrec"}


def test_report_gives_mean_and_std_over_seeds(tmp_path):
    """Two seeds of finished runs (written by hand): cells read 'mean ± std', the best mean is bold."""
    cfg = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    cfg.update(out=str(tmp_path / "out"), seeds=[0, 1], bertscore=False, experiments={"main": ["zero-shot", "gavamoe"]})
    cfg["runs"] = {k: cfg["runs"][k] for k in ("zero-shot", "gavamoe")}
    path = tmp_path / "two-seeds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = load_config(path)
    planned = plan(cfg)
    bleu = {("zero-shot", 0): 1.0, ("zero-shot", 1): 3.0, ("gavamoe", 0): 10.0}  # gavamoe seed 1 unfinished
    for p in planned:
        p.run_dir.mkdir(parents=True)
        (p.run_dir / "run.json").write_text(json.dumps(p.spec.to_dict()))
        if (p.run, p.seed) in bleu:
            (p.run_dir / "done.json").write_text(json.dumps(
                {"metrics": {"bleu4": bleu[p.run, p.seed], "usr": 0.5}, "std": {}, "buckets": {}, "n": 9,
                 "train_seconds": 1.0, "train_steps": 2, "generation": {"explanations": 9}}))
    report = write_report(cfg, planned, tmp_path / "out").read_text()
    assert "| zero-shot | 9 | 2.00 ± 1.41 | 0.5000 ± 0.0000 |" in report
    assert "| gavamoe (seed1 partial) | 9 | **10.00** | 0.5000 |" in report
    assert seed_stats([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert seed_stats([4.0]) == (4.0, None)


def test_learning_curves_average_the_seeds_at_each_point(tmp_path):
    """Validation NLL per pairs seen, read from each run's train_log.jsonl: mean ± std over the seeds, a figure."""
    cfg = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    cfg.update(out=str(tmp_path / "out"), seeds=[0, 1], bertscore=False, experiments={"curves": ["gavamoe"]})
    cfg["runs"] = {"gavamoe": cfg["runs"]["gavamoe"]}
    path = tmp_path / "curves.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = load_config(path)
    planned = plan(cfg)
    nll = {0: [3.0, 2.0], 1: [5.0, 4.0]}
    for p in planned:
        p.run_dir.mkdir(parents=True)
        (p.run_dir / "run.json").write_text(json.dumps(p.spec.to_dict()))
        curve = [{"step": s, "pairs": 4 * s, "rougeL": r + p.seed, "ret_mrr": 10.0 * s} for s, r in ((10, 20.0), (20, 30.0))]
        (p.run_dir / "done.json").write_text(json.dumps({"metrics": {"bleu4": 1.0}, "n": 9, "curve": curve}))
        log = [{"step": 1, "loss": 9.0}] + [{"kind": "valid", "step": s, "pairs": 4 * s, "valid_nll": v}
                                             for s, v in zip((10, 20), nll[p.seed])]
        (p.run_dir / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    report = write_report(cfg, planned, tmp_path / "out").read_text()
    datasets = list(cfg["datasets"])
    assert "| run | seeds | 40 pairs | 80 pairs |" in report
    assert "| gavamoe | 2 | 4.000 ± 1.414 | 3.000 ± 1.414 |" in report
    # the curve texts' overlap and specificity beside the NLL, from done.json's curve
    rouge = report.index("ROUGE-L (valid texts):")
    assert "| gavamoe | 2 | 20.50 ± 0.71 | 30.50 ± 0.71 |" in report[rouge:]
    assert "| gavamoe | 2 | 100.00 | 200.00 |" in report[report.index("Ret-MRR (valid texts):"):]
    assert (tmp_path / "out" / "figures" / f"curves-{datasets[0]}.png").is_file()


def test_a_setting_training_refuses_stops_the_bench_naming_the_run(tmp_path, write_config):
    """What a method's check refuses before any work is a ConfigError (exit code 2, not bad data) and still names the
    run it belongs to."""
    from explainrec.bench.harness import run_bench
    from explainrec.data.schema import DataError

    config = write_config(tmp_path / "c.yaml", tmp_path / "out", runs=["gavamoe"])
    cfg = yaml.safe_load(config.read_text())
    cfg["runs"]["gavamoe"]["options"] = {"model": str(tmp_path / "nowhere" / "llm")}
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"synthetic/gavamoe/seed0: model: .*no such model folder") as err:
        run_bench(config, echo=lambda *_: None)
    assert not isinstance(err.value, DataError)
    assert not (tmp_path / "out" / "synthetic").exists()


def test_a_config_with_an_evaluations_old_key_says_what_replaced_it(tmp_path):
    """Before methods declared their evaluations, a config set RecExplainer's at its top level (``alignment:``)."""
    cfg = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    cfg["alignment"] = cfg.pop("evaluations")["alignment"]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"alignment: an evaluation's options now go under 'evaluations' "
                                          r"\(evaluations: \{alignment: \{\.\.\.\}\}\)"):
        load_config(path)
    cfg["evaluations"] = {"alignmnet": {}}
    del cfg["alignment"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"evaluations.alignmnet: no registered method declares it; declared: "
                                          r"\['alignment'\]"):
        load_config(path)
    cfg["evaluations"] = {"alignment": {"limit": 0}}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"evaluations.alignment.limit: must be >= 1"):
        load_config(path)


def test_run_folders_written_before_this_layout_are_still_reported(tmp_path):
    """run.json with an evaluation's options at its top level ("alignment": {...}, in every run's), flat
    train_summary.json and done.json files, as the bench wrote them before: the runs still match their specs (done,
    nothing to redo) and the report shows their numbers."""
    from explainrec.bench.state import is_finished, run_state
    from explainrec.bench.runner import EVALUATION_VERSION

    cfg = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    runs = ("zero-shot", "gavamoe", "vae-gmm-k3", "recexplainer-h")
    cfg.update(out=str(tmp_path / "out"), bertscore=False, experiments={"main": ["zero-shot", "gavamoe"]})
    cfg["runs"] = {k: cfg["runs"][k] for k in runs}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = load_config(path)
    planned = plan(cfg)
    old_options = cfg["evaluations"]["alignment"]
    for p in planned:
        old = {k: v for k, v in p.spec.to_dict().items() if k not in ("evaluations", "sensitivity")}
        old["alignment"] = old_options
        p.run_dir.mkdir(parents=True)
        (p.run_dir / "run.json").write_text(json.dumps(old))
        stage = p.run == "vae-gmm-k3"
        (p.run_dir / "done.json").write_text(json.dumps(
            {"evaluation": EVALUATION_VERSION, "metrics": {} if stage else {"bleu4": 5.0}, "n": 0 if stage else 9,
             "train_seconds": 3.0, "train_steps": 5 if stage else 7, "generation": None if stage else {},
             **({"stage": {"cluster_sizes": [4, 5, 6]}} if stage else {})}))
        if p.run == "gavamoe":
            (p.run_dir / "train_summary.json").write_text(json.dumps(
                {"steps": 7, "train_seconds": 3.0, "epochs_done": 1, "budget_hit": True,
                 "last_valid": {"valid_nll": 2.345}, "config": {}}))
    assert [run_state(p) for p in planned] == ["done"] * 4 and all(is_finished(p) for p in planned)
    report = write_report(cfg, planned, tmp_path / "out").read_text()
    assert "| synthetic/gavamoe/seed0 | done | 7 | 3 s | 2.345 |" in report
    assert "| synthetic/vae-gmm-k3/seed0 | done | 5 | 3 s |" in report
    # the evaluation's options are still part of the run: changing them redoes its files only
    spec = next(p.spec for p in planned if p.run == "recexplainer-h")
    old = json.loads((tmp_path / "out" / "synthetic" / "recexplainer-h" / "seed0" / "run.json").read_text())
    old["alignment"] = {**old_options, "limit": 5}
    assert spec.trains_like(old) and spec.outdated_outputs(old) == ["alignment.json", "alignment.md"]


# each experiment kind's heading, as the report has always titled it
HEADINGS = {"main": "## Main comparison (Table 2)", "ablation": "## Ablation (Figure 3)",
            "gates": "## Number of gates K (Table 3)", "sparsity": "## Sparsity (Figure 4)",
            "latent": "## Latent space (Figure 5)", "decoding": "## Decoding chosen on the validation split",
            "alignment": "## Alignment to the recommender (Table 1) and explanation checks",
            "curves": "## Learning curves"}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_reports_its_sections_in_order(config, tmp_path):
    """The bench's own sections and the ones methods declare (looked up through the registry) all render, under
    the headings they always had, in the order the config lists them (here before any run has finished)."""
    cfg = load_config(REPO / "configs" / config)
    cfg["out"] = str(tmp_path / "out")
    report = write_report(cfg, plan(cfg), tmp_path / "out").read_text()
    kinds = list(cfg.get("experiments") or {"main": []})
    positions = [report.index(HEADINGS[kind]) for kind in kinds]
    assert positions == sorted(positions)
