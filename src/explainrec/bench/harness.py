"""Run a bench config: every planned run (in order, or N at a time), each failure recorded, then the report.

    explainrec bench configs/demo.yaml                 # run what is missing, then OUT/report.md
    explainrec bench configs/demo.yaml --dry-run       # the plan and the state of each run
    explainrec bench configs/demo.yaml --only 'synthetic/gavamoe*' --jobs 2
    explainrec bench configs/demo.yaml --report-only   # rebuild the report from the finished runs

A run is a folder (see :mod:`explainrec.bench.runner`): one with ``done.json`` and an unchanged ``run.json`` is
skipped, a half-done one continues where it stopped, a changed one starts again. A run that raises leaves its
traceback in ``RUN/error.txt`` and the bench carries on; the exit status is then non-zero. GaVaMoE runs with equal
stage-1 settings (data, K, seed, VAE-GMM options) fit the VAE-GMM once: later ones start from a copy.
``OUT/bench_log.jsonl`` gets one line per invocation (command, wall time, machine, what ran).
"""
from __future__ import annotations

import fnmatch
import json
import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from explainrec.bench.config import PlannedRun, describe, load_config, out_dir, plan
from explainrec.bench.runner import run_one, stage1_settings
from explainrec.io import atomic_write_text

LOG_FILE = "bench_log.jsonl"
ERROR_FILE = "error.txt"
# With --jobs, another worker starts only while this much memory is free (a GaVaMoE run on SmolLM2-135M peaks near
# 7 GB: weights, gradients and AdamW state of the experts); a lone run always starts.
MIN_FREE_GB = 8.0


@dataclass
class Outcome:
    """What one run did in this invocation."""

    key: str  # dataset/run/seed<k>
    status: str  # "done" (finished now), "skipped" (finished before), "failed"
    seconds: float = 0.0
    error: str | None = None  # last line of the traceback


@dataclass
class BenchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def run_key(p: PlannedRun) -> str:
    return f"{p.dataset}/{p.run}/seed{p.seed}"


def select(planned: list[PlannedRun], only: list[str] | None) -> list[PlannedRun]:
    """The runs matching any glob of ``only`` (against ``dataset/run/seedK``, ``dataset/run`` or ``run``)."""
    if not only:
        return list(planned)
    patterns = [pat.strip() for item in only for pat in item.split(",") if pat.strip()]
    return [p for p in planned
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns
                   for name in (run_key(p), f"{p.dataset}/{p.run}", p.run))]


def run_state(p: PlannedRun) -> str:
    """``done``, ``failed``, ``partial`` (started), ``todo``, or ``stale`` (its folder holds other settings)."""
    spec_path = p.run_dir / "run.json"
    if spec_path.exists():
        try:
            same = json.loads(spec_path.read_text()) == p.spec.to_dict()
        except json.JSONDecodeError:
            same = False
        if not same:
            return "stale"
    if (p.run_dir / "done.json").exists() and spec_path.exists():
        return "done"
    if (p.run_dir / ERROR_FILE).exists():
        return "failed"
    return "partial" if p.run_dir.exists() else "todo"


def stage1_source(p: PlannedRun, planned: list[PlannedRun]) -> Path | None:
    """A finished ``stage1/`` of another run of the config with the same stage-1 settings, if there is one."""
    wanted = stage1_settings(p.spec)
    if wanted is None or ((p.run_dir / "stage1").exists() and run_state(p) != "stale"):
        return None  # (a stale folder is cleared before the run starts, its stage 1 with it)
    for q in planned:
        src = q.run_dir / "stage1"
        if q.run_dir == p.run_dir or not (src / "metrics.json").exists() or run_state(q) == "stale":
            continue
        if stage1_settings(q.spec) == wanted:
            return src
    return None


def execute(p: PlannedRun, *, bertscore: bool = True, progress: bool = False, stage1_from: Path | None = None,
            keep_checkpoints: bool = True, echo=print) -> Outcome:
    """Run one planned run; an exception becomes ``RUN/error.txt`` and a "failed" outcome (Ctrl-C propagates).

    ``keep_checkpoints=False`` deletes the training checkpoints once the run is done: only a resumed training
    reads them, and a done run is never trained again (``model/`` holds the result).
    """
    t0 = time.perf_counter()
    error_path = p.run_dir / ERROR_FILE
    try:
        run_one(p.spec, p.run_dir, bertscore=bertscore, progress=progress, echo=echo, stage1_from=stage1_from)
    except Exception as exc:  # noqa: BLE001 -- one run's failure must not stop the others
        p.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(error_path, traceback.format_exc())
        last = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Outcome(run_key(p), "failed", time.perf_counter() - t0, last)
    error_path.unlink(missing_ok=True)
    if not keep_checkpoints:
        import shutil

        for ckpt in (p.run_dir / "checkpoint", p.run_dir / "stage1" / "checkpoint"):
            shutil.rmtree(ckpt, ignore_errors=True)
    return Outcome(run_key(p), "done", time.perf_counter() - t0)


