"""Run every benchmark in this folder, one after another (each prints its own ratio against a baseline).

    python benchmarks/run_all.py            # all of them (tens of minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick    # tiny settings: checks that each one still runs

The real-data benchmarks read ../shared/data/xrec and say so and skip when it is absent.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = [
    ["bench_zero_shot.py"],
    ["bench_moe_layer.py"],
    ["bench_gavamoe_step.py"],
    ["bench_vae_gmm_epoch.py"],
    ["bench_lightgcn.py", "--threads", "1"],
    ["bench_end_to_end.py"],
]
QUICK = [
    ["bench_zero_shot.py", "--data", "synthetic", "--model", "tiny", "--n", "8", "--batch-size", "4", "--max-new-tokens", "8"],
    ["bench_gavamoe_step.py", "--model", "tiny", "--reps", "1"],
    ["bench_end_to_end.py", "--model", "tiny", "--n", "4", "--max-new-tokens", "8"],
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    failed = []
    for cmd in QUICK if args.quick else FULL:
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
