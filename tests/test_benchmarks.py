"""Every file in benchmarks/ runs on its smallest setting (benchmarks/run_all.py's QUICK list), so a refactor that
breaks a benchmark fails the suite instead of the next person who runs it; and a test module's name is unique
(pytest stops the whole suite at collection when two share one)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def _run_all():
    spec = importlib.util.spec_from_file_location("benchmarks_run_all", BENCHMARKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN_ALL = _run_all()


def test_every_benchmark_file_has_a_quick_command():
    files = {p.name for p in BENCHMARKS.glob("bench_*.py")}
    quick = {cmd[0] for cmd in RUN_ALL.QUICK}
    assert files - quick == set(), "benchmarks without a quick command in benchmarks/run_all.py QUICK"
    assert quick - files == set(), "QUICK names files that do not exist"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return RUN_ALL.tiny_run(tmp_path_factory.mktemp("bench-run"))


@pytest.mark.parametrize("cmd", RUN_ALL.QUICK, ids=[c[0] for c in RUN_ALL.QUICK])
def test_the_benchmark_runs_on_its_smallest_setting(cmd, request, tmp_path):
    run = str(request.getfixturevalue("tiny_run")) if RUN_ALL.RUN in cmd else None
    args = [run if part == RUN_ALL.RUN else part for part in cmd]
    done = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{args[0]} printed nothing"


def test_test_module_names_are_unique():
    names = Counter(p.name for p in (REPO / "tests").rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
