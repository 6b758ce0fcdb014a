"""Run a bench config: every planned run (in order, or N at a time), each failure recorded, then the report.

    explainrec bench configs/demo.yaml                 # run what is missing, then OUT/report.md
    explainrec bench configs/demo.yaml --dry-run       # the plan and the state of each run
    explainrec bench configs/demo.yaml --only 'synthetic/xrec*' --jobs 2
    explainrec bench configs/demo.yaml --report-only   # rebuild the report from the finished runs

A run is a folder (see :mod:`explainrec.bench.runner`): one with ``done.json`` and an unchanged ``run.json`` is
skipped, a half-done one continues where it stopped, a changed one starts again. A run that raises leaves its
traceback in ``RUN/error.txt`` and the bench carries on; the exit status is then non-zero. Runs whose upstream stages
have equal settings (method, config, data: e.g. variants of one method sharing its first stage) train each stage once: later
ones start from a copy.
``OUT/bench_log.jsonl`` gets one line per invocation (command, wall time, machine, what ran).
"""
from __future__ import annotations

import fnmatch
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from explainrec.bench.config import PlannedRun, describe, load_config, out_dir, plan
from explainrec.bench.report import write_report
from explainrec.bench.runner import run_one, stage_keys
from explainrec.bench.state import ERROR_FILE, LOG_FILE, fmt_seconds, is_finished, machine_info, run_state
from explainrec.interrupt import on_signals
from explainrec.io import atomic_write_text

# With --jobs, another worker starts only while this much memory is free (an MoE run on SmolLM2-135M peaks near
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


def stage_sources(p: PlannedRun, planned: list[PlannedRun]) -> dict[str, Path]:
    """For each stage ``p`` still lacks: a finished stage folder of another run of the config with the same key."""
    from explainrec.methods.runs import stage_is_done

    stale = run_state(p) == "stale"  # (a stale folder is cleared before the run starts, its stages with it)
    found: dict[str, Path] = {}
    for folder, key in stage_keys(p.spec).items():
        if (p.run_dir / folder).exists() and not stale:
            continue
        for q in planned:
            if q.run_dir == p.run_dir or run_state(q) == "stale":
                continue
            src = next((q.run_dir / f for f, k in stage_keys(q.spec).items()
                        if k == key and stage_is_done(q.run_dir / f)), None)
            if src is not None:
                found[folder] = src
                break
    return found


def record_error(run_dir: Path, text: str) -> None:
    """``RUN/error.txt`` (the run folder's own file); left out when another process holds the folder."""
    from explainrec.folders import FolderBusy, writing_into

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with writing_into(run_dir, command="explainrec bench"):
            atomic_write_text(run_dir / ERROR_FILE, text)
    except FolderBusy:
        pass


def execute(p: PlannedRun, *, bertscore: bool = True, progress: bool = False, stages: dict[str, Path] | None = None,
            keep_checkpoints: bool = True, echo=print, dataset=None) -> Outcome:
    """Run one planned run; an exception becomes ``RUN/error.txt`` and a "failed" outcome (Ctrl-C propagates).

    ``keep_checkpoints=False`` deletes the training checkpoints once the run is done: only a resumed training
    reads them, and a done run is never trained again (``model/`` holds the result). A failed run keeps them: they
    are what its rerun resumes from. ``dataset``: the run's data, already loaded (else loaded here).
    """
    t0 = time.perf_counter()
    error_path = p.run_dir / ERROR_FILE
    try:
        run_one(p.spec, p.run_dir, bertscore=bertscore, progress=progress, echo=echo, stage_sources=stages,
                dataset=dataset)
    except Exception as exc:  # noqa: BLE001 -- one run's failure must not stop the others
        record_error(p.run_dir, traceback.format_exc())
        last = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Outcome(run_key(p), "failed", time.perf_counter() - t0, last)
    error_path.unlink(missing_ok=True)
    if not keep_checkpoints:
        import shutil

        for ckpt in [p.run_dir / "checkpoint"] + [p.run_dir / f / "checkpoint" for f in stage_keys(p.spec)]:
            shutil.rmtree(ckpt, ignore_errors=True)
    return Outcome(run_key(p), "done", time.perf_counter() - t0)


