"""Generate explanations with a trained GaVaMoE: each output comes with its cluster and the experts that fired most."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from explainrec.data.prompts import render_prompt
from explainrec.data.schema import Dataset, Example, IdMap
from explainrec.io import atomic_write_jsonl
from explainrec.llm.generate import GenerationStats, generate_texts
from explainrec.methods.gavamoe.modeling import GaVaMoE
from explainrec.methods.gavamoe.prompting import gavamoe_prompt
from explainrec.methods.gavamoe.routing import routing

TOP_EXPERTS = 3


def model_ids(raw: list[str], id_map: IdMap) -> torch.Tensor:
    """Raw ids -> the model's rows; ids the model never saw become -1 (its cold-start "unknown" row)."""
    return torch.tensor([id_map.encode(r, default=-1) for r in raw], dtype=torch.long)


def explain_pairs(
    model: GaVaMoE,
    tokenizer,
    examples: list[Example],
    raw_users: list[str],
    raw_items: list[str],
    users: IdMap,
    items: IdMap,
    *,
    stats: GenerationStats | None = None,
    **generation,
) -> list[dict]:
    """Explanations for ``examples`` (whose raw ids are given), with cluster, cold-start flag and top experts."""
    device = next(model.parameters()).device
    user = model_ids(raw_users, users).to(device)
    item = model_ids(raw_items, items).to(device)
    clusters = model.clusters(user, item)
    n_experts = _n_experts(model)
    usage = torch.zeros(len(examples), max(n_experts, 1), dtype=torch.long)

    @contextmanager
    def batch_context(_ids: torch.Tensor, index: torch.Tensor):
        with routing(clusters[index], track_samples=n_experts > 0) as state:
            yield
        if state.sample_usage is not None:
            usage[index.cpu()] += state.sample_usage.cpu()

    prompts = [render_prompt(tokenizer, gavamoe_prompt(ex)) for ex in examples]
    texts = generate_texts(
        model.llm, tokenizer, prompts, stats=stats,
        embed_fn=lambda ids, index: model.embed(ids, user[index], item[index]),
        batch_context=batch_context, **generation,
    )
    rows = []
    for b, (ex, text) in enumerate(zip(examples, texts)):
        top = usage[b].topk(min(TOP_EXPERTS, n_experts)).indices.tolist() if n_experts else []
        rows.append({
            "user": raw_users[b], "item": raw_items[b], "prediction": text, "reference": ex.explanation,
            "features": list(ex.features), "cluster": int(clusters[b]), "top_experts": top,
            "cold_start": bool(user[b] < 0 or item[b] < 0),
        })
    return rows


def explain_split(run_dir: str | Path, dataset: Dataset, split: str = "test", *, limit: int | None = None,
                  out: str | Path | None = None, **generation) -> tuple[list[dict], GenerationStats]:
    """Explain every pair of ``dataset``'s split with the model saved in ``run_dir``; optionally write JSONL."""
    from explainrec.data.splits import sparsity_buckets
    from explainrec.methods.gavamoe.persist import load

    model, tokenizer, users, items, _ = load(run_dir)
    examples = dataset.split_examples(split)[:limit]
    stats = GenerationStats()
    rows = explain_pairs(
        model, tokenizer, examples,
        [dataset.users.decode(e.user) for e in examples], [dataset.items.decode(e.item) for e in examples],
        users, items, stats=stats, **generation,
    )
    for row, bucket in zip(rows, sparsity_buckets(dataset, examples)):
        row["bucket"] = bucket
        row["method"] = "gavamoe"
    if out is not None:
        atomic_write_jsonl(out, rows)
    return rows, stats


def _n_experts(model: GaVaMoE) -> int:
    from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE

    return next((m.n_experts for m in model.llm.modules() if isinstance(m, MultiGatedMoE)), 0)
