"""End to end: test pairs explained per second by each method, on the same pairs, against zero-shot in the same run.

    python benchmarks/bench_end_to_end.py                  # embedded SmolLM2-135M, built-in data (~3 min on 2 cores)
    python benchmarks/bench_end_to_end.py --model tiny     # seconds, for a smoke test

Methods: zero-shot (the baseline: the plain LLM and its prompt), GaVaMoE (multi-gated MoE in every layer + soft
user/item tokens), Base (GaVaMoE's dense variant: soft tokens, no MoE) and XRec (LightGCN + MoE adaptors injected
into every layer). Each method explains the same test pairs with its own prompt, batched and greedy.

What is measured: generation speed, not quality. The trained methods train for --train-steps steps of 2 pairs, and
only their small parts (gates, soft-token projections, VAE; XRec's adaptors), which keeps training and checkpoints
cheap without changing the model that generates. A model trained for two steps stops at an arbitrary length, so by
default every pair gets exactly --max-new-tokens tokens (eos suppressed until then): equal work per pair, and the
ratio is the method's cost, not its verbosity. --natural-length lets each stop at eos instead. Each model is loaded
before its clock starts; the clock covers tokenizing, prompt embedding (soft tokens, routing) and generation.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from explainrec.data import load_dataset
from explainrec.llm.decoding import GenerationConfig
from explainrec.llm.generate import GenerationStats, generate_texts
from explainrec.llm.load import load_llm

# the bench's rows -> (registry entry, settings on top of its tiny-budget training below)
METHODS = {"zero-shot": ("zero-shot", []), "gavamoe": ("gavamoe", []), "base": ("gavamoe", ["moe.variant=base"]),
           "xrec": ("xrec", [])}


def train_all(ds, methods: list[str], out: Path, args) -> dict[str, float]:
    """Train every method for ``args.train_steps`` steps into ``out/<method>``; return wall seconds each."""
    from explainrec.methods import registry
    from explainrec.methods.runs import train_run

    budget = [f"max_steps={args.train_steps}", "batch_size=2", "max_valid_pairs=2", "checkpoint_every=1000"]
    seconds = {}
    for label in methods:
        name, settings = METHODS[label]
        method = registry.get(name)
        if not method.trains:  # zero-shot: a model folder with its config, nothing to time
            train_run(method, ds, out / label, method.make_config(overrides={"model": args.model}),
                      progress=False, echo=lambda *_: None)
            continue
        extra = {"gavamoe": [f"clusters={args.clusters}", "trainable=gates,soft,vae",
                             "stage1.epochs=2", "stage1.pretrain_epochs=1", "stage1.plot_method=none"],
                 "xrec": ["lightgcn.epochs=2", "lightgcn.dim=32"]}[name]
        cfg = method.make_config(overrides=[f"model={args.model}", *budget, *extra, *settings])
        t = time.perf_counter()
        train_run(method, ds, out / label, cfg, progress=False, echo=lambda *_: None)
        seconds[label] = time.perf_counter() - t
    return seconds


def time_method(label: str, ds, out: Path, args) -> GenerationStats:
    """Best of ``args.reps`` explanation passes over the first ``args.n`` test pairs (model loaded beforehand)."""
    from explainrec.methods.explain import explain_split
    from explainrec.methods.model_folder import load_run

    explainer = load_run(out / label, precision=args.precision)
    generation = GenerationConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                  min_new_tokens=0 if args.natural_length else args.max_new_tokens)
    best = None
    for _ in range(args.reps):
        _, stats = explain_split(explainer, ds, "test", limit=args.n, generation=generation, progress=False)
        if best is None or stats.explanations_per_s > best.explanations_per_s:
            best = stats
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic", help="the built-in data by default")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    ap.add_argument("--n", type=int, default=8, help="test pairs explained by every method")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--natural-length", action="store_true", help="stop each pair at eos (default: exactly N tokens)")
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--reps", type=int, default=1, help="explanation passes per method; the fastest counts")
    ap.add_argument("--out", type=Path, default=None, help="keep the trained models here (default: a temp folder)")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    if "zero-shot" not in methods:
        methods.insert(0, "zero-shot")  # the baseline of every ratio

    logging.getLogger("explainrec").setLevel(logging.ERROR)  # stage 1's cluster-size warnings: not about speed
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, data {args.data}")
    ds = load_dataset(args.data)
    generate_texts(*load_llm(args.model), ["warm-up"], max_new_tokens=4, progress=False)  # no one-off costs timed
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        trained = train_all(ds, methods, out, args)
        print(f"trained {args.train_steps} steps each (stage 1 / LightGCN, validation and saving included): "
              + ", ".join(f"{m} {s:.0f} s" for m, s in trained.items()))
        results = {m: time_method(m, ds, out, args) for m in methods}

    base = results["zero-shot"]
    length = "at most" if args.natural_length else "exactly"
    print(f"\n{args.n} test pairs, batch size {args.batch_size}, greedy, {length} {args.max_new_tokens} new tokens each")
    print(f"{'method':<10} {'pairs/s':>8} {'tokens/s':>9} {'seconds':>8}  vs zero-shot")
    for method, s in results.items():
        ratio = s.explanations_per_s / base.explanations_per_s if base.explanations_per_s > 0 else float("nan")
        print(f"{method:<10} {s.explanations_per_s:>8.3f} {s.tokens_per_s:>9.1f} {s.seconds:>8.1f}  {ratio:.2f}x pairs/s")


if __name__ == "__main__":
    main()
