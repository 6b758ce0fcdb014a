"""`explain --pairs` under `accelerate launch --num_processes 2` on the CPU (gloo, with
configs/accelerate/data-parallel.yaml): the two processes write exactly the file one process writes, each generating its own share; a process killed
mid-run and the launch restarted with --resume give that file again, with no pair generated twice."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from live_server import free_port

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ACCELERATE = Path(sys.executable).with_name("accelerate")
CHUNK = 2


def _explain(pairs: Path, out: Path, *more: str) -> list[str]:
    return ["-m", "explainrec.cli", "explain", "--method", "zero-shot", "--model", "tiny", "--pairs", str(pairs),
            "--out", str(out), "--chunk-size", str(CHUNK), "--batch-size", "1", "--precision", "fp32",
            "--max-new-tokens", "40", *more]


def _launch(pairs: Path, out: Path, *more: str) -> list[str]:
    return [str(ACCELERATE), "launch", "--config_file", str(ROOT / "configs/accelerate/data-parallel.yaml"),
            "--num_processes", "2", "--main_process_port", str(free_port()), *_explain(pairs, out, *more)]


def _explained(stdout: str) -> list[int]:
    """What each process generated (one `explanations=N` line per process)."""
    return [int(n) for n in re.findall(r"explanations=(\d+) ", stdout)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    lines = []
    for u in range(12):
        lines.append({"user": f"u{u}", "item": f"i{u}", "title": f"Shop {u}", "user_profile": f"Likes {u % 3}"})
        lines.append({"user": f"u{u}", "items": [f"i{u + 1}", f"i{u + 5}"], "scores": [0.8, 0.3]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path  # 36 pairs: 18 chunks


@pytest.fixture(scope="module")
def one_process(pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "preds.jsonl"
    done = subprocess.run([sys.executable, *_explain(pairs, out)], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _explained(done.stdout) == [36]
    return out


def test_two_processes_write_exactly_what_one_process_writes_each_explaining_its_share(pairs, one_process, tmp_path):
    out = tmp_path / "preds.jsonl"
    done = subprocess.run(_launch(pairs, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shares = _explained(done.stdout)
    assert sorted(shares) == [18, 18], done.stdout  # 9 chunks each: neither process explained the other's pairs
    assert "by 2 processes" in done.stdout and "process 1 of 2: its chunks are written" in done.stdout
    assert out.read_bytes() == one_process.read_bytes()
    assert not out.with_name(out.name + ".parts").exists()


def _children(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                kids = []
            found += kids
            todo += kids
    return found


def _process_of_rank(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


def _chunks(out: Path) -> int:
    return len(list(out.with_name(out.name + ".parts").glob("chunk-*.jsonl")))


def test_a_killed_process_then_the_launch_resumed_gives_the_same_file_with_no_pair_twice(pairs, one_process, tmp_path):
    out = tmp_path / "preds.jsonl"
    launcher = subprocess.Popen(_launch(pairs, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while _chunks(out) < 3 and launcher.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        victim = _process_of_rank(launcher.pid, 1)
        assert victim is not None, "the launched process of rank 1 was not found"
        os.kill(victim, signal.SIGKILL)
        _, err = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0 and not out.exists(), "the kill must land before the last chunk"
    kept = sorted(int(p.stem.split("-")[1]) for p in out.with_name(out.name + ".parts").glob("chunk-*.jsonl"))
    assert 3 <= len(kept) < 18
    resumed = subprocess.run(_launch(pairs, out, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out}: {len(kept)} of 18 chunks" in resumed.stdout
    assert sum(_explained(resumed.stdout)) == 36 - CHUNK * len(kept)  # only the missing chunks were generated
    assert out.read_bytes() == one_process.read_bytes()
