"""What GaVaMoE's gates learned: per layer, how often each cluster's gate sends tokens to each expert, on a split's
pairs read with their reference explanations (teacher forcing, padding left out).

    python scripts/gate_usage.py RUN [RUN ...] --data ../shared/data/xrec/google --split valid --out docs/figures/gates

For every run it prints, per layer, the mean Jensen-Shannon divergence (bits) between the clusters' expert
distributions beside a noise floor: the same divergence between two random halves of each cluster's pairs. Gates
that learned nothing cluster-specific sit at the floor. Writes ``gates.json`` and a heatmap (clusters x experts,
first / middle / last layer and the mean over layers) per run.

``--init`` adds the control: the same run's model as it was before its first step (rebuilt from its config, stage 1
and seed, as training builds it), measured the same way. The K gates start as independent random draws, so the
clusters already diverge at step 0; what training added is the trained figure against that one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def usage_counts(explainer, dataset, split: str, limit: int | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts (2, L, K, E), pairs per cluster (K,))``: expert choices per layer and gate, for two random halves
    of the pairs (index 0 / 1), padding tokens left out."""
    from explainrec.data.collate import encode_examples, make_collate
    from explainrec.llm.surgery import decoder_layers
    from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE
    from explainrec.methods.gavamoe.routing import routing
    from explainrec.methods.llm_method import pair_ids

    model, tok = explainer.model, explainer.tokenizer
    layers = [m for layer in decoder_layers(model.llm) for m in layer.modules() if isinstance(m, MultiGatedMoE)]
    if not layers:
        raise SystemExit("this run has no MoE layers (a Base run?)")
    n_gates, n_experts = layers[0].router.weight.shape[0], layers[0].n_experts
    examples = dataset.split_examples(split)[:limit]
    rows = encode_examples(examples, tok, explainer.prompt)  # the run's own prompt (with or without profiles)
    user, item = pair_ids(model, examples, explainer.known_users, explainer.known_items)
    with torch.no_grad():
        clusters = model.clusters(user, item)
    half = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)) % 2
    counts = torch.zeros(2, len(layers), n_gates, n_experts, dtype=torch.long)
    state: dict = {}

    def hook(index: int):
        def record(_router, args, logits):  # logits (B, T, E) of the gate each sample was routed through
            _, gate_ids = args
            top = logits.topk(layers[index].top_k, dim=-1).indices  # (B, T, k): the experts the layer picks
            keep = state["mask"].bool().unsqueeze(-1).expand_as(top)
            key = (state["half"].view(-1, 1, 1) * n_gates + gate_ids.view(-1, 1, 1)).expand_as(top)
            flat = (key * n_experts + top)[keep]
            counts[:, index] += torch.bincount(flat, minlength=2 * n_gates * n_experts).view(2, n_gates, n_experts)
        return record

    handles = [m.router.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    model.eval()
    try:
        collate = make_collate(tok.pad_token_id)
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start:start + batch_size])
            ids, mask = batch["input_ids"], batch["attention_mask"]
            sl = slice(start, start + ids.shape[0])
            state.update(mask=mask, half=half[sl])
            with torch.no_grad(), routing(clusters[sl], token_mask=mask):
                model.llm(inputs_embeds=model.embed(ids, user[sl], item[sl]), attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return counts, torch.bincount(clusters, minlength=n_gates)


def js_bits(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence in bits between two count vectors (0 = same distribution, 1 = disjoint)."""
    p, q = p.double() / p.sum().clamp(min=1), q.double() / q.sum().clamp(min=1)
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * (a[nz] / b[nz]).log2()).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def summarise(counts: torch.Tensor, pairs: torch.Tensor) -> dict:
    """Per layer: mean pairwise JS between clusters (halves pooled) and the mean JS between each cluster's halves."""
    used = [k for k in range(counts.shape[2]) if int(pairs[k]) > 0]
    total = counts.sum(0)  # (L, K, E)
    between, within = [], []
    for layer in range(total.shape[0]):
        pairs_js = [js_bits(total[layer, a], total[layer, b]) for i, a in enumerate(used) for b in used[i + 1:]]
        halves = [js_bits(counts[0, layer, k], counts[1, layer, k]) for k in used]
        between.append(sum(pairs_js) / len(pairs_js) if pairs_js else float("nan"))
        within.append(sum(halves) / len(halves) if halves else float("nan"))
    share = total.sum(0).double()
    share = (share / share.sum(-1, keepdim=True).clamp(min=1)).tolist()  # (K, E) over all layers
    return {"clusters_used": used, "pairs_per_cluster": pairs.tolist(), "js_between_clusters": between,
            "js_within_cluster_halves": within, "share_all_layers": share, "counts": total.tolist()}


def heatmap(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(summary["counts"], dtype=torch.double)  # (L, K, E)
    used = summary["clusters_used"]
    n_layers = counts.shape[0]
    panels = [("layer 1", counts[0]), (f"layer {n_layers // 2 + 1}", counts[n_layers // 2]),
              (f"layer {n_layers}", counts[-1]), ("all layers", counts.sum(0))]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.5 * len(used) + 1.6))
    for ax, (name, c) in zip(axes, panels):
        c = c[used]
        share = c / c.sum(-1, keepdim=True).clamp(min=1)
        ax.imshow(share.numpy(), aspect="auto", cmap="viridis", vmin=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(used)), [f"cluster {k}" for k in used] if ax is axes[0] else [""] * len(used))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def initial_explainer(run: Path, dataset):
    """The run's GaVaMoE at step 0: its config, its stage 1 and its seed, through the recipe's own builder."""
    import yaml

    from explainrec.methods.gavamoe.config import GaVaMoEConfig
    from explainrec.methods.gavamoe.explainer import gavamoe_explainer
    from explainrec.methods.gavamoe.recipe import initial_model

    saved = yaml.safe_load((run / "config.yaml").read_text())
    cfg = GaVaMoEConfig.from_dict(saved["config"])
    model, tokenizer, _ = initial_model(cfg, run / "stage1")
    return gavamoe_explainer(model, tokenizer, dataset.users, dataset.items, method="gavamoe", info={},
                             profiles=cfg.profiles)


def main() -> None:
    from explainrec.data import load_dataset
    from explainrec.methods.model_folder import load_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of the split")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="folder for gates.json and the heatmaps")
    ap.add_argument("--init", action="store_true", help="also measure each run's model before its first step")
    args = ap.parse_args()
    dataset = load_dataset(args.data)
    results = {}
    jobs = [(run, False) for run in args.runs] + ([(run, True) for run in args.runs] if args.init else [])
    for run, at_init in jobs:
        explainer = initial_explainer(run, dataset) if at_init else load_run(run)
        counts, pairs = usage_counts(explainer, dataset, args.split, args.limit, args.batch_size)
        s = summarise(counts, pairs)
        results[str(run) + (" (step 0)" if at_init else "")] = s
        b, w = torch.tensor(s["js_between_clusters"]), torch.tensor(s["js_within_cluster_halves"])
        print(f"{run}{' at step 0' if at_init else ''}: {sum(pairs.tolist())} {args.split} pairs, clusters used {s['clusters_used']} "
              f"(pairs {[pairs.tolist()[k] for k in s['clusters_used']]})")
        print(f"  JS between clusters (bits), mean over layers {b.nanmean():.4f}, max {b.max():.4f} at layer "
              f"{int(b.argmax()) + 1}; noise floor (halves of a cluster) {w.nanmean():.4f}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            name = "-".join(run.parts[-3:]) + ("-step0" if at_init else "")
            heatmap(s, args.out / f"gates-{name}.png", f"{name}: expert share per cluster gate ({args.split})")
    if args.out:
        (args.out / "gates.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
