"""Explanations at catalogue scale (issue 35): `explain --pairs` streams a million pairs in flat memory, and a
launch of 2 processes against 1, measured in the same run.

    python benchmarks/bench_explain_stream.py                        # 1,000,000 pairs, tiny random model (~15 min)
    python benchmarks/bench_explain_stream.py --pairs 20000 --ratio-pairs 4096          # a quick check
    python benchmarks/bench_explain_stream.py --real ../shared/data/xrec/google --model smollm2-135m \\
        --ratio-pairs 256 --pairs 0                                  # the embedded SmolLM2 on 256 real pairs

Memory: one process explains a generated stream of ``--pairs`` pairs (JSON lines, one pair in 10 given as a top-10
list; titles and profiles of realistic length); a sampler reads the process's peak RSS (VmHWM) when 10k, 100k,
... pairs are written (chunk files counted) and after the merge. Flat means the stream never sits in memory.

Speed: the first ``--ratio-pairs`` pairs explained by 1 process (`python -m explainrec.cli explain`), then by 2
(`accelerate launch --config_file configs/accelerate/data-parallel.yaml --num_processes 2`, gloo), both with
OMP_NUM_THREADS=1 per process. Printed: pairs/s inside the run (explain's own rate over all processes, after
loading), end-to-end wall time and rate (start-up and merge included), CPU seconds per pair, and the 2-vs-1 ratios.
The machine's load (`uptime`) is printed before and after each measurement: on a shared 2-core machine a second
process competes with whatever else runs, so the ratio there says little about N GPUs.

``--real DIR``: the pairs are the test split's (user, item) of an XRec folder and explain fills their text from it
(``--data DIR``); nothing is copied from DIR into the repository (the pairs file is written to a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_synthetic_pairs(path: Path, n: int) -> None:
    """``n`` pairs: 9 single-pair records, then a top-10 list, and so on; texts of XRec's typical length."""
    profile = ("The user is likely to enjoy casual dining with hearty, homemade dishes and a cozy ambiance, with a "
               "focus on quality and authentic flavours.")
    with open(path, "w") as f:
        written, r = 0, 0
        while written < n:
            if r % 10 == 9 and n - written >= 10:
                items = [f"i{(r * 31 + j) % 50000}" for j in range(10)]
                f.write(json.dumps({"user": f"u{r % 200000}", "items": items, "scores": [1 - j / 10 for j in range(10)],
                                    "user_profile": profile}) + "\n")
                written += 10
            else:
                f.write(json.dumps({"user": f"u{r % 200000}", "item": f"i{(r * 17) % 50000}", "title": f"Place {r}",
                                    "user_profile": profile, "item_profile": "Fans of tacos would enjoy it."}) + "\n")
                written += 1
            r += 1


def write_real_pairs(path: Path, data: str, n: int) -> None:
    from explainrec.data import load_dataset

    dataset = load_dataset(data)
    examples = dataset.split_examples("test")[:n]
    with open(path, "w") as f:
        for e in examples:
            f.write(json.dumps({"user": dataset.users.decode(e.user), "item": dataset.items.decode(e.item)}) + "\n")


class PeakSampler(threading.Thread):
    """Reads the explain process's VmHWM each time the written chunks pass a threshold of pairs."""

    def __init__(self, parts: Path, chunk_size: int, thresholds: list[int]) -> None:
        super().__init__(daemon=True)
        self.parts, self.chunk_size, self.thresholds = parts, chunk_size, sorted(thresholds)
        self.pid: int | None = None
        self.peaks: dict[int, float] = {}
        self.stop = threading.Event()

    def _hwm_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            done = len(list(self.parts.glob("chunk-*.jsonl"))) * self.chunk_size if self.parts.is_dir() else 0
            for t in self.thresholds:
                if t not in self.peaks and done >= t:
                    peak = self._hwm_mb()
                    if peak is not None:
                        self.peaks[t] = peak
            time.sleep(0.2)


