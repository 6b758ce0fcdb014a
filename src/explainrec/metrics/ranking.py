"""Ranking metrics: full-ranking HR/Recall/NDCG@k, a popularity baseline, and the two list metrics of RecExplainer.

Full ranking (recommenders): every item is scored for every evaluated user, the user's train (history) items are
masked, and the top k are compared with the user's held-out items:

    test set   unique test pairs minus train pairs (a masked item could never be ranked)
    HR@k       1 if at least one test item is in the top k, else 0
    Recall@k   hits / |test items of u|
    NDCG@k     DCG / IDCG, DCG = sum over hits at rank r (0-based) of 1 / log2(r + 2), IDCG over min(|test|, k) slots

each averaged over users with at least one test item. Recall@k and NDCG@k are exactly the definitions of
:func:`explainrec.modules.lightgcn.ranking_metrics` (tested to agree), so the numbers compare across methods.
Scores are computed ``user_batch`` users at a time through any ``score_fn(users) -> (b, n_items)``, so an
embedding table, SASRec's sequence encoder or item popularity plug in the same way; nothing loops per user.

List metrics (LLM outputs against the recommender's own answers):

* :func:`graded_ndcg` -- RecExplainer Task 2: five candidates whose gains are 1000/100/10/1/0 by the
  recommender's rank; a random order scores about 0.61.
* :func:`candidate_list_metrics` -- RecExplainer Task 1: HR@k and NDCG@k of a list of generated candidates
  against one target (the recommender's top-1).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]
TASK2_GAINS = (1000.0, 100.0, 10.0, 1.0, 0.0)


def csr_of_pairs(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr (U+1,), indices)`` of a user -> items CSR from an edge list (items sorted within a user)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((items, users))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order]


def gather_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[Tensor, Tensor]:
    """For batch rows ``rows`` (b,): ``(row_in_batch, column)`` of every stored entry, both 1-D, vectorised."""
    starts, counts = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(counts.sum())
    which = np.repeat(np.arange(len(rows)), counts)  # (total,)
    offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    return torch.from_numpy(which), torch.from_numpy(indices[offset])


def embedding_score_fn(user_emb: Tensor, item_emb: Tensor) -> ScoreFn:
    """``users (b,) -> (b, I)`` dot-product scores of two embedding tables."""
    def fn(users: Tensor) -> Tensor:
        return user_emb[users.to(user_emb.device)] @ item_emb.T
    return fn


def popularity_scores(train_items: np.ndarray, n_items: int) -> Tensor:
    """``(I,)`` float32 number of train interactions of every item (the popularity baseline's score)."""
    return torch.from_numpy(np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items).astype(np.float32))


def popularity_score_fn(train_items: np.ndarray, n_items: int) -> ScoreFn:
    """The same popularity ranking for every user: ``users (b,) -> (b, I)``."""
    pop = popularity_scores(train_items, n_items)
    return lambda users: pop.unsqueeze(0).expand(len(users), -1).clone()


