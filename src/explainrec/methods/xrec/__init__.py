"""XRec (Ma et al., 2024, arXiv 2406.02377): LLM explanations conditioned on collaborative (graph) embeddings.

Pieces, in the order they run (the shared blocks it builds on live in :mod:`explainrec.modules`):

* :mod:`~explainrec.modules.lightgcn` -- the collaborative tokenizer: LightGCN + BPR on the train graph, trained
  as the ``lightgcn`` stage (:mod:`~explainrec.methods.xrec.lightgcn_method`).
* :mod:`~explainrec.modules.moe_adaptor` -- :class:`MoEAdaptor`, behaviour space -> LLM token space.
* :mod:`~explainrec.methods.xrec.injection` -- input splice + per-layer q/k/v injection via hooks.
* :mod:`~explainrec.methods.xrec.modeling` -- :class:`XRecModel` (frozen LLM + two adaptors).
* :mod:`~explainrec.methods.xrec.prompting` -- :func:`xrec_prompt`.

Submodules are imported on use: the registry entry reads the settings without loading torch.
"""
