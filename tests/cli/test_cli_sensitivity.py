"""`explainrec sensitivity` on the tiny model: writes sensitivity.json and .md, reuses RUN/predictions.jsonl when it
matches, and refuses what it cannot use with a message naming the option."""
from __future__ import annotations

import json
import zlib

import pytest
import torch
from typer.testing import CliRunner

from explainrec.cli import app

runner = CliRunner()
DATA = "synthetic:users=30,items=25,types=2"


class BagOfWords:
    """Stands in for the MiniLM SentenceEncoder (its loading is tested with the embedded marker elsewhere)."""

    description = "bag of words (test)"

    def __init__(self, *_, **__):
        pass

    def encode(self, texts):
        out = torch.zeros(len(texts), 64)
        for k, text in enumerate(texts):
            for word in text.lower().split():
                out[k, zlib.crc32(word.encode()) % 64] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


@pytest.fixture(autouse=True)
def no_minilm(monkeypatch):
    monkeypatch.setattr("explainrec.metrics.embedding.SentenceEncoder", BagOfWords)


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _ok(*args):
    result = _run(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_sensitivity_of_a_run_folder_writes_both_files_and_reuses_its_predictions(tmp_path):
    run = tmp_path / "zs"
    _ok("train", "zero-shot", "--data", DATA, "--out", run, "model=tiny")
    _ok("explain", "--model", run, "--data", DATA, "--max-new-tokens", "5", "--precision", "fp32",
        "--out", tmp_path / "p.jsonl")
    (tmp_path / "p.jsonl").rename(run / "predictions.jsonl")  # where a bench run keeps its predictions
    out = _ok("sensitivity", run, "--data", DATA, "--n", "5", "--max-new-tokens", "5", "--precision", "fp32")
    result = json.loads((run / "sensitivity.json").read_text())
    md = (run / "sensitivity.md").read_text()
    assert result["n"] == 5 and len(result["swaps"]) == 5 and result["method"] == "zero-shot"
    assert result["originals"]["source"] == "given rows" and result["originals"]["reused"] == 5
    assert set(result["means"]) >= {"changed", "change", "toward_profile", "toward_reference", "away_from_own"}
    assert md in out and "| change |" in md and f"wrote {run / 'sensitivity.json'}" in out

    # another split: the run's test predictions are not reused
    other = tmp_path / "valid"
    _ok("sensitivity", run, "--data", DATA, "--split", "valid", "--n", "3", "--max-new-tokens", "5",
        "--precision", "fp32", "--out", other)
    result = json.loads((other / "sensitivity.json").read_text())
    assert result["originals"]["reused"] == 0 and result["settings"]["split"] == "valid"


def test_sensitivity_of_an_untrained_method_needs_out(tmp_path):
    _ok("sensitivity", "--method", "zero-shot", "tiny", "--data", DATA, "--n", "3", "--max-new-tokens", "4",
        "--out", tmp_path / "s")
    assert (tmp_path / "s" / "sensitivity.json").exists() and (tmp_path / "s" / "sensitivity.md").exists()
    result = _run("sensitivity", "--method", "zero-shot", "tiny", "--data", DATA)
    assert result.exit_code == 2 and "--method zero-shot: give --out FOLDER" in result.output


@pytest.mark.parametrize("args, expected", [
    (["{tmp}/missing", "--data", DATA], "RUN {tmp}/missing: no such folder (expected a run folder from "),
    (["{tmp}/file.txt", "--data", DATA], "RUN {tmp}/file.txt: is a file, not a folder"),
    (["--data", DATA], "sensitivity needs a run folder"),
    (["{tmp}", "--data", DATA, "--split", "tests"], "unknown split 'tests'"),
    (["{tmp}", "--data", DATA, "--precision", "int4"], "--precision 'int4': expected one of"),
    (["{tmp}", "--data", DATA, "--out", "{tmp}/file.txt"],
     "--out {tmp}/file.txt: is a file; this option takes a folder"),
])
def test_sensitivity_usage_errors(tmp_path, args, expected):
    (tmp_path / "file.txt").write_text("x")
    result = _run("sensitivity", *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert expected.format(tmp=tmp_path) in " ".join(result.output.split())


def test_sensitivity_of_a_folder_without_a_model_is_a_failure(tmp_path):
    result = _run("sensitivity", tmp_path, "--data", DATA)
    assert result.exit_code == 1 and f"{tmp_path}: not a run or model folder" in result.output
