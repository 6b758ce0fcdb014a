"""Building blocks more than one method uses, so that method folders stand side by side (none imports a sibling).

* :mod:`~explainrec.modules.lightgcn` -- LightGCN + BPR on the train graph: XRec's collaborative tokenizer, one of
  RecExplainer's recommenders, the ranking metrics every graph model is scored with.
* :mod:`~explainrec.modules.moe_adaptor` -- :class:`MoEAdaptor`, a dense mixture of whitening experts from a
  behaviour space into an LLM's token space (XRec's adaptor, MMP-Refer's graph projector).
"""
