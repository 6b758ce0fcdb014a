"""How often a trained GaVaMoE's top-k drops part of the upcycled FFN (doubly covered experts, mirrored init).

With the default SmolLM2 MoE (8 experts of 384 neurons, top-4), expert j and j + 4 hold the same dense neurons at
init and the mirrored router rows make top-4 take exactly one of each pair, so every token sees the whole FFN.
Training moves the router rows apart; a token whose top-4 then takes both experts of a pair misses another pair's
neurons altogether. This prints the share of (token, layer) routings that still cover every neuron group while the
model explains a few test pairs, and how far layer 0's router has left the mirror.

    python scripts/router_pair_coverage.py runs/bench/xrec/google/gavamoe-free-128/seed0 ../shared/data/xrec/google
"""
from __future__ import annotations

import argparse

import torch

from explainrec.data import load_dataset
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE
from explainrec.methods.model_folder import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a GaVaMoE run folder (holding model/)")
    ap.add_argument("data", help="the dataset it was trained on")
    ap.add_argument("--pairs", type=int, default=8, help="test pairs to explain")
    ap.add_argument("--new-tokens", type=int, default=24)
    args = ap.parse_args()

    explainer = load_run(args.run)
    model = explainer.model
    moes = [m for m in model.modules() if isinstance(m, MultiGatedMoE)]
    if not moes or moes[0].n_experts != 2 * moes[0].top_k:
        raise SystemExit(f"{args.run}: not a doubly covered MoE (needs n_experts == 2 * top_k)")
    half = moes[0].n_experts // 2
    counts = {"routings": 0, "full": 0}

    def count(module, inputs, logits):
        groups = logits.topk(module_top_k, dim=-1).indices % half  # (B, T, k) neuron group of each chosen expert
        covered = torch.stack([(groups == g).any(-1) for g in range(half)], -1).all(-1)
        counts["routings"] += covered.numel()
        counts["full"] += int(covered.sum())

    module_top_k = moes[0].top_k
    for moe in moes:
        moe.router.register_forward_hook(count)
    ds = load_dataset(args.data)
    pairs = [ds.pair_of(ex) for ex in ds.split_examples("test")[: args.pairs]]
    explainer.explain(pairs, GenerationConfig(max_new_tokens=args.new_tokens, batch_size=len(pairs)))
    weight = moes[0].router.weight.detach()
    drift = ("paired (rows tied for good)" if moes[0].router.paired
             else f"mean |w_j + w_(j+{half})| {(weight[:, half:] + weight[:, :half]).abs().mean():.4f}")
    print(f"{args.run}: {counts['routings']} (token, layer) routings, "
          f"{counts['full'] / counts['routings']:.3f} cover every neuron group; layer 0 router: mean |w| "
          f"{weight.abs().mean():.4f}, {drift}")


if __name__ == "__main__":
    main()
