"""The toolkit's LightGCN (:mod:`explainrec.modules.lightgcn`) as a recommender RecExplainer explains."""
from __future__ import annotations

import torch
from torch import Tensor

from explainrec.data.schema import Dataset
from explainrec.methods.recexplainer.recommenders.base import DEFAULT_HISTORY_LEN, Recommender, train_histories


class LightGCNRecommender(Recommender):
    """The toolkit's LightGCN (``explainrec.modules.lightgcn``): its final layer-mean embeddings as tables."""

    kind = "lightgcn"

    def __init__(self, user_emb: Tensor, item_emb: Tensor, hist_ptr, hist_items,
                 history_len: int = DEFAULT_HISTORY_LEN) -> None:
        super().__init__(user_emb.shape[0], item_emb.shape[0], user_emb.shape[1], hist_ptr, hist_items, history_len)
        self.register_buffer("user_emb", user_emb.detach().float().clone())  # (U, d)
        self.register_buffer("item_emb", item_emb.detach().float().clone())  # (I, d)

    @classmethod
    def from_result(cls, result, dataset: Dataset, history_len: int = DEFAULT_HISTORY_LEN) -> LightGCNRecommender:
        """Wrap a :class:`~explainrec.modules.lightgcn.LightGCNResult` trained on ``dataset``."""
        if result.user_emb.shape[0] != dataset.n_users or result.item_emb.shape[0] != dataset.n_items:
            raise ValueError("the LightGCN result does not match the dataset's users/items")
        ptr, items = train_histories(dataset)
        model = cls(result.user_emb, result.item_emb, ptr, items, history_len)
        model.train_log = list(result.history)
        model.train_config = dict(result.config)
        return model.eval()

    @classmethod
    def _empty(cls, config, hist_ptr, hist_items):
        return cls(torch.zeros(config["n_users"], config["dim"]), torch.zeros(config["n_items"], config["dim"]),
                   hist_ptr, hist_items, config["history_len"])

    def _user_vectors(self, users: Tensor) -> Tensor:
        return self.user_emb[users]

    def _item_table(self) -> Tensor:
        return self.item_emb


def train_lightgcn_recommender(dataset: Dataset, *, history_len: int = DEFAULT_HISTORY_LEN, seed: int = 0,
                               progress: bool = True, **lightgcn_kwargs) -> LightGCNRecommender:
    """:func:`~explainrec.modules.lightgcn.train_lightgcn` (its keyword arguments pass through), wrapped."""
    from explainrec.modules.lightgcn import train_lightgcn

    result = train_lightgcn(dataset, seed=seed, progress=progress, **lightgcn_kwargs)
    return LightGCNRecommender.from_result(result, dataset, history_len)
