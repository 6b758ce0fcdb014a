"""Run every benchmark in this folder, one after another (each prints its own ratio against a baseline).

    python benchmarks/run_all.py            # all of them, at their own settings (hours on a 2-core CPU)
    python benchmarks/run_all.py --quick    # each on its smallest setting: checks that every one still runs

The real-data benchmarks read ../shared/data/xrec and say so and skip when it is absent; their quick settings use
the built-in synthetic data. ``QUICK`` holds one quick command per benchmark file (tests/test_benchmarks.py runs
each of them and fails when a file of this folder has none), so a benchmark a refactor breaks fails the suite.
A benchmark that reads a trained run gets a tiny GaVaMoE run trained first (``{run}``, seconds on a CPU).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN = "{run}"  # a tiny trained run, made by tiny_run()
TINY_DATA = "synthetic:users=30,items=25,types=2"
FULL = [
    ["bench_zero_shot.py"],
    ["bench_moe_layer.py"],
    ["bench_gavamoe_step.py"],
    ["bench_vae_gmm_epoch.py"],
    ["bench_lightgcn.py", "--threads", "1"],
    ["bench_end_to_end.py"],
    ["bench_generation.py"],
    ["bench_training.py"],
    ["bench_paths.py"],
    ["bench_alignment_data.py"],
    ["bench_serve.py"],
    ["bench_explain_stream.py"],
]
QUICK = [
    ["bench_zero_shot.py", "--data", "synthetic", "--model", "tiny", "--n", "4", "--batch-size", "2",
     "--max-new-tokens", "4"],
    ["bench_moe_layer.py", "--hidden", "32", "--intermediate", "64", "--experts", "4", "--granularity", "2",
     "--top-k", "2", "--gates", "2", "--batch", "2", "--seq", "8", "1", "--reps", "1", "--threads", "1"],
    ["bench_gavamoe_step.py", "--model", "tiny", "--reps", "1", "--batch", "2", "--seq", "16", "--prompt", "8",
     "--new-tokens", "4", "--gen-batch", "2"],
    ["bench_vae_gmm_epoch.py", "--data", "synthetic", "--clusters", "2", "--baseline-steps", "2"],
    ["bench_lightgcn.py", "--data", "synthetic", "--epochs", "1", "--reps", "1", "--threads", "1"],
    ["bench_end_to_end.py", "--model", "tiny", "--n", "2", "--batch-size", "2", "--max-new-tokens", "4",
     "--train-steps", "1", "--clusters", "2"],
    ["bench_generation.py", "--data", "synthetic", "--model", "tiny", "--pairs", "4", "--max-new-tokens", "4",
     "--old-batch", "2", "--new-batch", "4"],
    ["bench_training.py", "--data", "synthetic", "--model", "tiny", "--steps", "1", "--batch-size", "2",
     "--valid-pairs", "2"],
    ["bench_paths.py", "--data", "synthetic", "--pairs", "4"],
    ["bench_alignment_data.py", "--data", "synthetic", "--rec-epochs", "1", "--max-users", "10",
     "--recommender", "mf"],
    ["bench_serve.py", "--model", "tiny", "--levels", "1", "--rounds", "1", "--malformed", "8", "--unknown", "2",
     "--burst", "8", "--drain", "2", "--max-new-tokens", "4", "--level-seconds", "20"],
    ["bench_explain_stream.py", "--pairs", "200", "--ratio-pairs", "16", "--chunk-size", "16", "--batch-size", "8"],
    ["bench_int8_nll.py", RUN, TINY_DATA, "--pairs", "2", "--variants", "fp32", "default"],
]


def tiny_run(folder: Path) -> Path:
    """A GaVaMoE run trained on the tiny preset (seconds), for the benchmarks that read a trained run."""
    import explainrec

    return explainrec.train("gavamoe", data=TINY_DATA, out=Path(folder) / "run", preset="tiny", progress=False,
                            echo=lambda *_: None).run


def commands(quick: bool, folder: Path) -> list[list[str]]:
    """The commands to run; ``{run}`` becomes a tiny run trained into ``folder`` (only when a command needs it)."""
    chosen = QUICK if quick else FULL
    run = str(tiny_run(folder)) if any(RUN in cmd for cmd in chosen) else None
    return [[run if part == RUN else part for part in cmd] for cmd in chosen]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    failed = []
    with tempfile.TemporaryDirectory(prefix="explainrec-benchmarks-") as folder:
        for cmd in commands(args.quick, Path(folder)):
            print(f"\n=== python benchmarks/{' '.join(cmd)}", flush=True)
            start = time.perf_counter()
            rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
            print(f"=== exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
            if rc:
                failed.append(cmd[0])
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