def explain_command(pairs: Path, out: Path, args, *more: str) -> list[str]:
    cmd = ["-m", "explainrec.cli", "explain", "--method", "zero-shot", "--model", args.model, "--pairs", str(pairs),
           "--out", str(out), "--chunk-size", str(args.chunk_size), "--batch-size", str(args.batch_size),
           "--max-new-tokens", str(args.max_new_tokens), "--precision", args.precision, *more]
    return cmd + (["--data", args.real] if args.real else [])


def run(cmd: list[str], sampler: PeakSampler | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sampler is not None:
        sampler.pid = proc.pid
        sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if sampler is not None:
        sampler.stop.set()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    rates = re.findall(r"by \d+ process(?:es)?: ([\d.]+) pairs/s", out)
    return {"wall": wall, "rate": float(rates[-1]) if rates else float("nan"), "stdout": out,
            "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "max_rss_mb": after.ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1_000_000, help="Pairs streamed for the memory figure (0: skip).")
    ap.add_argument("--ratio-pairs", type=int, default=16384, help="Pairs explained by 1 and by 2 processes.")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--real", default=None, help="An XRec folder: its test pairs instead of generated ones.")
    ap.add_argument("--chunk-size", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folder (its path is printed).")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-explain-stream-"))
    try:
        size = max(args.pairs, args.ratio_pairs)
        pairs = tmp / "pairs.jsonl"
        if args.real:
            write_real_pairs(pairs, args.real, args.ratio_pairs)
        else:
            write_synthetic_pairs(pairs, size)
        print(f"pairs file: {pairs} ({pairs.stat().st_size / 1e6:.1f} MB); model {args.model}, chunk {args.chunk_size}"
              f", batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, precision {args.precision}")
        if args.pairs and not args.real:
            thresholds = [t for t in (10_000, 100_000, 1_000_000, 10_000_000) if t <= args.pairs]
            out = tmp / "stream.jsonl"
            sampler = PeakSampler(out.with_name(out.name + ".parts"), args.chunk_size, thresholds)
            print(f"\n[memory] load before: {load()}", flush=True)
            result = run([sys.executable, *explain_command(pairs, out, args, "--limit", str(args.pairs))], sampler)
            print(f"[memory] load after:  {load()}")
            lines = sum(1 for _ in open(out))
            print(f"\n| pairs written | peak RSS (MB) |\n|---:|---:|")
            for t in thresholds:
                print(f"| {t:,} | {sampler.peaks.get(t, float('nan')):.0f} |")
            print(f"| {lines:,} (after the merge) | {result['max_rss_mb']:.0f} |")
            print(f"\n{lines:,} pairs in {result['wall']:.0f} s end to end; in-run rate {result['rate']:.0f} pairs/s; "
                  f"{1e3 * result['cpu'] / lines:.2f} CPU ms per pair")
            (out).unlink()
        n = args.ratio_pairs
        rows = []
        for procs in (1, 2):
            out = tmp / f"ratio-{procs}.jsonl"
            cmd = explain_command(pairs, out, args, "--limit", str(n))
            cmd = [sys.executable, *cmd] if procs == 1 else [
                str(ACCELERATE), "launch", "--config_file", str(ROOT / "configs/accelerate/data-parallel.yaml"),
                "--num_processes", "2", *cmd]
            print(f"\n[{procs} process{'es' if procs > 1 else ''}] load before: {load()}", flush=True)
            result = run(cmd)
            print(f"[{procs} process{'es' if procs > 1 else ''}] load after:  {load()}")
            rows.append((procs, result))
        same = (tmp / "ratio-1.jsonl").read_bytes() == (tmp / "ratio-2.jsonl").read_bytes()
        print(f"\n{n:,} pairs ({args.model}):\n\n| processes | in-run pairs/s | end-to-end s | end-to-end pairs/s "
              f"| CPU ms per pair |\n|---:|---:|---:|---:|---:|")
        for procs, r in rows:
            print(f"| {procs} | {r['rate']:.1f} | {r['wall']:.1f} | {n / r['wall']:.1f} | {1e3 * r['cpu'] / n:.2f} |")
        (_, one), (_, two) = rows
        print(f"\nratio 2 vs 1 processes: in-run {two['rate'] / one['rate']:.2f}x, end to end "
              f"{one['wall'] / two['wall']:.2f}x; the two files are identical: {same}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
