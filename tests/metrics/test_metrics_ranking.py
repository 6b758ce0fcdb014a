"""Ranking metrics: hand-computed full-ranking HR/Recall/NDCG, agreement with LightGCN's own, list metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explainrec.metrics.ranking import (
    candidate_list_metrics,
    embedding_score_fn,
    graded_ndcg,
    popularity_metrics,
    popularity_scores,
    ranking_metrics,
)

SCORES = torch.tensor([
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # user 0: train {0}, test {2, 5}
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # user 1: train {4, 5}, test {3}
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # user 2: its only test pair is also a train pair -> not evaluated
])
TRAIN = (np.array([0, 1, 1, 2]), np.array([0, 5, 4, 1]))
TEST = (np.array([0, 0, 1, 2]), np.array([2, 5, 3, 1]))


def fixed(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users].clone()


def test_hand_computed_full_ranking():
    m = ranking_metrics(fixed, 3, 6, TRAIN, TEST, ks=(1, 2))
    assert m["eval_users"] == 2
    # user 0 ranks 1,2,3,4,5 (0 masked): top-2 = [1, 2] -> one hit at rank 1; user 1 ranks 3,2,1,0: hit at rank 0
    ndcg_u0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["hr@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["ndcg@2"] == pytest.approx((ndcg_u0 + 1.0) / 2)
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["ndcg@1"] == pytest.approx(0.5)


def test_train_items_are_masked():
    # without masking user 0 would rank its train item 0 first; with k=1 a hit needs item 2 or 5 first
    only_u0 = (np.array([0]), np.array([1]))
    m = ranking_metrics(fixed, 3, 6, TRAIN, only_u0, ks=(1,))
    assert m["hr@1"] == 1.0  # item 1 is the best non-train item of user 0


def test_empty_test_set():
    m = ranking_metrics(fixed, 3, 6, TRAIN, (np.array([2]), np.array([1])), ks=(5,))
    assert m["eval_users"] == 0 and math.isnan(m["ndcg@5"])


def test_batched_full_ranking_equals_a_per_user_loop():
    """The vectorised, batched metrics against a plain loop over users (what the definitions say, written out)."""
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    gen = torch.Generator().manual_seed(0)
    u_emb, i_emb = torch.randn(n_users, 8, generator=gen), torch.randn(n_items, 8, generator=gen)
    pairs = rng.integers(0, [n_users, n_items], size=(900, 2))
    train = (pairs[:700, 0], pairs[:700, 1])
    test = (pairs[700:, 0], pairs[700:, 1])
    ours = ranking_metrics(embedding_score_fn(u_emb, i_emb), n_users, n_items, train, test, ks=(10, 20), user_batch=7)
    seen = {(int(u), int(i)) for u, i in zip(*train)}
    for k in (10, 20):
        hr, rec, ndcg, n = [], [], [], 0
        for u in range(n_users):
            truth = {int(i) for uu, i in zip(*test) if uu == u and (u, int(i)) not in seen}
            if not truth:
                continue
            n += 1
            scores = (u_emb[u] @ i_emb.T).tolist()
            ranked = [i for i in sorted(range(n_items), key=lambda i: -scores[i]) if (u, i) not in seen][:k]
            hits = [i in truth for i in ranked]
            hr.append(float(any(hits)))
            rec.append(sum(hits) / len(truth))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
            ndcg.append(sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h) / idcg)
        assert ours["eval_users"] == n
        assert ours[f"hr@{k}"] == pytest.approx(np.mean(hr), abs=1e-9)
        assert ours[f"recall@{k}"] == pytest.approx(np.mean(rec), abs=1e-9)
        assert ours[f"ndcg@{k}"] == pytest.approx(np.mean(ndcg), abs=1e-9)


def test_popularity_baseline():
    train = (np.array([0, 1, 2, 2, 3, 3]), np.array([3, 3, 3, 1, 1, 0]))  # item 3: 3x, item 1: 2x, item 0: 1x
    assert popularity_scores(train[1], 5).tolist() == [1, 2, 0, 3, 0]
    test = (np.array([0, 2]), np.array([1, 4]))
    m = popularity_metrics(4, 5, train, test, ks=(1, 2))
    # user 0 (train {3}) gets item 1 first: a hit; user 2 (train {3, 1}) gets item 0, then a 0-count item
    assert m["eval_users"] == 2
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["recall@1"] == pytest.approx(0.5)


def test_graded_ndcg():
    truth = ["a", "b", "c", "d", "e"]
    assert graded_ndcg(truth, truth) == pytest.approx(1.0)
    ideal = 1000 + 100 / math.log2(3) + 10 / 2 + 1 / math.log2(5)
    swapped = ["b", "a", "c", "d", "e"]
    assert graded_ndcg(swapped, truth) == pytest.approx((100 + 1000 / math.log2(3) + 10 / 2 + 1 / math.log2(5)) / ideal)
    # missing and unknown candidates gain nothing; a repeat counts once
    assert graded_ndcg(["x", "a"], truth) == pytest.approx((1000 / math.log2(3)) / ideal)
    assert graded_ndcg(["a", "a"], truth) == pytest.approx(1000 / ideal)
    # a random order scores about 0.61 (the paper's Random row)
    rng = np.random.default_rng(0)
    mean = np.mean([graded_ndcg(list(rng.permutation(truth)), truth) for _ in range(4000)])
    assert mean == pytest.approx(0.613, abs=0.01)


def test_candidate_list_metrics():
    m = candidate_list_metrics([["x", "t", "y"], ["t"], ["a", "b"]], ["t", "t", "t"], k=5)
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert candidate_list_metrics([["a", "b", "t"]], ["t"], k=2)["hr@2"] == 0.0
    with pytest.raises(ValueError):
        candidate_list_metrics([["a"]], [], k=1)
