"""Ctrl-C (SIGINT) and SIGTERM in the middle of a real training process: it finishes the step, writes a checkpoint
(atomic), says where and exits 130 / 143; `--resume` says from which step it continues and ends with the weights and
loss log of an uninterrupted run. The run checkpoints only every 1000 steps, so the checkpoint found after the stop
can only come from the signal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

DATA = "synthetic:users=30,items=25,types=2"
CMD = [sys.executable, "-m", "explainrec.cli", "train", "gavamoe", "--data", DATA, "--config", "tiny",
       "max_steps=30", "checkpoint_every=1000", "log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_rows(run) -> list[dict]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r.get("kind") != "valid"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    done = subprocess.run(CMD + ["--out", str(out)], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_training_writes_a_checkpoint_and_resume_equals_an_uninterrupted_run(full, tmp_path, sig, code):
    cut = tmp_path / "cut"
    proc = subprocess.Popen(CMD + ["--out", str(cut)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:  # the loop prints "[gavamoe] step N loss ..." after every step
        if line.startswith("[gavamoe] step ") and int(line.split()[2]) >= 8:
            proc.send_signal(sig)
            break
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err[-2000:]
    assert not (cut / "model").exists(), "the signal must land mid-run"
    step = json.loads((cut / "checkpoint" / "state.json").read_text())["step"]
    assert 8 <= step < 30
    last = [x for x in err.splitlines() if x.startswith("error:")][-1]
    assert f"stopped by {sig.name}; the checkpoint {cut / 'checkpoint'} (step {step}) is kept" in last, err
    assert "--resume" in last and "Traceback" not in err
    assert not list(cut.glob(".*.tmp")) and not list(cut.glob(".*.old"))

    resumed = subprocess.run(CMD + ["--out", str(cut), "--resume"], env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {cut / 'checkpoint'}: continuing after step {step}" in resumed.stdout
    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(cut / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _train_rows(cut) == _train_rows(full)
