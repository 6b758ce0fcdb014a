"""LightGCN: propagation against a dense reference, BPR training beats random, metrics by hand, save/load."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.data.schema import DataError
from explainrec.modules.lightgcn import (
    LightGCN,
    NegativeSampler,
    normalized_adjacency,
    propagate,
    ranking_metrics,
    split_pairs,
    train_lightgcn,
)

# 2 users, 3 items: u0-i0, u0-i1, u1-i1, u1-i2
EDGES_U = np.array([0, 0, 1, 1])
EDGES_I = np.array([0, 1, 1, 2])


def dense_reference(n_users: int, n_items: int, users, items) -> torch.Tensor:
    n = n_users + n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    for u, i in zip(users, items):
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]


def test_adjacency_and_propagation_match_dense_reference():
    adj = normalized_adjacency(EDGES_U, EDGES_I, 2, 3)
    ref = dense_reference(2, 3, EDGES_U, EDGES_I)
    assert adj.layout == torch.sparse_csr and adj.dtype == torch.float32
    assert torch.allclose(adj.to_dense().double(), ref, atol=1e-7)
    x = torch.randn(5, 4, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    for layers in (0, 1, 3):
        want = sum(torch.linalg.matrix_power(ref, k) @ x.double() for k in range(layers + 1)) / (layers + 1)
        got = propagate(adj, x, layers)
        assert torch.allclose(got.double(), want, atol=1e-6), layers


def test_propagation_gradient_matches_dense_autograd():
    adj = normalized_adjacency(EDGES_U, EDGES_I, 2, 3)
    dense = adj.to_dense()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (propagate(adj, x1, 2) * w).sum().backward()
    ((x2 + dense @ x2 + dense @ (dense @ x2)) / 3 * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)


def test_isolated_node_gets_zero_row_not_nan():
    # user 2 and item 3 have no edges
    adj = normalized_adjacency(EDGES_U, EDGES_I, 3, 4).to_dense()
    assert torch.isfinite(adj).all()
    assert adj[2].abs().sum() == 0 and adj[3 + 3].abs().sum() == 0
    model = LightGCN(3, 4, dim=4, layers=2, generator=torch.Generator().manual_seed(0))
    users, items = model(normalized_adjacency(EDGES_U, EDGES_I, 3, 4))
    assert torch.allclose(users[2], model.ego[2] / 3)


def test_ranking_metrics_by_hand():
    # one user, 5 items; scores = item index (item 4 best). Train item 4 is masked, test items {3, 0}.
    user = torch.ones(1, 1)
    items = torch.arange(5, dtype=torch.float32)[:, None]
    m = ranking_metrics(user, items, (np.array([0]), np.array([4])), (np.array([0, 0]), np.array([3, 0])), k=2)
    # top-2 after masking: items 3, 2 -> one hit at rank 1; recall 1/2; ndcg = 1 / (1 + 1/log2(3))
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(1.0 / (1.0 + 1.0 / math.log2(3)))
    assert m["eval_users"] == 1
    # a test pair that is also a train pair is dropped (it could never be ranked)
    m2 = ranking_metrics(user, items, (np.array([0]), np.array([4])), (np.array([0]), np.array([4])), k=2)
    assert m2["eval_users"] == 0 and math.isnan(m2["recall@2"])


def test_negative_sampler_never_returns_a_positive():
    users = np.repeat(np.arange(3), 8)
    items = np.concatenate([np.arange(8), np.arange(2, 10), np.arange(0, 16, 2)])
    sampler = NegativeSampler(users, items, n_items=10)
    q = torch.from_numpy(np.repeat(np.arange(3), 500))
    neg = sampler.sample(q, torch.Generator().manual_seed(0))
    assert not sampler.is_positive(q, neg).any()
    assert neg.min() >= 0 and neg.max() < 10
    assert set(neg[:500].tolist()) == {8, 9}  # user 0 has items 0-7: both free items get drawn
    assert set(neg[500:1000].tolist()) == {0, 1}


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(n_users=150, n_items=80, n_types=4, seed=3)


def test_bpr_training_beats_random_ranking(synthetic):
    result = train_lightgcn(synthetic, dim=16, layers=2, epochs=10, batch_size=256, lr=2e-2, seed=0, progress=False)
    gen = torch.Generator().manual_seed(0)
    random_metrics = ranking_metrics(torch.randn(synthetic.n_users, 16, generator=gen),
                                     torch.randn(synthetic.n_items, 16, generator=gen),
                                     split_pairs(synthetic, "train"), split_pairs(synthetic, "test"))
    assert result.metrics["eval_users"] == random_metrics["eval_users"] > 20
    assert result.metrics["recall@20"] > 1.5 * random_metrics["recall@20"]
    assert result.metrics["ndcg@20"] > 1.5 * random_metrics["ndcg@20"]
    assert result.history[-1]["bpr"] < result.history[0]["bpr"] < math.log(2) + 1e-3
    assert result.user_emb.shape == (150, 16) and result.item_emb.shape == (80, 16)


def test_training_is_seeded_and_leaves_global_rng_alone(synthetic):
    state = torch.get_rng_state()
    a = train_lightgcn(synthetic, dim=8, epochs=1, batch_size=512, seed=5, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_lightgcn(synthetic, dim=8, epochs=1, batch_size=512, seed=5, progress=False)
    assert torch.equal(a.user_emb, b.user_emb) and torch.equal(a.item_emb, b.item_emb)


def test_time_budget_and_validation_history(synthetic):
    result = train_lightgcn(synthetic, dim=8, epochs=5, batch_size=512, eval_every=1, max_seconds=0.0, progress=False)
    assert result.metrics["epochs_done"] == len(result.history) == 1
    assert {"valid_recall@20", "valid_ndcg@20"} <= set(result.history[0])


def test_known_masks_follow_train_interactions(synthetic):
    result = train_lightgcn(synthetic, dim=8, epochs=0, progress=False)
    tr_u, tr_i = split_pairs(synthetic, "train")
    assert torch.equal(result.user_known.nonzero().flatten(), torch.from_numpy(np.unique(tr_u)))
    assert torch.equal(result.item_known.nonzero().flatten(), torch.from_numpy(np.unique(tr_i)))


def test_stage_save_load_roundtrip_and_errors(synthetic, tmp_path):
    from explainrec.methods.xrec.config import LightGCNConfig
    from explainrec.methods.xrec.lightgcn_method import LightGCNStage, load_lightgcn

    cfg = LightGCNConfig(dim=8, epochs=1, batch_size=512)
    result = train_lightgcn(synthetic, **cfg.to_dict(), progress=False)
    LightGCNStage().train(synthetic, tmp_path / "lgcn", cfg, stages={}, resume=False, progress=False,
                          echo=lambda *_: None)
    back = load_lightgcn(tmp_path / "lgcn")
    assert torch.equal(back.user_emb, result.user_emb) and torch.equal(back.item_emb, result.item_emb)
    assert torch.equal(back.user_known, result.user_known) and torch.equal(back.item_known, result.item_known)
    assert back.metrics["recall@20"] == result.metrics["recall@20"]
    assert back.users.raw == synthetic.users.raw and back.items.raw == synthetic.items.raw
    assert not list((tmp_path / "lgcn").glob(".*tmp"))  # the atomic writes left nothing behind

    with pytest.raises(DataError, match="missing: no such folder"):
        load_lightgcn(tmp_path / "missing")
    weights = tmp_path / "lgcn" / "model" / "embeddings.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"embeddings\.safetensors: contents changed"):
        load_lightgcn(tmp_path / "lgcn")


def test_no_train_interactions_is_a_clear_error(synthetic):
    import copy

    ds = copy.copy(synthetic)
    ds.interactions = synthetic.interactions.subset(synthetic.interactions.split != "train")
    with pytest.raises(DataError, match="no train interactions"):
        train_lightgcn(ds, epochs=1, progress=False)
