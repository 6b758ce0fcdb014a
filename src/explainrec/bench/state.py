"""What the bench knows about a run folder on disk and about the machine; read by the harness and the report."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from explainrec.bench.config import PlannedRun

LOG_FILE = "bench_log.jsonl"
ERROR_FILE = "error.txt"


def run_state(p: PlannedRun) -> str:
    """``done``, ``failed``, ``partial`` (started, or trained with other evaluation settings), ``todo``, or
    ``stale`` (its folder holds another training)."""
    spec_path = p.run_dir / "run.json"
    if spec_path.exists():
        try:
            saved = json.loads(spec_path.read_text())
        except json.JSONDecodeError:
            return "stale"
        if not p.spec.matches(saved):
            return "partial" if p.spec.trains_like(saved) else "stale"
    if (p.run_dir / "done.json").exists() and spec_path.exists():
        return "done"
    if (p.run_dir / ERROR_FILE).exists():
        return "failed"
    return "partial" if p.run_dir.exists() else "todo"


def is_finished(p: PlannedRun) -> bool:
    """Done, and scored by the current evaluation (a run scored by an older one is scored again from its texts,
    while the report keeps showing what it has)."""
    from explainrec.bench.runner import is_current

    if run_state(p) != "done":
        return False
    try:
        return is_current(json.loads((p.run_dir / "done.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return False


def fmt_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def machine_info() -> dict:
    """What the timings were measured on."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    info["git"] = _git_revision()
    return info


def _git_revision() -> str | None:
    """The commit of the checkout this package runs from (None when it is not one, e.g. an installed wheel)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=here, check=False)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=here, check=False).stdout.strip()
        return rev.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


