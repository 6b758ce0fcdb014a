"""kill -9 in the middle of a real training process, then --resume: the result equals an uninterrupted run exactly
(weights and loss log), because every checkpoint is atomic and holds the RNG, data-order and optimizer state."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

DATA = "synthetic:users=30,items=25,types=2"
CMD = [sys.executable, "-m", "explainrec.cli", "train", "gavamoe", "--data", DATA, "--config", "tiny",
       "max_steps=30", "checkpoint_every=1", "log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _step(run) -> int:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def _train_rows(run) -> list[dict]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r.get("kind") != "valid"]


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    full = subprocess.run(CMD + ["--out", str(tmp_path / "full")], env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(CMD + ["--out", str(cut)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _step(cut) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _step(cut)
    assert 8 <= killed_at < 30 and not (cut / "model").exists(), "the kill must land mid-run"

    resumed = subprocess.run(CMD + ["--out", str(cut), "--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {cut / 'checkpoint'}" in resumed.stdout
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(cut / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _train_rows(cut) == _train_rows(tmp_path / "full")
    assert not list(cut.glob(".*.tmp")) and not list(cut.glob(".*.old"))
