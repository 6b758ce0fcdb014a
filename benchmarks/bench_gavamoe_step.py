"""GaVaMoE stage 2 vs the dense model, measured in one run on the same inputs.

    python benchmarks/bench_gavamoe_step.py                 # SmolLM2-135M (embedded), batch 8 x 128 tokens
    python benchmarks/bench_gavamoe_step.py --model tiny    # seconds, for a smoke test
    python benchmarks/bench_gavamoe_step.py --no-train --gen-batch 1 8 16 --dispatch auto dense grouped

Prints (targets from issue 4):
* training step (forward + backward + AdamW) of the MoE SmolLM2 vs the dense SmolLM2: ratio MoE/dense <= 1.3;
* greedy generation tokens/s of the MoE model (inside its routing context, counting each sample's experts as
  ``explainrec explain`` does) vs dense HF generate at the same batch size: ratio MoE/dense >= 0.8; one line per --gen-batch size and --dispatch mode of the MoE layers (``auto`` is
  what the toolkit runs; the others force one path, see ``StackedSwiGLUExperts.forward``).
Both models train the same kind of parameters (the FFN blocks: experts + gates vs the dense MLPs).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from explainrec.llm.load import load_llm
from explainrec.methods.gavamoe.surgery import moe_upcycle
from explainrec.methods.gavamoe.config import MoEConfig
from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE
from explainrec.methods.gavamoe.routing import routing


def _ffn_params(model):
    return [p for n, p in model.named_parameters() if ".mlp." in n]


def step_time(model, ids, mask, clusters, reps: int) -> float:
    for p in model.parameters():
        p.requires_grad_(False)
    params = _ffn_params(model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    times = []
    for r in range(reps + 1):  # first rep warms up
        t = time.perf_counter()
        with routing(clusters, token_mask=mask, collect_aux=True):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
        if r:
            times.append(time.perf_counter() - t)
    return min(times)


def set_dispatch(model, mode: str) -> None:
    for layer in model.modules():
        if isinstance(layer, MultiGatedMoE):
            layer.dispatch = mode


@torch.no_grad()
def gen_tokens_per_s(variants: dict, ids, mask, clusters, new_tokens: int, reps: int) -> dict[str, float]:
    """Best greedy tokens/s of each ``name: (model, dispatch or None)``; the variants take turns within every
    repetition (after a warm-up round), so a change in the machine's load hits them alike."""
    best = dict.fromkeys(variants, 0.0)
    for r in range(reps + 1):
        for name, (model, mode) in variants.items():
            model.eval()
            if mode is not None:
                set_dispatch(model, mode)
            t = time.perf_counter()
            with routing(clusters, track_samples=True):  # as `explainrec explain` runs it (top experts per pair)
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            dt = time.perf_counter() - t
            if r:
                best[name] = max(best[name], (out.shape[1] - ids.shape[1]) * ids.shape[0] / dt)
    return best

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, nargs="+", default=[8])
    ap.add_argument("--dispatch", nargs="+", default=["auto"], choices=["auto", "dense", "grouped", "loop"])
    ap.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    ap.add_argument("--prompt", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(0)
    dense, _ = load_llm(args.model)
    moe = copy.deepcopy(dense)
    cfg = MoEConfig()
    report = moe_upcycle(moe, **cfg.surgery_kwargs(args.clusters))
    vocab = dense.config.vocab_size
    print(f"model {args.model}; MoE: {report}; threads {torch.get_num_threads()}")

    ids = torch.randint(10, vocab - 10, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    clusters = torch.arange(args.batch) % args.clusters
    if not args.no_train:
        t_dense = step_time(dense, ids, mask, clusters, args.reps)
        t_moe = step_time(moe, ids, mask, clusters, args.reps)
        print(f"train step {args.batch}x{args.seq}: dense {t_dense:.2f} s, MoE {t_moe:.2f} s, "
              f"ratio MoE/dense {t_moe / t_dense:.2f} (target <= 1.3)")

    for batch in args.gen_batch:
        g_ids = torch.randint(10, vocab - 10, (batch, args.prompt))
        g_mask = torch.ones_like(g_ids)
        g_clusters = torch.arange(batch) % args.clusters
        variants = {"dense model": (dense, None)} | {f"MoE {mode}": (moe, mode) for mode in args.dispatch}
        tps = gen_tokens_per_s(variants, g_ids, g_mask, g_clusters, args.new_tokens, args.reps)
        for mode in args.dispatch:
            base, moe_tps = tps["dense model"], tps[f"MoE {mode}"]
            print(f"generation batch {batch}, {args.new_tokens} new tokens, dispatch {mode}: dense {base:.1f} tok/s, "
                  f"MoE {moe_tps:.1f} tok/s, ratio MoE/dense {moe_tps / base:.2f} (target >= 0.8)", flush=True)


if __name__ == "__main__":
    main()
