"""A loaded GaVaMoE as an :class:`~explainrec.methods.base.Explainer`: each explanation comes with its cluster
(the gate its pair was routed through) and the experts that fired most while it was written."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from explainrec.llm.hooks import GenerationHooks
from explainrec.methods.base import Explainer, Prepared
from explainrec.methods.gavamoe.modeling import GaVaMoE
from explainrec.methods.gavamoe.prompting import prompt_for
from explainrec.methods.gavamoe.routing import routing
from explainrec.methods.llm_method import pair_ids

TOP_EXPERTS = 3


def gavamoe_explainer(model: GaVaMoE, tokenizer, users, items, *, method: str, info: dict,
                      profiles: bool = True) -> Explainer:
    """Wrap a model (put in eval mode: adaptor dropout and gate noise are training-only) and its id maps; unseen ids
    take the model's cold-start ("unknown") rows. ``profiles``: the prompt setting the model was trained with."""

    model.eval()

    def prepare(pairs) -> Prepared:
        user, item = pair_ids(model, pairs, users, items)
        with torch.no_grad():
            clusters = model.clusters(user, item)
        n_experts = _n_experts(model)
        usage = torch.zeros(len(pairs), max(n_experts, 1), dtype=torch.long)
        prefix_usage: dict[int, torch.Tensor] = {}  # gate -> expert counts of the shared prompt prefix, run once per gate
        pad = tokenizer.pad_token_id

        @contextmanager
        def batch_context(ids: torch.Tensor, index: torch.Tensor):
            # padding is left out of the counts: where it sits depends on how the batch was laid out
            mask = (ids != pad).long() if pad is not None else None
            with routing(clusters[index], token_mask=mask, track_samples=n_experts > 0) as state:
                yield
            if state.sample_usage is not None:
                usage[index.cpu()] += state.sample_usage.cpu()

        @contextmanager
        def prefix_context(_ids: torch.Tensor, index: torch.Tensor):
            with routing(clusters[index], track_samples=n_experts > 0) as state:
                yield
            if state.sample_usage is not None:
                for row, gate in enumerate(clusters[index].tolist()):
                    prefix_usage[gate] = state.sample_usage[row].cpu()

        def extras(i: int, _text: str) -> dict:
            if not n_experts:
                return {"cluster": int(clusters[i]), "top_experts": []}
            counts = usage[i] + prefix_usage.get(int(clusters[i]), 0)
            return {"cluster": int(clusters[i]), "top_experts": counts.topk(min(TOP_EXPERTS, n_experts)).indices.tolist()}

        # the prompt prefix before the soft tokens is the same text for every pair, but its hidden states differ by
        # gate: it is run once per cluster and its expert counts are added to every pair of that cluster
        return Prepared(cold_start=[bool(u < 0 or it < 0) for u, it in zip(user.tolist(), item.tolist())],
                        hooks=GenerationHooks(embed_fn=lambda ids, index: model.embed(ids, user[index], item[index]),
                                              batch_context=batch_context,
                                              prefix_group=lambda index: clusters[index],
                                              prefix_context=prefix_context),
                        extras=extras)

    return Explainer(method=method, llm=model.llm, tokenizer=tokenizer, prompt=prompt_for(profiles), prepare=prepare,
                     model=model, info=info, known_users=users, known_items=items)


def _n_experts(model: GaVaMoE) -> int:
    from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE

    return next((m.n_experts for m in model.llm.modules() if isinstance(m, MultiGatedMoE)), 0)
