"""RecExplainer (Lei et al., KDD 2024, arXiv 2311.10947): an LLM aligned to a trained recommender explains it.

Pieces, in the order they run:

* :mod:`~explainrec.methods.recexplainer.recommenders` -- the recommender being explained (SASRec, MF-BPR,
  LightGCN), trained on the train split and frozen; one interface (user/item vectors, masked scores).
* :mod:`~explainrec.methods.recexplainer.alignment_data` -- alignment tasks 1-6 labelled by that recommender
  (never by the dataset), in the behaviour / intention / hybrid variants, written as JSONL.
* :mod:`~explainrec.methods.recexplainer.modeling` -- :class:`RecExplainerModel`: any LLaMA-family LM plus two
  projectors whose outputs are added at the ``<user>``/``<item>`` placeholders; the batch collate.
* :mod:`~explainrec.methods.recexplainer.alignment_eval` -- the paper's alignment metrics (T1 HR/NDCG@5, T2 graded
  NDCG@5, T3 Yes/No accuracy, T6 history coverage) and the random / popularity baselines.
* :mod:`~explainrec.methods.recexplainer.explanation_checks` -- automatic stand-ins for the paper's GPT-4 judge:
  decision agreement, score probe, grounding, attribution, counterfactual.

Submodules are imported on use: the registry entry reads the settings without loading torch.
"""