def _worker(p: PlannedRun, bertscore: bool, stage1_from: Path | None, keep_checkpoints: bool, log_path: Path,
            threads: int | None) -> Outcome:
    """One run in a worker process, its output going to ``log_path`` (the parent prints start/end lines)."""
    import contextlib

    if threads:
        import torch

        torch.set_num_threads(threads)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        def echo(*args):
            print(*args, file=log, flush=True)

        return execute(p, bertscore=bertscore, progress=False, stage1_from=stage1_from,
                       keep_checkpoints=keep_checkpoints, echo=echo)


def memory_available_gb() -> float | None:
    """MemAvailable from /proc/meminfo in GB (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return None


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


def run_bench(config: str | Path, *, only: list[str] | None = None, jobs: int | None = None, dry_run: bool = False,
              report_only: bool = False, progress: bool = False, command: str | None = None,
              echo=print) -> BenchResult:
    """Run (or, with ``dry_run``, list) the config's runs, then write the report; see the module docstring.

    ``jobs``: runs at a time (default: the config's ``jobs``, else 1); more than one runs each in a spawned process.
    """
    from explainrec.bench.report import write_report

    cfg = load_config(config)
    jobs = jobs or cfg.get("jobs") or 1
    planned = plan(cfg)
    chosen = select(planned, only)
    if only and not chosen:
        from explainrec.data.schema import DataError

        raise DataError(f"{config}: --only {' '.join(only)} matches none of the {len(planned)} runs")
    out = out_dir(cfg)
    command = command or " ".join(["explainrec", "bench", str(config)])
    if dry_run:
        lines = describe(chosen).splitlines()
        for p, line in zip(chosen, lines):
            share = stage1_source(p, planned)
            echo(f"[{run_state(p):>7}] {line}" + (f"  (stage 1 from {share})" if share else ""))
        echo(f"{len(chosen)} run(s) of {len(planned)}; folders under {out}; report: {out / 'report.md'}")
        return BenchResult()
    if report_only:
        report = write_report(cfg, planned, out)
        echo(f"[bench] wrote {report}")
        return BenchResult(report=report)

    result = BenchResult()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    machine = machine_info()
    log_line = {"started": started.isoformat(timespec="seconds"), "command": command, "config": str(config),
                "only": only, "jobs": jobs, "machine": machine}
    echo(f"[bench] {cfg.get('name', 'bench')}: {len(chosen)} run(s), {jobs} at a time, folders under {out}")
    interrupted = False
    restore = _sigterm_as_interrupt()
    try:
        if jobs <= 1:
            _run_sequential(chosen, planned, cfg, result, t0, progress, echo)
        else:
            _run_parallel(chosen, planned, cfg, result, t0, jobs, out, echo)
    except KeyboardInterrupt:
        interrupted = True
        echo(f"[bench] interrupted after {fmt_seconds(time.perf_counter() - t0)}; "
             "run the same command again to resume (finished runs are kept)")
        raise
    finally:
        restore()
        result.seconds = time.perf_counter() - t0
        counts = {s: sum(o.status == s for o in result.outcomes) for s in ("done", "skipped", "failed")}
        log_line.update(seconds=round(result.seconds, 1), interrupted=interrupted, **counts,
                        failed_runs=[o.key for o in result.failed])
        out.mkdir(parents=True, exist_ok=True)
        with open(out / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(log_line) + "\n")
    result.report = write_report(cfg, planned, out)
    done = sum(o.status != "failed" for o in result.outcomes)
    echo(f"[bench] {done}/{len(result.outcomes)} run(s) finished, {len(result.failed)} failed, "
         f"{fmt_seconds(result.seconds)}; report: {result.report}")
    for o in result.failed:
        echo(f"[bench] FAILED {o.key}: {o.error} (traceback in {out / o.key / ERROR_FILE})")
    return result


def _sigterm_as_interrupt():
    """Make SIGTERM (kill, a scheduler's stop) end the bench like Ctrl-C: workers stopped, the log line written.

    Returns the function that puts the previous handler back. Only the main thread may set handlers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _end_line(o: Outcome, p: PlannedRun) -> str:
    if o.status == "failed":
        return f"FAILED after {fmt_seconds(o.seconds)}: {o.error}"
    try:
        done = json.loads((p.run_dir / "done.json").read_text())
    except (OSError, json.JSONDecodeError):
        return f"done in {fmt_seconds(o.seconds)}"
    m, s1 = done.get("metrics") or {}, done.get("stage1") or {}
    shown = {k: m[k] for k in ("bleu4", "rougeL", "bertscore_f1") if k in m}
    shown.update({k: s1[k] for k in ("cluster_sizes", "test_auc") if k in s1})
    return f"done in {fmt_seconds(o.seconds)} " + " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def _run_sequential(chosen, planned, cfg, result, t0, progress, echo) -> None:
    n = len(chosen)
    for i, p in enumerate(chosen, 1):
        key, state = run_key(p), run_state(p)
        if state == "done":
            echo(f"[bench] {i}/{n} {key}: finished before, skipped")
            result.outcomes.append(Outcome(key, "skipped"))
            continue
        share = stage1_source(p, planned)
        echo(f"[bench] {i}/{n} {key}: start {p.spec.method} ({state}) at {fmt_seconds(time.perf_counter() - t0)}"
             + (f", stage 1 from {share}" if share else ""))
        o = execute(p, bertscore=cfg.get("bertscore", True), progress=progress, stage1_from=share,
                    keep_checkpoints=cfg.get("keep_checkpoints", True), echo=echo)
        result.outcomes.append(o)
        echo(f"[bench] {i}/{n} {key}: {_end_line(o, p)} (bench at {fmt_seconds(time.perf_counter() - t0)})")


def _run_parallel(chosen, planned, cfg, result, t0, jobs, out, echo) -> None:
    """Up to ``jobs`` runs at once in spawned worker processes (output in OUT/logs/).

    A GaVaMoE run waits while another run in flight is still fitting the stage 1 it would share, so each
    VAE-GMM is fitted once; other runs overtake it meanwhile.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    n = len(chosen)
    index = {run_key(p): i for i, p in enumerate(chosen, 1)}
    pending = []
    for p in chosen:
        if run_state(p) == "done":
            echo(f"[bench] {index[run_key(p)]}/{n} {run_key(p)}: finished before, skipped")
            result.outcomes.append(Outcome(run_key(p), "skipped"))
        else:
            pending.append(p)

    def waits_for_stage1(p, running) -> bool:
        wanted = stage1_settings(p.spec)
        if wanted is None or ((p.run_dir / "stage1").exists() and run_state(p) != "stale"):
            return False
        return any(stage1_settings(r.spec) == wanted and not (r.run_dir / "stage1" / "metrics.json").exists()
                   for r in running.values())

    # the cores shared out between the workers, unless OMP_NUM_THREADS says otherwise (the workers inherit it)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, cpus // jobs)

    def new_pool():
        # one run per worker process: a finished run's memory goes back to the system (an idle Python worker
        # would keep the ~5 GB heap of its last training run)
        return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)

    pool = new_pool()
    running: dict = {}
    told_memory = False
    try:
        while pending or running:
            while pending and len(running) < jobs:
                p = next((q for q in pending if not waits_for_stage1(q, running)), None)
                if p is None:
                    break
                free = memory_available_gb()
                if running and free is not None and free < MIN_FREE_GB:
                    if not told_memory:
                        echo(f"[bench] {free:.1f} GB of memory free (< {MIN_FREE_GB:g}): starting runs one by one "
                             "until more is free")
                        told_memory = True
                    break
                pending.remove(p)
                share = stage1_source(p, planned)
                log_path = out / "logs" / f"{p.dataset}_{p.run}_seed{p.seed}.log"
                echo(f"[bench] {index[run_key(p)]}/{n} {run_key(p)}: start {p.spec.method} ({run_state(p)}) at "
                     f"{fmt_seconds(time.perf_counter() - t0)}, log {log_path}"
                     + (f", stage 1 from {share}" if share else ""))
                args = (_worker, p, cfg.get("bertscore", True), share, cfg.get("keep_checkpoints", True), log_path, threads)
                try:
                    running[pool.submit(*args)] = p
                except BrokenProcessPool:  # a worker died (e.g. killed for memory): carry on with fresh workers
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    running[pool.submit(*args)] = p
            finished, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
            for fut in finished:
                p = running.pop(fut)
                try:
                    o = fut.result()
                except BaseException as exc:  # noqa: BLE001 -- a worker that died (killed, out of memory)
                    o = Outcome(run_key(p), "failed", 0.0, f"worker process failed: {type(exc).__name__}: {exc}")
                    p.run_dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(p.run_dir / ERROR_FILE, o.error + "\n")
                result.outcomes.append(o)
                echo(f"[bench] {index[o.key]}/{n} {o.key}: {_end_line(o, p)} "
                     f"(bench at {fmt_seconds(time.perf_counter() - t0)})")
    except KeyboardInterrupt:
        for proc in list(getattr(pool, "_processes", {}).values()):  # our own workers; their runs resume later
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
