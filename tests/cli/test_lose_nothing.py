"""Nothing already written is lost: each reproduction of issue 30, run as written, ends with one clear error line or
the right behaviour, and every file it did not create is left byte for byte as it was.

    --overwrite removes only what explainrec wrote (its ownership marker), never /, home, the current folder, a
    folder holding an input or the config file; one writer per folder (an OS lock naming the holder's pid, a dead
    holder's lock taken over); --resume refuses other data; outputs never replace an input or an existing result
    without --overwrite (predictions beside a run's model are fine); everything training would reject is refused
    before any work; a stopped explain keeps its chunks and --resume completes it exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from explainrec.cli import app
from explainrec.folders import LOCK, MARKER, read_owner

DATA = "synthetic:users=30,items=25,types=2"
TRAIN = ("train", "gavamoe", "--data", DATA, "--config", "tiny")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _error(result, code: int, expected: str) -> str:
    text = result.output
    assert result.exit_code == code, f"exit {result.exit_code} != {code}: {text}"
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], text
    return errors[0]


def digest(folder: Path) -> dict:
    """Every file and folder under ``folder`` (hidden ones too) with its bytes' hash and its mode."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny GaVaMoE run (train_run marks it as explainrec's)."""
    root = tmp_path_factory.mktemp("trained")
    result = _run(*TRAIN, "--out", root / "g")
    assert result.exit_code == 0, result.output
    return root / "g"


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


# ---------------------------------------------------------------------------------------------------- 1, 2: overwrite


def test_overwrite_refuses_a_folder_with_files_explainrec_did_not_write(tmp_path):
    """Reproduction 1: `touch p/config.yaml` next to the user's notes made --overwrite delete the whole folder."""
    p = tmp_path / "p"
    p.mkdir()
    (p / "notes.txt").write_text("notes\n")
    (p / "config.yaml").touch()
    before = digest(tmp_path)
    _error(_run(*TRAIN, "--out", p, "--overwrite"), 2, "holds files explainrec did not write (notes.txt)")
    assert digest(tmp_path) == before  # not even a marker or a lock file left behind


def test_overwrite_removes_only_what_explainrec_wrote_and_refuses_beside_other_files(trained, tmp_path):
    run = _copy(trained, tmp_path / "g")
    owner = read_owner(run)
    assert owner["kind"] == "run" and {"model", "checkpoint", "config.yaml", "stage1"} <= set(owner["entries"])
    (run / "notes.txt").write_text("my notes on this run\n")
    before = digest(tmp_path)
    _error(_run(*TRAIN, "--out", run, "--overwrite"), 2, "did not write (notes.txt); nothing was removed")
    assert digest(tmp_path) == before
    (run / "notes.txt").unlink()
    result = _run(*TRAIN, "--out", run, "--overwrite", "max_steps=2")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2  # replaced by the new run
    assert set(read_owner(run)["entries"]) >= {"model", "checkpoint", "config.yaml", "stage1"}


@pytest.mark.parametrize("out", ["", ".", "/", "~", ".."], ids=["empty", "dot", "root", "home", "parent"])
def test_a_run_folder_is_never_the_current_root_or_home_folder(tmp_path, monkeypatch, out):
    """Reproductions 1 and 2: --out '' meant the current folder (a thesis deleted), --out / was accepted."""
    here = tmp_path / "work"
    (here / "data").mkdir(parents=True)
    (here / "thesis.txt").write_text("chapter 1\n")
    monkeypatch.chdir(here)
    if out == "~":
        monkeypatch.setenv("HOME", str(here))
    before = digest(tmp_path)
    _error(_run(*TRAIN, "--out", out, "--overwrite"), 2, "a run needs a folder of its own")
    assert digest(tmp_path) == before


def test_overwrite_never_removes_its_own_config_file(tmp_path):
    p2 = tmp_path / "p2"
    p2.mkdir()
    (p2 / "my.yaml").write_text("max_steps: 2\n")
    before = digest(tmp_path)
    _error(_run("train", "gavamoe", "--data", DATA, "--config", p2 / "my.yaml", "--out", p2, "--overwrite"), 2,
           f"would hold or replace the input {p2 / 'my.yaml'}")
    assert digest(tmp_path) == before


