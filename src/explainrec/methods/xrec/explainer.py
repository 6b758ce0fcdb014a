"""A loaded XRec model as an :class:`~explainrec.methods.base.Explainer`: every generation batch runs inside the
injection scope that puts the adapted user/item vectors into every layer."""
from __future__ import annotations

from explainrec.llm.hooks import GenerationHooks
from explainrec.methods.base import Explainer, Prepared
from explainrec.methods.llm_method import pair_ids
from explainrec.methods.xrec.modeling import XRecModel
from explainrec.methods.xrec.prompting import xrec_prompt


def xrec_explainer(model: XRecModel, tokenizer, users, items, *, method: str, info: dict) -> Explainer:
    """Wrap a model (put in eval mode: adaptor dropout and gate noise are training-only) and its id maps; unseen ids read the cold-start row (the mean known embedding)."""

    model.eval()

    def prepare(pairs) -> Prepared:
        user, item = pair_ids(model, pairs, users, items)
        known_u, known_i = model.map_ids(user, item)
        return Prepared(
            cold_start=[bool(u == model.n_users or i == model.n_items) for u, i in zip(known_u.tolist(), known_i.tolist())],
            # the injection only touches the placeholder positions, so the shared prompt prefix can be run once
            hooks=GenerationHooks(
                batch_context=lambda ids, index: model.generation_context(ids, user[index], item[index]),
                prefix_reuse=True))

    return Explainer(method=method, llm=model.llm, tokenizer=tokenizer, prompt=xrec_prompt, prepare=prepare,
                     model=model, info=info, known_users=users, known_items=items)
