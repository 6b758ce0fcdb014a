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
from explainrec.data.prompts import build_messages, render_prompt
from explainrec.llm.generate import GenerationStats, generate_texts
from explainrec.llm.load import load_llm

METHODS = ("zero-shot", "gavamoe", "base", "xrec")


def train_all(ds, methods: list[str], out: Path, args) -> dict[str, float]:
    """Train every trained method for ``args.train_steps`` steps into ``out/<method>``; return wall seconds each."""
    from explainrec.methods.gavamoe.recipe import TrainConfig
    from explainrec.methods.gavamoe.recipe import train as train_gavamoe
    from explainrec.methods.xrec.recipe import XRecConfig
    from explainrec.methods.xrec.recipe import train as train_xrec

    quiet = dict(progress_bar=False, echo=lambda *_: None)
    budget = dict(max_steps=args.train_steps, batch_size=2, max_valid_pairs=2, checkpoint_every=1000)
    seconds = {}
    for method in methods:
        t = time.perf_counter()
        if method in ("gavamoe", "base"):
            cfg = TrainConfig.from_dict({
                "model": args.model, "clusters": args.clusters, **budget, "trainable": ("gates", "soft", "vae"),
                "moe": {"variant": "full" if method == "gavamoe" else "base"},
                "stage1": {"epochs": 2, "pretrain_epochs": 1, "plot_method": "none"},
            })
            train_gavamoe(ds, out / method, cfg, **quiet)
        elif method == "xrec":
            train_xrec(ds, out / method, XRecConfig(model=args.model, lightgcn={"epochs": 2, "dim": 32}, **budget), **quiet)
        else:
            continue
        seconds[method] = time.perf_counter() - t
    return seconds


def time_method(method: str, ds, out: Path, args, llm) -> GenerationStats:
    """Best of ``args.reps`` explanation passes over the first ``args.n`` test pairs (model loaded beforehand)."""
    generation = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=False)
    if not args.natural_length:
        generation["min_new_tokens"] = args.max_new_tokens  # goes through to model.generate
    best = None
    for _ in range(args.reps):
        stats = GenerationStats()
        if method == "zero-shot":  # the zero-shot recipe's prompts, generated directly to pass min_new_tokens
            model, tokenizer = llm
            prompts = [render_prompt(tokenizer, build_messages(e)) for e in ds.split_examples("test")[: args.n]]
            generate_texts(model, tokenizer, prompts, stats=stats, **generation)
        else:
            if method == "xrec":
                from explainrec.methods.xrec.recipe import explain_split
            else:
                from explainrec.methods.gavamoe.explain import explain_split
            _, stats = explain_split(out / method, ds, "test", limit=args.n, **generation)
        if best is None or stats.explanations_per_s > best.explanations_per_s:
            best = stats
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic", help="the built-in data by default")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
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
        ap.error(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
    if "zero-shot" not in methods:
        methods.insert(0, "zero-shot")  # the baseline of every ratio

    logging.getLogger("explainrec").setLevel(logging.ERROR)  # stage 1's cluster-size warnings: not about speed
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, data {args.data}")
    ds = load_dataset(args.data)
    llm = load_llm(args.model)
    generate_texts(*llm, ["warm-up"], max_new_tokens=4, progress=False)  # the first method timed pays no one-off costs
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        trained = train_all(ds, methods, out, args)
        print(f"trained {args.train_steps} steps each (stage 1 / LightGCN, validation and saving included): "
              + ", ".join(f"{m} {s:.0f} s" for m, s in trained.items()))
        results = {m: time_method(m, ds, out, args, llm) for m in methods}

    base = results["zero-shot"]
    length = "at most" if args.natural_length else "exactly"
    print(f"\n{args.n} test pairs, batch size {args.batch_size}, greedy, {length} {args.max_new_tokens} new tokens each")
    print(f"{'method':<10} {'pairs/s':>8} {'tokens/s':>9} {'seconds':>8}  vs zero-shot")
    for method, s in results.items():
        ratio = s.explanations_per_s / base.explanations_per_s if base.explanations_per_s > 0 else float("nan")
        print(f"{method:<10} {s.explanations_per_s:>8.3f} {s.tokens_per_s:>9.1f} {s.seconds:>8.1f}  {ratio:.2f}x pairs/s")


if __name__ == "__main__":
    main()