def _worker(p: PlannedRun, bertscore: bool, stages: dict[str, Path], keep_checkpoints: bool, log_path: Path,
            threads: int | None) -> Outcome:
    """One run in a worker process, its output going to ``log_path`` (the parent prints start/end lines)."""
    import contextlib

    from explainrec.interrupt import on_signals

    if threads:
        import torch

        torch.set_num_threads(threads)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    # on_signals: the parent's terminate() (SIGTERM) lets a training finish its step and checkpoint before it ends
    with open(log_path, "a", encoding="utf-8", buffering=1) as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), on_signals():
        def echo(*args):
            print(*args, file=log, flush=True)

        return execute(p, bertscore=bertscore, progress=False, stages=stages,
                       keep_checkpoints=keep_checkpoints, echo=echo)


def memory_available_gb() -> float | None:
    """MemAvailable in GB (None where the system does not say)."""
    from explainrec.io import memory_available

    free = memory_available()
    return None if free is None else free / 1e9


def run_bench(config: str | Path, *, only: list[str] | None = None, jobs: int | None = None, dry_run: bool = False,
              report_only: bool = False, progress: bool = False, command: str | None = None,
              echo=print) -> BenchResult:
    """Run (or, with ``dry_run``, list) the config's runs, then write the report; see the module docstring.

    ``jobs``: runs at a time (default: the config's ``jobs``, else 1); more than one runs each in a spawned process.
    """
    from explainrec.folders import check_run_folder, session

    cfg = load_config(config)
    jobs = jobs or cfg.get("jobs") or 1
    planned = plan(cfg)
    chosen = select(planned, only)
    if only and not chosen:
        from explainrec.config import ConfigError

        raise ConfigError(f"{config}: --only {' '.join(only)} matches none of the {len(planned)} runs")
    out = out_dir(cfg)
    check_run_folder(out, inputs=[Path(config), *input_paths(cfg)], option=f"{config}: out")
    command = command or " ".join(["explainrec", "bench", str(config)])
    if dry_run:
        lines = describe(chosen).splitlines()
        for p, line in zip(chosen, lines):
            share = stage_sources(p, planned)
            echo(f"[{run_state(p):>7}] {line}" + "".join(f"  ({f} from {src})" for f, src in share.items()))
        echo(f"{len(chosen)} run(s) of {len(planned)}; folders under {out}; report: {out / 'report.md'}")
        return BenchResult()
    with session(out, kind="bench", command=command):  # one bench per output folder
        if report_only:  # with --only, a report on the chosen runs alone (e.g. one batch of a larger grid)
            report = write_report(cfg, chosen, out)
            echo(f"[bench] wrote {report}")
            return BenchResult(report=report)
        datasets = check_before_work(chosen, cfg)
        return _run_all(cfg, planned, chosen, out, jobs, command, datasets, progress, only, config, echo)


def input_paths(cfg: dict) -> list[Path]:
    """The files and folders a bench config reads (its datasets): its output folder must hold none of them."""
    from explainrec.data.readers import data_path

    return [p for p in (data_path(str(d)) for d in cfg["datasets"].values()) if p is not None]


def check_before_work(chosen: list[PlannedRun], cfg: dict) -> dict[str, object]:
    """Everything the chosen runs still to do would reject, before any of them starts: each run folder is the
    harness's (:func:`~explainrec.bench.runner.check_run_dir`), each dataset loads, and each run's method (and its
    stages) accepts that data and its settings, with the split to explain (and the valid split to tune on) holding
    explained pairs. Returns the loaded datasets by spec (the sequential runs reuse them)."""
    from explainrec.bench.runner import check_run_dir
    from explainrec.config import ConfigError
    from explainrec.data import load_dataset
    from explainrec.data.schema import DataError
    from explainrec.methods.runs import check_training

    datasets: dict[str, object] = {}
    for p in chosen:
        if is_finished(p):
            continue
        where = f"{run_key(p)}"
        check_run_dir(p.run_dir)
        if p.spec.data not in datasets:
            datasets[p.spec.data] = load_dataset(p.spec.data)
        ds = datasets[p.spec.data]
        method = p.spec.method_entry()
        try:
            check_training(method, ds, p.spec.config())
        except (DataError, ConfigError) as err:  # the run named in either: a bad setting or data it refuses
            raise type(err)(f"{where}: {err}") from None
        needs = ([p.spec.split] if method.explains else []) + (["valid"] if p.spec.tune_decoding else [])
        for split in needs:
            if not ds.split_examples(split):
                raise DataError(f"{where}: dataset {ds.name!r} has no explained pairs in split {split!r} to explain")
    return datasets


