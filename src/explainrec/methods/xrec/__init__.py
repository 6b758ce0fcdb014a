"""XRec (Ma et al., 2024, arXiv 2406.02377): LLM explanations conditioned on collaborative (graph) embeddings.

Pieces, in the order they run:

* :mod:`~explainrec.methods.xrec.lightgcn` -- the collaborative tokenizer: LightGCN + BPR on the train graph.
* :mod:`~explainrec.methods.xrec.adaptor` -- :class:`MoEAdaptor`, behaviour space -> LLM token space.
* :mod:`~explainrec.methods.xrec.injection` -- input splice + per-layer q/k/v injection via hooks.
* :mod:`~explainrec.methods.xrec.modeling` -- :class:`XRecModel` (frozen LLM + two adaptors).
* :mod:`~explainrec.methods.xrec.prompting` -- :func:`xrec_prompt`.
"""
from explainrec.methods.xrec.adaptor import MoEAdaptor
from explainrec.methods.xrec.injection import XRecInjection
from explainrec.methods.xrec.lightgcn import LightGCN, LightGCNResult, train_lightgcn
from explainrec.methods.xrec.modeling import XRecModel, XRecOutput
from explainrec.methods.xrec.prompting import xrec_prompt

__all__ = ["LightGCN", "LightGCNResult", "MoEAdaptor", "XRecInjection", "XRecModel", "XRecOutput", "train_lightgcn",
           "xrec_prompt"]