def test_a_run_folder_never_holds_its_data_nor_sits_inside_a_data_folder(tmp_path):
    """The train --out input check (a mutation that removed it went unnoticed)."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "data.jsonl").write_text("".join(json.dumps({"user": f"u{i % 5}", "item": f"i{i % 7}", "split": s,
                                                      "explanation": "Nice."}) + "\n"
                                          for i, s in enumerate(["train"] * 20 + ["valid"] * 5 + ["test"] * 5)))
    before = digest(tmp_path)
    _error(_run("train", "vae-gmm", "--data", d / "data.jsonl", "--out", d), 2, "would hold or replace the input")
    _error(_run("train", "vae-gmm", "--data", d, "--out", d / "run"), 2, "is inside the input folder")
    assert digest(tmp_path) == before


def test_an_interrupted_run_is_not_replaced_without_overwrite(trained, tmp_path):
    """A run stopped before its model (config.yaml, stage1/, checkpoint/) is as protected as a finished one."""
    run = _copy(trained, tmp_path / "g")
    shutil.rmtree(run / "model")
    (run / "train_summary.json").unlink()
    before = digest(tmp_path)
    _error(_run(*TRAIN, "--out", run), 2, "already holds a run (config.yaml, checkpoint)")
    assert digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------------- 3, 9, 11: outputs


def test_tune_decoding_never_replaces_its_data(trained, tmp_path):
    """Reproduction 3: --data victim.csv --out victim.csv replaced the dataset with decoding.json, exit 0."""
    victim = tmp_path / "victim.csv"
    victim.write_text("user,item,explanation,split\nu1,i1,Nice.,valid\n")
    before = digest(tmp_path)
    _error(_run("tune-decoding", trained, "--data", victim, "--out", victim, "--overwrite"), 2,
           f"would overwrite the input {victim}")
    assert digest(tmp_path) == before


def test_predictions_go_beside_a_runs_model_never_into_it(trained, tmp_path):
    """Reproduction 11: the README's `explain --model runs/g --out runs/g/preds.jsonl` was refused while real
    hazards passed; now it works (and is recorded as the run's), and the run's own files stay out of reach."""
    run = _copy(trained, tmp_path / "g")
    model_before = digest(run / "model")
    result = _run("explain", "--model", run, "--data", DATA, "--split", "test", "--limit", "3", "--max-new-tokens",
                  "4", "--out", run / "preds.jsonl")
    assert result.exit_code == 0, result.output
    assert len((run / "preds.jsonl").read_text().splitlines()) == 3
    assert "preds.jsonl" in read_owner(run)["entries"] and digest(run / "model") == model_before
    before = digest(tmp_path)
    for target, expected in ((run / "model" / "p.jsonl", "would write into the run"),
                             (run / "config.yaml", "would write into the run"),
                             (run / "stage1" / "p.jsonl", "would write into the run"),
                             (run / "preds.jsonl", "already exists")):
        _error(_run("explain", "--model", run, "--data", DATA, "--out", target), 2, expected)
    _error(_run("explain", "--model", run / "model", "--data", DATA, "--out", run / "model" / "p.jsonl"), 2,
           "is inside the input folder")
    assert digest(tmp_path) == before


def test_explain_without_out_keeps_an_existing_file_and_overwrite_keeps_its_mode(tmp_path, monkeypatch):
    """Reproduction 9: `explain` without --out replaced ./preds.jsonl (and made it 600)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "preds.jsonl").write_text("earlier results\n")
    (tmp_path / "preds.jsonl").chmod(0o640)
    before = digest(tmp_path)
    args = ("explain", "--method", "zero-shot", "--model", "tiny", "--data", DATA, "--limit", "2",
            "--max-new-tokens", "3", "--precision", "fp32")
    _error(_run(*args), 2, "preds.jsonl: already exists")
    assert digest(tmp_path) == before
    assert _run(*args, "--overwrite").exit_code == 0
    assert stat.S_IMODE((tmp_path / "preds.jsonl").stat().st_mode) == 0o640
    assert (tmp_path / "preds.jsonl").read_text() != "earlier results\n"


