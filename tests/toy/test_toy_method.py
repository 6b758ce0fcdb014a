"""A method from outside the package (tests/toy/toy_explainer.py), registered only here, brings its own evaluation
and bench report section: it trains with `--config tiny`, its evaluation runs through the generic `explainrec
evaluate --extra` and through the bench, and its section is in the report. No generic file knows it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from explainrec.bench.harness import run_bench
from explainrec.cli import app
from explainrec.methods import registry

DATA = "synthetic:users=30,items=25,types=2"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture
def toy(monkeypatch):
    """The toy method in the registry for one test (the one line a method adds to registry.py, made here)."""
    monkeypatch.setitem(registry._ENTRIES, "toy", "toy_explainer:Toy")
    registry.get.cache_clear()
    yield registry.get("toy")
    registry.get.cache_clear()


def test_a_method_brings_its_own_evaluation_and_report_section(toy, tmp_path):
    runner = CliRunner()
    shown = runner.invoke(app, ["methods", "toy"])
    assert "evaluation word_share" in shown.output and "bench report section toy-words" in shown.output
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "toy", "--data", DATA, "--out", str(run), "--config", "tiny"])
    assert trained.exit_code == 0, trained.output
    word = json.loads((run / "model" / "explainrec.json").read_text())["word"]
    assert json.loads((run / "train_summary.json").read_text())["metrics"] == {"word": word}

    result = runner.invoke(app, ["evaluate", str(run), "--extra", "word_share", "--data", DATA, "n=3"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "word_share.json").read_text())
    assert report["word"] == word and report["n"] == 3 and 0 <= report["share"] <= 1
    assert f"| {word} | 3 |" in (run / "word_share.md").read_text()
    bad = runner.invoke(app, ["evaluate", str(run), "--extra", "word_share", "--data", DATA, "--overwrite", "n=0"])
    assert bad.exit_code == 2 and "n: must be >= 1" in bad.output

    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "name": "toy", "out": str(tmp_path / "bench"), "datasets": {"synthetic": DATA}, "bertscore": False,
        "generation": {"max_new_tokens": 4}, "limit": 3, "evaluations": {"word_share": {"n": 2}},
        "runs": {"zero-shot": {"method": "zero-shot", "options": {"model": "tiny"}},
                 "toy": {"method": "toy", "options": {"model": "tiny", "min_length": 4}}},
        "experiments": {"main": ["zero-shot", "toy"], "toy-words": ["toy"]}}))
    result = run_bench(config, echo=lambda *_: None)
    assert not result.failed
    folder = tmp_path / "bench" / "synthetic" / "toy" / "seed0"
    assert json.loads((folder / "word_share.json").read_text())["n"] == 2
    assert not (tmp_path / "bench" / "synthetic" / "zero-shot" / "seed0" / "word_share.json").exists()
    text = (tmp_path / "bench" / "report.md").read_text()
    assert "## Toy words" in text and f"| synthetic/toy | {word} |" in text
    assert text.index("## Main comparison") < text.index("## Toy words")


def test_no_generic_layer_names_a_method():
    """cli.py, bench/ and methods/base.py run what methods declare: none of them names a method or what only one
    method has (its evaluations, sections, stage figures)."""
    specific = ["gavamoe", "vae-gmm", "vae_gmm", "recexplainer", "alignment", "n_clusters", "cluster_sizes",
                "test_auc", "has_alignment", "gates", "latent", "stage1"]
    files = ["src/explainrec/cli.py", "src/explainrec/methods/base.py", "src/explainrec/bench"]
    found = subprocess.run(["git", "grep", "-n", "-i", "-w", *[x for w in specific for x in ("-e", w)], "--", *files],
                           cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    # the demo (a GaVaMoE demo by design) and the human rating study (the paper's Table 4) are named by what they are
    allowed = ("def demo(", "--steps", "Train a small GaVaMoE", "rate_app = typer.Typer(")
    assert [line for line in found if not any(a in line for a in allowed)] == []
