"""Training speed: pairs/s of GaVaMoE's and Base's stage 2 with today's path and the faster one, in one run, and the
validation NLL each reaches after the same number of training pairs (the learning must stay the same).

    python benchmarks/bench_training.py                       # SmolLM2-135M on google's train pairs (~15 min)
    python benchmarks/bench_training.py --steps 4 --model tiny --data synthetic   # a smoke test

Paths (explainrec train gavamoe settings):
    today   target_logits_only=false length_buckets=0 fused_adamw=false
                the output head on every position, plain shuffle, AdamW's per-tensor loop
    new     target_logits_only=true  length_buckets=8 fused_adamw=true
                the head on the explanation tokens only, batches of similar lengths, one fused AdamW kernel
                (plus any --new KEY=VALUE)
Each (method, path) trains --steps optimizer steps of --batch-size pairs from the same stage 1 and the same seed,
turn by turn (today, new, today, new ... with --rounds), so drift in the machine's speed hits both alike. pairs/s
counts the training loop alone (the trainer's clock: no loading, no validation); the validation NLL is the
trainer's, on the first --valid-pairs validation pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xrec" / "google"
PATHS = {"today": ["target_logits_only=false", "length_buckets=0", "fused_adamw=false"],
         "new": ["target_logits_only=true", "length_buckets=8", "fused_adamw=true"]}
METHODS = {"base": ["moe.variant=base"], "gavamoe": []}


def main() -> None:
    from explainrec.data import load_dataset
    from explainrec.methods import registry
    from explainrec.methods.runs import ensure_stage, train_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.exists() else "synthetic")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--valid-pairs", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1, help="turns of (today, new) per method")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--new", nargs="*", default=[], help="more KEY=VALUE settings for the new path")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = {**PATHS, "new": PATHS["new"] + list(args.new)}
    ds = load_dataset(args.data)
    gavamoe = registry.get("gavamoe")
    common = [f"model={args.model}", f"max_steps={args.steps}", f"batch_size={args.batch_size}",
              f"max_valid_pairs={args.valid_pairs}", "checkpoint_every=100000", "log_every=1000", "lr=3e-4",
              "beta=0.01", "stage1.epochs=2", "stage1.pretrain_epochs=2", "stage1.plot_method=none"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}; data {ds.name}, "
          f"{len(ds.split_examples('train'))} train pairs; {args.steps} steps x {args.batch_size} pairs per run")
    results: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg0 = gavamoe.make_config(overrides=common)
        (use,) = gavamoe.stages(cfg0)
        stage = ensure_stage(use, ds, tmp / "shared", resume=False, progress=False, echo=lambda *_: None)
        for method in args.methods.split(","):
            for r in range(args.rounds):
                for name, settings in paths.items():
                    run = tmp / f"{method}-{name}-{r}"
                    run.mkdir()
                    shutil.copytree(stage, run / "stage1")
                    cfg = gavamoe.make_config(overrides=common + METHODS[method] + settings)
                    t = time.perf_counter()
                    summary = train_run(gavamoe, ds, run, cfg, progress=False, echo=lambda *_: None).summary
                    wall = time.perf_counter() - t
                    pairs = summary.steps * args.batch_size
                    row = results.setdefault(method, {}).setdefault(name, [])
                    row.append({"pairs_per_s": pairs / summary.seconds, "valid_nll":
                                summary.metrics["last_valid"]["valid_nll"], "train_seconds": summary.seconds,
                                "wall": wall})
                    print(f"{method:<8} {name:<6} round {r}: {row[-1]['pairs_per_s']:.3f} pairs/s "
                          f"({summary.seconds:.0f} s of training), valid NLL {row[-1]['valid_nll']:.4f}",
                          flush=True)
                    shutil.rmtree(run)
    print(f"\n{'method':<8} {'today pairs/s':>14} {'new pairs/s':>12} {'ratio':>6} {'NLL today':>10} {'NLL new':>8} "
          f"{'NLL diff':>9}")
    for method, by_path in results.items():
        a, b = (statistics.median(x["pairs_per_s"] for x in by_path[p]) for p in ("today", "new"))
        na, nb = (statistics.median(x["valid_nll"] for x in by_path[p]) for p in ("today", "new"))
        print(f"{method:<8} {a:>14.3f} {b:>12.3f} {b / a:>6.2f} {na:>10.4f} {nb:>8.4f} {nb - na:>+9.4f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "load": load,
                                         "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