def test_evaluate_never_replaces_its_input_nor_an_earlier_evaluation(tmp_path):
    """Reproduction 9: `evaluate ev2/metrics.json` overwrote its own input; a second evaluate replaced the first."""
    ev = tmp_path / "ev2"
    ev.mkdir()
    rows = [{"user": f"u{i}", "item": f"i{i}", "prediction": "a good pick", "reference": "a good pick for you"}
            for i in range(3)]
    (ev / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = digest(tmp_path)
    _error(_run("evaluate", ev / "metrics.json", "--no-bertscore", "--no-specificity"), 2,
           f"would overwrite the input {ev / 'metrics.json'}")
    assert digest(tmp_path) == before
    (ev / "preds.jsonl").write_text((ev / "metrics.json").read_text())
    assert _run("evaluate", ev / "preds.jsonl", "--no-bertscore", "--no-specificity", "--out", tmp_path / "e").exit_code == 0
    first = digest(tmp_path / "e")
    _error(_run("evaluate", ev / "preds.jsonl", "--no-bertscore", "--no-specificity", "--out", tmp_path / "e"), 2,
           "metrics.json there already exists")
    assert digest(tmp_path / "e") == first


def test_pair_file_fields_are_type_checked(trained, tmp_path):
    """`features: "collar"` became the features c, o, l, l, a, r."""
    pair = tmp_path / "pair.json"
    pair.write_text(json.dumps({"user": "u1", "item": "i1", "features": "collar"}))
    _error(_run("explain", "--model", trained, "--pair-file", pair), 2, "field 'features' must be a list of words")
    pair.write_text(json.dumps({"user": "u1", "item": "i1", "rating": "five"}))
    _error(_run("explain", "--model", trained, "--pair-file", pair), 2, "field 'rating' must be a number")


# ---------------------------------------------------------------------------------------------------- 4: demo


@pytest.mark.parametrize("fresh", [False, True], ids=["reuse", "fresh"])
def test_demo_never_adopts_nor_deletes_a_run_it_did_not_make(trained, tmp_path, fresh):
    """Reproduction 4: the demo took a run made by `explainrec train` in OUT/gavamoe as its own result, and
    --fresh deleted it."""
    _copy(trained, tmp_path / "myruns" / "gavamoe")
    before = digest(tmp_path)
    args = ("demo", "--model", "tiny", "--n", "2", "--steps", "1", "--no-bertscore", "--out", tmp_path / "myruns")
    _error(_run(*args, *(["--fresh"] if fresh else [])), 2, "not a run of the bench or the demo")
    assert digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------------- 6: one writer


def _hold_lock(folder: Path, command: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from explainrec.folders import writer_lock\n"
                             "with writer_lock(sys.argv[1], command=sys.argv[2]):\n"
                             "    print('held', flush=True); time.sleep(120)", str(folder), command],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(trained, tmp_path):
    """Reproduction 6: two `train --out cc`, or --resume while the run trains, mixed two runs in one folder."""
    run = _copy(trained, tmp_path / "g")
    holder = _hold_lock(run, "explainrec train gavamoe --out g")
    try:
        before = digest(tmp_path)
        for args in ((*TRAIN, "--out", run, "--resume", "max_steps=40"), (*TRAIN, "--out", run, "--overwrite")):
            _error(_run(*args), 1, f"pid {holder.pid} (`explainrec train gavamoe --out g`")
        # explain of a run still training says so, instead of advising a second writer (--resume)
        shutil.rmtree(run / "model")
        _error(_run("explain", "--model", run, "--user", "u1", "--item", "i1"), 1,
               f"is still being trained (pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert {k: v for k, v in digest(tmp_path).items() if not k.startswith("g/model")} == \
        {k: v for k, v in before.items() if not k.startswith("g/model")}
    # the holder died holding the lock: the next writer takes it over and says so
    dead = json.loads('{"pid": %d, "command": "explainrec train gavamoe --out g", "since": 0}' % holder.pid)
    (run / LOCK).write_text(json.dumps(dead))
    done = subprocess.run([sys.executable, "-m", "explainrec.cli", *TRAIN, "--out", str(run), "--resume"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"took over the lock left by pid {holder.pid}" in done.stderr and (run / "model").is_dir()
    assert (run / LOCK).read_text() == ""  # released on exit


# ---------------------------------------------------------------------------------------------------- 7: other data


def test_resume_refuses_a_run_started_on_other_data(trained, tmp_path):
    """Reproduction 7: --resume on `--data D,seed=7` (the same ids, other content) continued silently."""
    run = _copy(trained, tmp_path / "g")
    before = digest(tmp_path)
    _error(_run("train", "gavamoe", "--data", DATA + ",seed=7", "--config", "tiny", "--out", run, "--resume"), 2,
           "--resume on other data")
    assert digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------------- 10: checks first


NO_EXPLANATIONS = "\n".join(json.dumps({"user": f"u{i % 5}", "item": f"i{i % 7}", "split": s})
                            for i, s in enumerate(["train"] * 20 + ["valid"] * 5 + ["test"] * 5)) + "\n"


@pytest.mark.parametrize("args, expected", [
    (("--data", "{noexp}"), "no explained pairs in split 'train'"),
    (("--data", DATA, "trainable=,"), "trainable: name at least one parameter group"),
    (("--data", DATA, f"seed={2**70}"), "seed: must be <= 4294967295"),
    (("--data", DATA, "clusters=500"), "cannot fill 500 clusters"),
    (("--data", DATA, "model=./no-such-llm"), "no such model folder"),
], ids=["no explanations", "nothing trainable", "seed too large", "too many clusters", "no such LLM"])
def test_what_training_would_reject_is_refused_before_any_work(tmp_path, args, expected):
    """Reproduction 10: these failed only after stage 1 had trained, and the half-made folder then blocked the
    corrected rerun ("already holds a run")."""
    (tmp_path / "noexp.jsonl").write_text(NO_EXPLANATIONS)
    before = digest(tmp_path)
    out = tmp_path / "new"
    _error(_run("train", "gavamoe", "--config", "tiny", "--out", out,
                *[a.format(noexp=tmp_path / "noexp.jsonl") for a in args]), 2 if "noexp" not in args[1] else 1,
           expected)
    assert digest(tmp_path) == before and not out.exists()


def test_a_start_that_fails_before_training_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failure nobody could check for (here: stage 1 crashes) before any checkpoint: the folder is removed, so
    the rerun needs neither --resume nor --overwrite."""
    import explainrec.methods.gavamoe.stage1_train as stage1_train

    real = stage1_train.train_vae_gmm

    def crash(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(stage1_train, "train_vae_gmm", crash)
    _error(_run(*TRAIN, "--out", tmp_path / "new"), 1, "Input/output error")
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(stage1_train, "train_vae_gmm", real)
    assert _run(*TRAIN, "--out", tmp_path / "new", "max_steps=2").exit_code == 0


# ---------------------------------------------------------------------------------------------------- 5: explain stops


EXPLAIN = [sys.executable, "-m", "explainrec.cli", "explain", "--method", "zero-shot", "--model", "tiny", "--data",
           DATA, "--chunk-size", "2", "--batch-size", "2", "--precision", "fp32", "--max-new-tokens", "40"]


def _chunks(out: Path) -> int:
    return len(list(out.with_name(out.name + ".parts").glob("chunk-*.jsonl")))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "full.jsonl"
    done = subprocess.run(EXPLAIN + ["--out", str(out)], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_stopped_explain_resumes_with_no_pair_missing_or_twice(uninterrupted, tmp_path, sig):
    """Reproduction 5: Ctrl-C of `explain` over a split wrote nothing and left nothing to resume. Now every finished
    chunk is kept (atomically) and --resume writes the file an uninterrupted run writes, byte for byte."""
    out = tmp_path / "cut.jsonl"
    proc = subprocess.Popen(EXPLAIN + ["--out", str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while _chunks(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert not out.exists(), "the stop must land before the last chunk"
    kept = _chunks(out)
    assert kept >= 2
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert f"chunks of {out} are kept in {out}.parts; continue with the same command and --resume" in err, err
    again = subprocess.run(EXPLAIN + ["--out", str(out)], env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr
    other = subprocess.run(EXPLAIN + ["--out", str(out), "--resume", "--max-new-tokens", "41"], env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "with other settings than it was started with" in other.stderr
    resumed = subprocess.run(EXPLAIN + ["--out", str(out), "--resume"], env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out}: {kept} of " in resumed.stdout
    total = len(uninterrupted.read_text().splitlines())
    assert f"explanations={total - 2 * kept} " in resumed.stdout  # only the missing chunks were generated
    assert out.read_bytes() == uninterrupted.read_bytes()
    assert not out.with_name(out.name + ".parts").exists()
