"""A loaded RecExplainer as an :class:`~explainrec.methods.base.Explainer`: asked whether the user will like the
item (Task 3's question, its Yes/No logits) and then why, as the recommender would, it answers with a decision and
an explanation of it; each row also carries the recommender's own verdict on the pair, so a reader sees whether the
explanation agrees with what it explains."""
from __future__ import annotations

import torch

from explainrec.llm.hooks import GenerationHooks
from explainrec.methods.base import Explainer, Prepared


def recexplainer_explainer(model, tokenizer, rec, names: list[str], users, items, *, variant: str, method: str,
                           info: dict) -> Explainer:
    """Wrap a model, its recommender, the item names and the id maps.

    A pair whose user or item the recommender never saw has no vector to read: its prompt takes the titles-only
    (behaviour) form, with the item called by its title when the pair gives one, and the row says ``cold_start``.
    """
    from explainrec.methods.llm_method import pair_ids
    from explainrec.methods.recexplainer.alignment_eval import decisions
    from explainrec.methods.recexplainer.explanation_checks import explanation_prompt

    model.eval()

    def asker(pair, u: int, i: int):
        """``(ask, history)`` of one pair (``u``/``i``: the recommender's rows, -1 if unknown); ``ask(decision)`` gives
        ``(messages, soft ids)``: the decision question (None), or the request to explain that decision."""
        hist = [h for h in rec.recent_history(torch.tensor([u])).tolist()[0] if h >= 0] if u >= 0 else []
        if u >= 0 and i >= 0:
            return (lambda decision: explanation_prompt(u, hist, i, names, variant, decision)), hist
        title = names[i] if i >= 0 else (pair.title or f"item {pair.item}")
        return (lambda decision: explanation_prompt(max(u, 0), hist, len(names), names + [title], "behaviour",
                                                    decision)), hist

    def prompt(pair) -> list[dict]:
        u, i = pair_ids(rec, [pair], users, items)
        return asker(pair, int(u[0]), int(i[0]))[0](None)[0]

    def prepare(pairs) -> Prepared:
        u, i = pair_ids(rec, pairs, users, items)
        askers = [asker(p, a, b) for p, a, b in zip(pairs, u.tolist(), i.tolist())]
        first = [ask(None) for ask, _ in askers]
        said = decisions(model, tokenizer, [{"prompt": m, "soft_ids": s} for m, s in first])
        asked = [(*ask(bool(d)), hist) for (ask, hist), d in zip(askers, said)]
        known = (u >= 0) & (i >= 0)
        score = torch.full((len(pairs),), float("nan"))
        quantile = torch.full((len(pairs),), float("nan"))
        if bool(known.any()):
            with torch.no_grad():
                rows = rec.score(u[known])  # (k, I), history masked: the recommender's view of the candidates
                s = rows.gather(1, i[known].unsqueeze(1)).squeeze(1)
                finite = torch.isfinite(rows)
                quantile[known] = ((rows > s.unsqueeze(1)) & finite).sum(1).float() / finite.sum(1).clamp(min=1)
                score[known] = s

        def extras(k: int, text: str) -> dict:
            q = float(quantile[k])
            verdict = None if q != q else ("yes" if q < 0.2 else "no" if q >= 0.5 else "undecided")
            return {"decision": "yes" if said[k] else "no",
                    "recommender_score": None if q != q else float(score[k]),
                    "recommender_top_fraction": None if q != q else round(q, 4),
                    "recommender_decision": verdict, "history": [names[h] for h in asked[k][2]]}

        return Prepared(cold_start=[not bool(k) for k in known.tolist()], messages=[a[0] for a in asked],
                        hooks=GenerationHooks(embed_fn=model.embed_fn([a[1] for a in asked])), extras=extras)

    return Explainer(method=method, llm=model.llm, tokenizer=tokenizer, prompt=prompt, prepare=prepare, model=model,
                     info={**info, "variant": variant, "recommender": rec.kind}, known_users=users, known_items=items)
