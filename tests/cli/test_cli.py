"""The `explainrec` command line on the tiny model: every command runs, writes what it says, and bad input exits 2."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from explainrec.cli import app

runner = CliRunner()


def _ok(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_help_explains_every_command():
    out = _ok("--help")
    for cmd in ("explain", "evaluate", "demo", "data", "gavamoe", "xrec"):
        assert cmd in out
    assert "--trust-pickle" in _ok("explain", "--help")


def test_data_stats():
    out = _ok("data", "stats", "--data", "synthetic:users=50,items=40")
    assert "users" in out and "density" in out and "50" in out
    stats = json.loads(_ok("data", "stats", "--data", "synthetic:users=50,items=40", "--json"))
    assert stats["users"] == 50


def test_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"user": 1, "item": 2}\n{broken\n')
    result = runner.invoke(app, ["data", "stats", "--data", str(bad)])
    assert result.exit_code == 2
    assert "x.jsonl:2" in result.output and "Traceback" not in result.output


def test_zero_shot_explain_then_evaluate(tmp_path):
    preds = tmp_path / "preds.jsonl"
    out = _ok("explain", "--method", "zero-shot", "--model", "tiny", "--data", "synthetic:users=40,items=30",
              "--limit", "6", "--max-new-tokens", "6", "--out", preds)
    assert "explanations=6" in out and "explanations_per_s=" in out and "nan" not in out
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 6 and all({"prediction", "reference", "bucket"} <= set(r) for r in rows)
    out = _ok("evaluate", preds, "--no-bertscore", "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "bleu4" in metrics["metrics"] and "ROUGE" in out.upper()


def test_gavamoe_fit_train_explain(tmp_path):
    data = "synthetic:users=30,items=25,types=2"
    run = tmp_path / "g"
    _ok("gavamoe", "fit-clusters", "--data", data, "--clusters", "2", "--out", run / "stage1", "--epochs", "2",
        "--pretrain-epochs", "1", "--batch-size", "512", "--plot", "pca", "--embed-dim", "16", "--latent-dim", "8")
    assert (run / "stage1" / "latent_space.png").exists() or any((run / "stage1").glob("*.png"))
    _ok("gavamoe", "train", "--data", data, "--clusters", "2", "--out", run, "--model", "tiny", "--max-steps", "2",
        "--experts", "4", "--top-k", "2", "--granularity", "2", "--batch-size", "4")
    _ok("explain", "--model", run, "--data", data, "--limit", "3", "--max-new-tokens", "4", "--out", tmp_path / "p.jsonl")
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3
    one = json.loads(_ok("explain", "--model", run, "--user", "u0", "--item", "nobody", "--max-new-tokens", "4"))
    assert {"prediction", "cluster", "top_experts"} <= set(one) and one["cold_start"] is True


def test_xrec_train_explain(tmp_path):
    data = "synthetic:users=30,items=25,types=2"
    _ok("xrec", "train", "--data", data, "--out", tmp_path / "x", "--model", "tiny", "--max-steps", "2",
        "--gcn-epochs", "1", "--gcn-dim", "16", "--batch-size", "4")
    _ok("explain", "--model", tmp_path / "x", "--data", data, "--limit", "2", "--max-new-tokens", "4",
        "--out", tmp_path / "p.jsonl")
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2


def test_demo_warns_when_the_clock_cut_training_short():
    from explainrec.demo import clock_cut_note

    assert clock_cut_note(12, 12, 3.0) is None
    note = clock_cut_note(5, 12, 3.0)
    assert "after 5 of 12 steps" in note and "--minutes 10 --fresh" in note


@pytest.mark.embedded
def test_demo_compares_gavamoe_with_zero_shot(tmp_path):
    out = _ok("demo", "--model", "tiny", "--n", "4", "--steps", "2", "--out", tmp_path / "demo")
    table = (tmp_path / "demo" / "comparison.md").read_text()
    header = "| Metric | zero-shot | GaVaMoE | Better |"
    assert header in table and header in out
    for label in ("BLEU-4", "ROUGE-L", "BERTScore F1"):  # each row holds a value for both methods
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        assert row.count("|") == 5 and "–" not in row
    for method in ("zero-shot", "gavamoe"):
        assert (tmp_path / "demo" / method / "metrics.json").exists()
    throughput = out.split("[demo] generation")[1].split("[demo] examples")[0]
    assert throughput.count("explanations/s") == 2 and "nan" not in throughput and "x zero-shot" in throughput
    assert "stage-2 steps" in out and "cluster" in out and "top experts [" in out
    again = _ok("demo", "--model", "tiny", "--n", "4", "--steps", "2", "--out", tmp_path / "demo")
    assert "reused the finished run(s) zero-shot, gavamoe" in again and header in again
