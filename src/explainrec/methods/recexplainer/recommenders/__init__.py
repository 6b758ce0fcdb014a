"""The recommenders RecExplainer explains: SASRec, MF with BPR, and the toolkit's LightGCN.

Each is trained on the train split only (``interactions.split == "train"``) and frozen afterwards; the LLM then
learns to imitate it. One model per file (``mf.py``, ``lightgcn.py``, ``sasrec.py``), each with its trainer, behind
one interface, :class:`Recommender` (``base.py``):

    history          every user's train items in time order (timestamps when the data has them, else the
                     interaction table's row order), kept as a CSR in two buffers (``hist_ptr``, ``hist_items``)
    recent_history   (B,) users -> (B, N) their last N history items, left-padded with -1 (oldest first)
    user_vectors     (B, d) the vectors the LLM's user projector reads: MF/LightGCN their table row, SASRec the
                     last-position output of its encoder over the last N history items
    item_vectors     (I, d) the vectors the item projector reads (SASRec: its item embedding table)
    score            (B,) users -> (B, I) dot-product scores, history items masked with -inf (one matmul)
    history_influence  how much each of the last N history items moves score(u, i): SASRec leave-one-out score
                     drop; MF/LightGCN (whose user vector is not a function of the history) the dot product of
                     the history item's vector with the target's

Persisting: ``tensors()`` is a plain ``{name: tensor}`` dict (safetensors-ready: contiguous CPU tensors, nothing
shared, no pickle) and ``config`` a JSON-able dict; :func:`recommender_from_tensors` rebuilds the same model.
Training is seeded by private generators (plus a forked global RNG for dropout), so the caller's RNG is untouched
and the same seed gives the same weights.
"""
from __future__ import annotations

from torch import Tensor

from explainrec.data.schema import Dataset
from explainrec.methods.recexplainer.recommenders.base import DEFAULT_HISTORY_LEN, Recommender, train_histories
from explainrec.methods.recexplainer.recommenders.lightgcn import LightGCNRecommender, train_lightgcn_recommender
from explainrec.methods.recexplainer.recommenders.mf import MFRecommender, train_mf
from explainrec.methods.recexplainer.recommenders.sasrec import SASRecRecommender, train_sasrec

KINDS = ("sasrec", "mf", "lightgcn")
_CLASSES = {"sasrec": SASRecRecommender, "mf": MFRecommender, "lightgcn": LightGCNRecommender}


def default_kind(dataset: Dataset) -> str:
    """``sasrec`` when the interactions carry an order (a timestamp column), else ``lightgcn`` (notes sec. 7)."""
    return "sasrec" if dataset.interactions.timestamp is not None else "lightgcn"


def fit_recommender(dataset: Dataset, kind: str = "auto", *, seed: int = 0, progress: bool = True,
                    **options) -> Recommender:
    """Train the recommender ``kind`` (``auto`` = :func:`default_kind`) on ``dataset``'s train split; frozen.

    ``options`` go to :func:`train_sasrec`, :func:`train_mf` or :func:`train_lightgcn_recommender`.
    """
    kind = default_kind(dataset) if kind == "auto" else kind
    trainers = {"sasrec": train_sasrec, "mf": train_mf, "lightgcn": train_lightgcn_recommender}
    if kind not in trainers:
        raise ValueError(f"unknown recommender {kind!r}; expected 'auto' or one of {KINDS}")
    return trainers[kind](dataset, seed=seed, progress=progress, **options)


def recommender_from_tensors(tensors: dict[str, Tensor], config: dict) -> Recommender:
    """Rebuild a recommender from :meth:`Recommender.tensors` and :attr:`Recommender.config` (frozen, eval mode)."""
    kind = config.get("kind")
    if kind not in _CLASSES:
        raise ValueError(f"unknown recommender kind {kind!r} in config; expected one of {KINDS}")
    return _CLASSES[kind].from_tensors(tensors, config)


def evaluate_recommender(rec: Recommender, dataset: Dataset, split: str = "test", *, ks=(10, 20),
                         user_batch: int = 1024) -> dict[str, dict[str, float]]:
    """Full-ranking HR/Recall/NDCG@k of ``rec`` and of the popularity baseline on ``split`` (train items masked)."""
    from explainrec.modules.lightgcn import split_pairs
    from explainrec.metrics.ranking import popularity_metrics, ranking_metrics

    train, test = split_pairs(dataset, "train"), split_pairs(dataset, split)
    fn = lambda users: rec.score(users, mask_history=False)
    return {
        rec.kind: ranking_metrics(fn, dataset.n_users, dataset.n_items, train, test, ks=ks, user_batch=user_batch),
        "popularity": popularity_metrics(dataset.n_users, dataset.n_items, train, test, ks=ks, user_batch=user_batch),
    }


__all__ = ["DEFAULT_HISTORY_LEN", "KINDS", "LightGCNRecommender", "MFRecommender", "Recommender", "SASRecRecommender",
           "default_kind", "evaluate_recommender", "fit_recommender", "recommender_from_tensors", "train_histories",
           "train_lightgcn_recommender", "train_mf", "train_sasrec"]