def _run_all(cfg, planned, chosen, out, jobs, command, datasets, progress, only, config, echo) -> BenchResult:
    result = BenchResult()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    machine = machine_info()
    log_line = {"started": started.isoformat(timespec="seconds"), "command": command, "config": str(config),
                "only": only, "jobs": jobs, "machine": machine}
    echo(f"[bench] {cfg.get('name', 'bench')}: {len(chosen)} run(s), {jobs} at a time, folders under {out}")
    interrupted = False
    try:
        with on_signals():  # SIGTERM (kill, a scheduler's stop) too: workers stopped, the log line written
            if jobs <= 1:
                _run_sequential(chosen, planned, cfg, result, t0, progress, echo, datasets)
            else:
                _run_parallel(chosen, planned, cfg, result, t0, jobs, out, echo)
    except KeyboardInterrupt:
        interrupted = True
        echo(f"[bench] interrupted after {fmt_seconds(time.perf_counter() - t0)}; "
             "run the same command again to resume (finished runs are kept)")
        raise
    finally:
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


def _end_line(o: Outcome, p: PlannedRun) -> str:
    if o.status == "failed":
        return f"FAILED after {fmt_seconds(o.seconds)}: {o.error}"
    try:
        done = json.loads((p.run_dir / "done.json").read_text())
    except (OSError, json.JSONDecodeError):
        return f"done in {fmt_seconds(o.seconds)}"
    m, stage = done.get("metrics") or {}, done.get("stage") or {}
    shown = {k: m[k] for k in ("bleu4", "rougeL", "bertscore_f1") if k in m}
    shown.update({k: stage[k] for k in p.spec.method_entry().headline if k in stage})
    return f"done in {fmt_seconds(o.seconds)} " + " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def _run_sequential(chosen, planned, cfg, result, t0, progress, echo, datasets=None) -> None:
    n = len(chosen)
    for i, p in enumerate(chosen, 1):
        key, state = run_key(p), run_state(p)
        if is_finished(p):
            echo(f"[bench] {i}/{n} {key}: finished before, skipped")
            result.outcomes.append(Outcome(key, "skipped"))
            continue
        share = stage_sources(p, planned)
        echo(f"[bench] {i}/{n} {key}: start {p.spec.method} ({state}) at {fmt_seconds(time.perf_counter() - t0)}"
             + "".join(f", {f} from {src}" for f, src in share.items()))
        o = execute(p, bertscore=cfg.get("bertscore", True), progress=progress, stages=share,
                    keep_checkpoints=cfg.get("keep_checkpoints", True), echo=echo,
                    dataset=(datasets or {}).get(p.spec.data))
        result.outcomes.append(o)
        echo(f"[bench] {i}/{n} {key}: {_end_line(o, p)} (bench at {fmt_seconds(time.perf_counter() - t0)})")


def _run_parallel(chosen, planned, cfg, result, t0, jobs, out, echo) -> None:
    """Up to ``jobs`` runs at once in spawned worker processes (output in OUT/logs/).

    A run waits while another run in flight is still training a stage it would share, so each stage is
    trained once; other runs overtake it meanwhile.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    n = len(chosen)
    index = {run_key(p): i for i, p in enumerate(chosen, 1)}
    pending = []
    for p in chosen:
        if is_finished(p):
            echo(f"[bench] {index[run_key(p)]}/{n} {run_key(p)}: finished before, skipped")
            result.outcomes.append(Outcome(run_key(p), "skipped"))
        else:
            pending.append(p)

    from explainrec.methods.runs import stage_is_done

    def waits_for_stage(p, running) -> bool:
        stale = run_state(p) == "stale"
        wanted = {k for f, k in stage_keys(p.spec).items() if stale or not (p.run_dir / f).exists()}
        return any(k in wanted and not stage_is_done(r.run_dir / f)
                   for r in running.values() for f, k in stage_keys(r.spec).items())

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
                p = next((q for q in pending if not waits_for_stage(q, running)), None)
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
                share = stage_sources(p, planned)
                log_path = out / "logs" / f"{p.dataset}_{p.run}_seed{p.seed}.log"
                echo(f"[bench] {index[run_key(p)]}/{n} {run_key(p)}: start {p.spec.method} ({run_state(p)}) at "
                     f"{fmt_seconds(time.perf_counter() - t0)}, log {log_path}"
                     + "".join(f", {f} from {src}" for f, src in share.items()))
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
                    record_error(p.run_dir, o.error + "\n")
                result.outcomes.append(o)
                echo(f"[bench] {index[o.key]}/{n} {o.key}: {_end_line(o, p)} "
                     f"(bench at {fmt_seconds(time.perf_counter() - t0)})")
    except KeyboardInterrupt:
        for proc in list(getattr(pool, "_processes", {}).values()):  # our own workers; their runs resume later
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
