"""`explainrec explain --pairs FILE` from the command line: a bad record stops it before the model loads, with one
line naming the file, line and field; with --data the pairs get their dataset's text, so a stream of a split's
pairs is explained exactly as the split is; a trained run explains a stream of top-k lists."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from explainrec.cli import app
from explainrec.data import load_dataset

DATA = "synthetic:users=30,items=25,types=2"
TINY = ("explain", "--method", "zero-shot", "--model", "tiny", "--precision", "fp32", "--max-new-tokens", "12",
        "--chunk-size", "3", "--batch-size", "2")
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("bad, expected", [
    ('{"user": "u1", "item": "i1", "rating": "five"}', "pairs.jsonl:3 field 'rating': must be a number"),
    ('{"user": "u1", "item": "i1"', "pairs.jsonl:3: broken JSON line"),
    ('{"user": "u1", "items": "i1 i2"}', "pairs.jsonl:3 field 'items': must be a non-empty list"),
])
def test_a_bad_record_stops_explain_before_the_model_loads(tmp_path, monkeypatch, bad, expected):
    import explainrec.cli as cli

    def no_model(*_):
        raise AssertionError("the model was loaded before the pairs were checked")

    monkeypatch.setattr(cli, "_open_explainer", no_model)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"user": "u0", "item": "i0"}\n\n' + bad + "\n")
    result = _run(*TINY, "--pairs", pairs, "--out", tmp_path / "out.jsonl")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and expected in errors[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_a_stream_of_a_splits_pairs_with_its_data_is_explained_as_the_split_is(tmp_path):
    split = tmp_path / "split.jsonl"
    assert _run(*TINY, "--data", DATA, "--split", "test", "--limit", "7", "--out", split).exit_code == 0
    dataset = load_dataset(DATA)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"user": r["user"], "item": r["item"]}) + "\n" for r in _rows(split)))
    streamed = tmp_path / "streamed.jsonl"
    result = _run(*TINY, "--data", DATA, "--pairs", pairs, "--out", streamed)
    assert result.exit_code == 0, result.output
    assert "[explain] 7 of 7 pairs (100.0%) by 1 process" in result.output
    want = {k: [r[k] for r in _rows(split)] for k in ("user", "item", "prediction", "reference")}
    got = {k: [r.get(k) for r in _rows(streamed)] for k in want}
    assert got == want  # the same prompts (title, profiles from the data), so the same greedy texts
    assert got["reference"][0] == dataset.pair(got["user"][0], got["item"][0])[0].explanation


def test_a_trained_run_explains_top_k_lists_and_a_second_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "g"
    trained = _run("train", "gavamoe", "--data", DATA, "--config", "tiny", "--out", run)
    assert trained.exit_code == 0, trained.output
    pairs = tmp_path / "topk.parquet"
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"user": "u1", "items": ["i2", "i3", "i4"]},
                                         {"user": "stranger", "items": ["i1", "nothing"]}]), pairs)
    out = run / "topk.jsonl"
    result = _run("explain", "--model", run, "--pairs", pairs, "--out", out, "--max-new-tokens", "6",
                  "--chunk-size", "2", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert [(r["user"], r["item"], r["rank"]) for r in rows] == [
        ("u1", "i2", 1), ("u1", "i3", 2), ("u1", "i4", 3), ("stranger", "i1", 1), ("stranger", "nothing", 2)]
    assert [r["cold_start"] for r in rows] == [False, False, False, True, True]
    assert all(r["method"] == "gavamoe" and "cluster" in r for r in rows), rows[0]
    again = _run("explain", "--model", run, "--pairs", pairs, "--out", out, "--precision", "fp32")
    assert again.exit_code == 2 and "already exists" in again.output


def test_pairs_and_one_pair_together_are_refused(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"user": "u0", "item": "i0"}\n')
    result = _run(*TINY, "--pairs", pairs, "--user", "u1", "--item", "i1")
    assert result.exit_code == 2, result.output
    assert "--pairs explains a file of pairs, --user/--item/--pair-file one pair" in result.output
