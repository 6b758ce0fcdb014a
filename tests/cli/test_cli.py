"""The `explainrec` command line on the tiny model: every command runs and writes what it says."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from explainrec.cli import app

runner = CliRunner()
DATA = "synthetic:users=30,items=25,types=2"


def _ok(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_help_explains_every_command():
    out = _ok("--help")
    for cmd in ("train", "explain", "evaluate", "compare", "methods", "demo", "bench", "data"):
        assert cmd in out
    assert "--trust-pickle" in _ok("explain", "--help")


def test_methods_lists_the_registry_and_one_methods_settings():
    out = _ok("methods")
    for name in ("zero-shot", "gavamoe", "xrec", "vae-gmm", "lightgcn"):
        assert f"\n{name} " in "\n" + out
    detail = _ok("methods", "gavamoe")
    assert "presets (--config NAME): cpu, paper, tiny" in detail and "stage1.beta" in detail
    assert "moe.top_k" in _ok("train", "gavamoe", "--help")


def test_data_stats():
    out = _ok("data", "stats", "--data", "synthetic:users=50,items=40")
    assert "users" in out and "density" in out and "50" in out
    stats = json.loads(_ok("data", "stats", "--data", "synthetic:users=50,items=40", "--json"))
    assert stats["users"] == 50


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
    assert f"wrote {tmp_path / 'eval' / 'metrics.json'}" in out


def test_train_gavamoe_then_explain_a_split_and_one_pair(tmp_path):
    run = tmp_path / "g"
    _ok("train", "gavamoe", "--data", DATA, "--out", run, "--config", "tiny", "max_steps=2")
    assert (run / "stage1" / "latent.png").exists() and (run / "model" / "explainrec.json").exists()
    _ok("explain", "--model", run, "--data", DATA, "--split", "validation", "--limit", "3", "--max-new-tokens", "4",
        "--out", tmp_path / "p.jsonl")
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3
    one = json.loads(_ok("explain", "--model", run, "--user", "u0", "--item", "nobody", "--max-new-tokens", "4"))
    assert {"prediction", "cluster", "top_experts"} <= set(one) and one["cold_start"] is True
    assert "cold-start path" in one["note"]


def test_one_pair_uses_the_training_prompt(tmp_path):
    """With --data, one pair gets the title and profiles it was trained with, so it matches the split's output."""
    from explainrec.data import load_dataset

    run = tmp_path / "x"
    _ok("train", "xrec", "--data", DATA, "--out", run, "--config", "tiny")
    ds = load_dataset(DATA)
    ex = ds.split_examples("test")[0]
    user, item = ds.users.decode(ex.user), ds.items.decode(ex.item)
    _ok("explain", "--model", run, "--data", DATA, "--limit", "1", "--max-new-tokens", "6", "--batch-size", "1",
        "--out", tmp_path / "p.jsonl")
    split_row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    one = json.loads(_ok("explain", "--model", run, "--data", DATA, "--user", user, "--item", item,
                         "--max-new-tokens", "6"))
    assert one["prediction"] == split_row["prediction"] and one["prompt_from"].startswith("dataset (the pair's own")
    blank = json.loads(_ok("explain", "--model", run, "--user", user, "--item", item, "--max-new-tokens", "6"))
    assert blank["prompt_from"] == "command line"
    pair = tmp_path / "pair.json"
    pair.write_text(json.dumps({"user": user, "item": item, "title": ex.title, "features": list(ex.features),
                                "user_profile": ex.user_profile, "item_profile": ex.item_profile}))
    from_file = json.loads(_ok("explain", "--model", run, "--pair-file", pair, "--max-new-tokens", "6"))
    assert from_file["prediction"] == split_row["prediction"]  # the same text given by hand: the same prompt


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
    assert "2 stage-2 steps" in out  # bounded by steps: all of them run, however busy the machine
    again = _ok("demo", "--model", "tiny", "--n", "4", "--steps", "2", "--out", tmp_path / "demo")
    assert "reused the finished run(s) zero-shot, gavamoe" in again and header in again


def test_tune_decoding_then_explain_with_it(tmp_path):
    record_path = tmp_path / "decoding.json"
    out = _ok("tune-decoding", "tiny", "--method", "zero-shot", "--data", DATA, "--limit", "3", "--no-bertscore",
              "--max-new-tokens", "5", "--out", record_path)
    record = json.loads(record_path.read_text())
    assert "chosen on 3 validation pairs" in out and record["split"] == "valid"
    assert [t["settings"] for t in record["tried"]][0] == {}  # greedy is always a candidate
    preds = tmp_path / "p.jsonl"
    _ok("explain", "--method", "zero-shot", "--model", "tiny", "--data", DATA, "--limit", "2", "--out", preds,
        "--decoding", record_path)
    assert len(preds.read_text().splitlines()) == 2


def test_evaluate_writes_pair_retrieval_with_its_chance_levels(tmp_path, monkeypatch):
    import torch

    from explainrec.metrics import specificity

    class Letters:  # a fake sentence encoder: letter counts
        def encode(self, texts):
            return torch.tensor([[float(t.count(c)) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts])

    monkeypatch.setattr(specificity, "load_sentence_encoder", lambda *a, **kw: (Letters(), None))
    refs = ["good pizza", "quiet rooms", "slow service", "lovely view"]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"prediction": r, "reference": r}) + "\n" for r in refs))
    out = _ok("evaluate", preds, "--no-bertscore", "--out", tmp_path / "on")
    saved = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert saved["metrics"]["ret_r1"] == saved["metrics"]["ret_mrr"] == 100.0 and "ret_r10" in saved["metrics"]
    assert saved["chance"]["ret_r1"] == 25.0 and saved["config"]["specificity"]["candidates"] == 4
    assert "| Ret-R@1 (chance 25.00) | 100.00 |" in out and "Ret-MRR (chance 52.08)" in out
    _ok("evaluate", preds, "--no-bertscore", "--no-specificity", "--out", tmp_path / "off")
    saved = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert "ret_mrr" not in saved["metrics"] and saved["config"]["specificity"] == "disabled"
    assert "--no-specificity" in _ok("evaluate", "--help") and "--no-specificity" in _ok("compare", "--help")