@torch.no_grad()
def ranking_metrics(
    score_fn: ScoreFn,
    n_users: int,
    n_items: int,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    ks: Sequence[int] = (10, 20),
    user_batch: int = 1024,
) -> dict[str, float]:
    """HR@k, Recall@k and NDCG@k for every k in ``ks`` of a full ranking with train items masked (module docstring).

    ``train``/``test`` are ``(users, items)`` edge arrays; ``score_fn(users (b,) long) -> (b, n_items)`` scores,
    higher = better (a fresh tensor: it is masked in place). Returns ``{"hr@10": ..., "recall@10": ...,
    "ndcg@10": ..., "eval_users": n}`` (NaN metrics and 0 users when the test set is empty).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must hold positive cut-offs, got {ks}")
    tr_u, tr_i = (np.asarray(a, dtype=np.int64) for a in train)
    te_u, te_i = (np.asarray(a, dtype=np.int64) for a in test)
    te_keys = np.setdiff1d(np.unique(te_u * n_items + te_i), tr_u * n_items + tr_i)
    te_u = te_keys // n_items
    eval_users = np.unique(te_u)
    names = [f"{m}@{k}" for k in ks for m in ("hr", "recall", "ndcg")]
    if len(eval_users) == 0:
        return {**{n: float("nan") for n in names}, "eval_users": 0}
    tr_ptr, tr_idx = csr_of_pairs(tr_u, tr_i, n_users)
    n_rel_all = np.bincount(te_u, minlength=n_users)  # (U,) test items per user
    test_keys = torch.from_numpy(te_keys)
    kmax = min(ks[-1], n_items)
    discount = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float64) + 2.0)  # (k,)
    ideal = torch.cumsum(discount, 0)  # ideal[m-1] = IDCG with m relevant items
    sums = {n: 0.0 for n in names}
    for lo in range(0, len(eval_users), user_batch):
        rows = eval_users[lo: lo + user_batch]
        users = torch.from_numpy(rows)
        scores = score_fn(users).float()  # (b, I)
        r, c = gather_rows(tr_ptr, tr_idx, rows)
        scores[r.to(scores.device), c.to(scores.device)] = -torch.inf
        top = scores.topk(kmax, dim=1).indices.cpu()  # (b, kmax), best first
        hits = torch.isin(users.unsqueeze(1) * n_items + top, test_keys).double()  # (b, kmax)
        n_rel = torch.from_numpy(n_rel_all[rows]).double()  # (b,)
        for k in ks:
            kk = min(k, kmax)
            h = hits[:, :kk]
            sums[f"hr@{k}"] += float((h.sum(1) > 0).sum())
            sums[f"recall@{k}"] += float((h.sum(1) / n_rel).sum())
            idcg = ideal[(n_rel.clamp(max=kk) - 1).long()]
            sums[f"ndcg@{k}"] += float(((h * discount[:kk]).sum(1) / idcg).sum())
    n = len(eval_users)
    return {**{k: v / n for k, v in sums.items()}, "eval_users": int(n)}


def popularity_metrics(
    n_users: int,
    n_items: int,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    ks: Sequence[int] = (10, 20),
    user_batch: int = 1024,
) -> dict[str, float]:
    """:func:`ranking_metrics` of the popularity baseline (items by train interaction count, train items masked)."""
    return ranking_metrics(popularity_score_fn(train[1], n_items), n_users, n_items, train, test, ks=ks,
                           user_batch=user_batch)


# ---------------------------------------------------------------------------------------------------- list metrics


def graded_ndcg(predicted: Sequence[Hashable], truth: Sequence[Hashable], gains: Sequence[float] = TASK2_GAINS) -> float:
    """RecExplainer Task 2: NDCG of ``predicted`` (an ordering of the candidates) with graded gains.

    ``truth`` is the recommender's order (best first); the candidate at true rank r has gain ``gains[r]``. Items of
    ``predicted`` that are not candidates, and repeats, gain 0 (they still take their slot); candidates missing
    from ``predicted`` gain nothing. DCG = sum_r gain(predicted[r]) / log2(r + 2) over the first ``len(truth)``
    slots; the ideal DCG is ``truth``'s own.
    """
    gain_of = {c: float(gains[r]) if r < len(gains) else 0.0 for r, c in enumerate(truth)}
    n = len(truth)
    seen: set = set()
    dcg = 0.0
    for r, c in enumerate(list(predicted)[:n]):
        if c in gain_of and c not in seen:
            dcg += gain_of[c] / math.log2(r + 2)
        seen.add(c)
    idcg = sum(gain_of[c] / math.log2(r + 2) for r, c in enumerate(truth))
    return dcg / idcg if idcg > 0 else float("nan")


def candidate_list_metrics(candidates: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], k: int = 5
                           ) -> dict[str, float]:
    """HR@k and NDCG@k of lists of generated candidates against one target each (RecExplainer Task 1).

    A hit is the target among the first ``k`` candidates; its NDCG is ``1 / log2(rank + 2)`` at its first
    occurrence (one relevant item, so IDCG = 1). Averages over the lists; NaN for none.
    """
    if len(candidates) != len(targets):
        raise ValueError(f"{len(candidates)} candidate lists but {len(targets)} targets")
    if not targets:
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), "n": 0}
    hr = ndcg = 0.0
    for cands, target in zip(candidates, targets):
        top = list(cands)[:k]
        if target in top:
            hr += 1.0
            ndcg += 1.0 / math.log2(top.index(target) + 2)
    n = len(targets)
    return {f"hr@{k}": hr / n, f"ndcg@{k}": ndcg / n, "n": n}
