"""Zero-shot generation throughput: batched, left-padded, KV-cached generation vs one prompt at a time.

    python benchmarks/bench_zero_shot.py                                   # embedded SmolLM2, google test pairs
    python benchmarks/bench_zero_shot.py --data synthetic --model tiny     # smoke test

Prints explanations/s and tokens/s at batch size 1 (the baseline: what XRec's and GaVaMoE's releases do) and at the
chosen batch size, on the same pairs, and the ratio. Also the first (GGUF conversion) and cached load times when
--fresh-cache is given.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from explainrec.data import load_dataset
from explainrec.llm.load import load_llm
from explainrec.data.prompts import build_messages
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods.base import Explainer
from explainrec.methods.explain import explain_split

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xrec" / "google"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=32, help="test pairs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--fresh-cache", action="store_true", help="also time the first load (GGUF -> safetensors)")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.fresh_cache:
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            load_llm(args.model, cache_dir=cache)
            first = time.perf_counter() - t
            t = time.perf_counter()
            load_llm(args.model, cache_dir=cache)
            print(f"load: first (conversion) {first:.1f} s, cached {time.perf_counter() - t:.2f} s")
    model, tok = load_llm(args.model)
    explainer = Explainer(method="zero-shot", llm=model, tokenizer=tok, model=model, prompt=build_messages)
    ds = load_dataset(args.data)
    explain_split(explainer, ds, "test", limit=1, generation=GenerationConfig(max_new_tokens=4), progress=False)  # warm-up
    results = {}
    for bs in (1, args.batch_size):
        _, stats = explain_split(explainer, ds, "test", limit=args.n, progress=False,
                                 generation=GenerationConfig(batch_size=bs, max_new_tokens=args.max_new_tokens))
        results[bs] = stats
        print(f"batch {bs:>3}: {stats.explanations} explanations, {stats.new_tokens} tokens in {stats.seconds:.1f} s -> "
              f"{stats.explanations_per_s:.3f} expl/s, {stats.tokens_per_s:.1f} tok/s")
    base, best = results[1], results[args.batch_size]
    print(f"ratio batch {args.batch_size} / batch 1: {best.explanations_per_s / base.explanations_per_s:.2f}x explanations/s")


if __name__ == "__main__":
    main()
