"""RecExplainer alignment data for every user of a dataset: seconds to query the recommender and write the JSONL.

    python benchmarks/bench_alignment_data.py                              # google, all users, hybrid variant
    python benchmarks/bench_alignment_data.py --variants behaviour intention hybrid
    python benchmarks/bench_alignment_data.py --data synthetic:ordered=1 --recommender sasrec --rec-epochs 20

The recommender is trained briefly first (``--rec-epochs``; its quality does not change the cost of the data) and
timed apart. Then :func:`write_alignment_data` runs once: one pass over all users in batches (scores with
history masked, top-1, Task 2 candidates, Task 3 pairs by rejection sampling against each user's score row,
nearest items), then rows rendered and written per variant. Target: under a minute on google (~330k train edges)
for one variant. The machine is shared, so timings move with its load; ``--threads 1`` is usually fastest there.
Rows go to a temporary folder that is removed afterwards (``--keep DIR`` keeps them).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from explainrec.data import load_dataset
from explainrec.methods.recexplainer.alignment_data import (
    VARIANTS,
    write_alignment_data,
)
from explainrec.methods.recexplainer.recommenders import fit_recommender

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xrec" / "google"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder or 'synthetic[:k=v,...]'")
    parser.add_argument("--recommender", default="lightgcn", choices=("auto", "sasrec", "mf", "lightgcn"))
    parser.add_argument("--rec-epochs", type=int, default=2, help="recommender training epochs (timed apart)")
    parser.add_argument("--variants", nargs="+", default=["hybrid"], choices=VARIANTS)
    parser.add_argument("--max-users", type=int, default=None, help="default: every user with a train item")
    parser.add_argument("--user-batch", type=int, default=256,
                        help="users scored per block (256: the block stays in the CPU cache across the draws)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="write the rows here and keep them")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.startswith("synthetic") and not Path(args.data).exists():
        raise SystemExit(f"{args.data}: not found (pass --data synthetic to run without the real data)")

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    n_train = int((ds.interactions.split == "train").sum())
    print(f"data {ds.name}: {ds.n_users} users, {ds.n_items} items, {n_train} train edges "
          f"(loaded in {time.perf_counter() - t0:.1f}s); torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    rec = fit_recommender(ds, args.recommender, seed=args.seed, progress=False, epochs=args.rec_epochs)
    print(f"recommender {rec.kind}: {args.rec_epochs} epochs in {time.perf_counter() - t0:.1f}s (not part of the figure)")

    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-align-"))
    try:
        t0 = time.perf_counter()
        manifest = write_alignment_data(ds, rec, out, variants=args.variants, seed=args.seed,
                                        max_users=args.max_users, user_batch=args.user_batch)
        total = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in out.glob("*.jsonl"))
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    tm = manifest["timings"]
    print("\n| step | seconds | rows (train / test) |\n|---|---:|---:|")
    print(f"| query recommender ({manifest['users']} users) | {tm['query_seconds']:.1f} | |")
    for v in args.variants:
        m = manifest["variants"][v]
        print(f"| render + write {v} | {tm[f'{v}_seconds']:.1f} | {m['train']} / {m['test']} |")
    print(f"| **total** | **{total:.1f}** | {size / 1e6:.0f} MB of JSONL |")
    print("\nrows per task (first variant):")
    for task, c in sorted(manifest["variants"][args.variants[0]]["counts"].items()):
        print(f"  {task:13s} train {c['train']:7d}  test {c['test']:6d}")


if __name__ == "__main__":
    main()
