"""XRec (Ma et al., 2024, arXiv 2406.02377): LLM explanations conditioned on collaborative (graph) embeddings.

Pieces, in the order they run (the shared blocks it builds on live in :mod:`explainrec.modules`):

* :mod:`~explainrec.modules.lightgcn` -- the collaborative tokenizer: LightGCN + BPR on the train graph, trained
  as the ``lightgcn`` stage (:mod:`~explainrec.methods.xrec.lightgcn_method`).
* :mod:`~explainrec.modules.moe_adaptor` -- :class:`MoEAdaptor`, behaviour space -> LLM token space.
* :mod:`~explainrec.methods.xrec.injection` -- input splice + per-layer q/k/v injection via hooks.
* :mod:`~explainrec.methods.xrec.modeling` -- :class:`XRecModel` (frozen LLM + two adaptors).
* :mod:`~explainrec.methods.xrec.prompting` -- :func:`xrec_prompt`.
"""
from explainrec.methods.xrec.injection import XRecInjection
from explainrec.methods.xrec.modeling import XRecModel, XRecOutput
from explainrec.methods.xrec.prompting import xrec_prompt

__all__ = ["XRecInjection", "XRecModel", "XRecOutput", "xrec_prompt"]
