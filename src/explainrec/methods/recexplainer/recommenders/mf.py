"""Matrix factorisation trained with BPR: one of the recommenders RecExplainer explains."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainrec.data.schema import DataError, Dataset
from explainrec.methods.recexplainer.recommenders.base import DEFAULT_HISTORY_LEN, Recommender, train_histories
from explainrec.training.loop_utils import progress as progress_bar


class MFRecommender(Recommender):
    """Matrix factorisation: score = <p_u, q_i>, trained with BPR against uniform non-positive items."""

    kind = "mf"

    def __init__(self, n_users: int, n_items: int, dim: int, hist_ptr, hist_items,
                 history_len: int = DEFAULT_HISTORY_LEN, *, init_std: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(n_users, n_items, dim, hist_ptr, hist_items, history_len)
        self.user_emb = nn.Parameter(torch.empty(n_users, dim).normal_(0.0, init_std, generator=generator))
        self.item_emb = nn.Parameter(torch.empty(n_items, dim).normal_(0.0, init_std, generator=generator))

    @classmethod
    def _empty(cls, config, hist_ptr, hist_items):
        return cls(config["n_users"], config["n_items"], config["dim"], hist_ptr, hist_items, config["history_len"])

    def _user_vectors(self, users: Tensor) -> Tensor:
        return self.user_emb[users]

    def _item_table(self) -> Tensor:
        return self.item_emb


def train_mf(
    dataset: Dataset,
    *,
    dim: int = 64,
    epochs: int = 30,
    batch_size: int = 4096,
    lr: float = 5e-3,
    reg: float = 1e-4,
    history_len: int = DEFAULT_HISTORY_LEN,
    seed: int = 0,
    progress: bool = True,
    max_seconds: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> MFRecommender:
    """MF with BPR on the train edges: each epoch visits every edge once with one uniform non-positive negative.

    Loss per batch = mean softplus(-(y_ui - y_uj)) + reg * (|p_u|^2 + |q_i|^2 + |q_j|^2) / 2 (mean over the batch).
    Adam; seeded by ``seed``; ``max_seconds`` stops after the epoch that spends the budget.
    """
    from explainrec.modules.lightgcn import NegativeSampler, split_pairs

    say = echo or (lambda _m: None)
    tr_u, tr_i = split_pairs(dataset, "train")
    if len(tr_u) == 0:
        raise DataError(f"dataset {dataset.name!r}: no train interactions to fit MF on")
    ptr, items = train_histories(dataset)
    gen = torch.Generator().manual_seed(seed)
    model = MFRecommender(dataset.n_users, dataset.n_items, dim, ptr, items, history_len, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = NegativeSampler(tr_u, tr_i, dataset.n_items)
    eu, ei = torch.from_numpy(tr_u), torch.from_numpy(tr_i)
    start = time.perf_counter()
    for epoch in progress_bar(range(epochs), enabled=progress, desc="mf", total=epochs):
        order = torch.randperm(len(eu), generator=gen)
        total = 0.0
        for lo in range(0, len(eu), batch_size):
            idx = order[lo: lo + batch_size]
            u, p = eu[idx], ei[idx]
            n = sampler.sample(u, gen)
            pu, qp, qn = model.user_emb[u], model.item_emb[p], model.item_emb[n]  # (b, d) each
            bpr = F.softplus(-(pu * (qp - qn)).sum(-1)).mean()
            l2 = (pu.pow(2).sum() + qp.pow(2).sum() + qn.pow(2).sum()) / (2 * len(idx))
            loss = bpr + reg * l2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += bpr.item() * len(idx)
        model.train_log.append({"epoch": epoch + 1, "bpr": total / len(eu)})
        say(f"[mf] epoch {epoch + 1}/{epochs} bpr {total / len(eu):.4f}")
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    model.train_config = dict(dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, reg=reg, seed=seed)
    return model.eval().requires_grad_(False)
