"""The recommenders being explained: train split only, deterministic, vectorised masked scores, the SASRec
sequence signal, leave-one-out influence, and a safetensors round trip."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.methods.recexplainer.recommenders import (
    LightGCNRecommender,
    default_kind,
    evaluate_recommender,
    fit_recommender,
    recommender_from_tensors,
    train_histories,
)


def test_sasrec_beats_popularity_and_mf_on_ordered_data():
    ds = make_synthetic(ordered=True, seed=0)  # 300 users, 200 items, leave-one-out by time
    sasrec = fit_recommender(ds, "sasrec", progress=False, epochs=15, dim=32, batch_size=64, seed=0)
    mf = fit_recommender(ds, "mf", progress=False, epochs=30, dim=32, seed=0)
    s = evaluate_recommender(sasrec, ds, "test", ks=(10,))
    m = evaluate_recommender(mf, ds, "test", ks=(10,))
    assert s["sasrec"]["eval_users"] == ds.n_users
    # the next item follows from the previous ones: only the sequence model can use that
    assert s["sasrec"]["hr@10"] > s["popularity"]["hr@10"] + 0.3
    assert s["sasrec"]["hr@10"] > m["mf"]["hr@10"] + 0.2


def test_history_is_the_train_split_in_time_order(small_ds, small_sasrec):
    inter = small_ds.interactions
    for u in range(small_ds.n_users):
        rows = np.flatnonzero((inter.user == u) & (inter.split == "train"))
        expect = inter.item[rows[np.argsort(inter.timestamp[rows])]].tolist()
        assert small_sasrec.history_of(u) == expect  # no valid/test item, oldest first
    recent = small_sasrec.recent_history(torch.tensor([0, 1])).tolist()
    for u, row in zip((0, 1), recent):
        full = small_sasrec.history_of(u)
        n = small_sasrec.history_len
        assert row == [-1] * max(0, n - len(full)) + full[-n:]
    ptr, items = train_histories(small_ds)
    assert ptr[-1] == len(items) == int((inter.split == "train").sum())
    # the order comes from the timestamps, not from the rows' order in the table
    shuffled = copy.copy(small_ds)
    shuffled.interactions = inter.subset(np.random.default_rng(0).permutation(len(inter)))
    ptr2, items2 = train_histories(shuffled)
    assert np.array_equal(ptr2, ptr) and np.array_equal(items2, items)


@pytest.mark.parametrize("kind", ["sasrec", "mf"])
def test_score_is_masked_dot_product(kind, small_sasrec, small_mf):
    rec = {"sasrec": small_sasrec, "mf": small_mf}[kind]
    users = torch.arange(rec.n_users)
    scores = rec.score(users)  # (U, I)
    assert scores.shape == (rec.n_users, rec.n_items)
    for u in (0, 7, 33):
        raw = rec.user_vectors(torch.tensor([u]))[0] @ rec.item_vectors().T
        hist = rec.history_of(u)
        assert torch.isinf(scores[u, hist]).all() and (scores[u, hist] < 0).all()
        keep = np.setdiff1d(np.arange(rec.n_items), hist)
        assert torch.allclose(scores[u, keep], raw[keep], atol=1e-5)
    assert torch.isfinite(scores).sum() == rec.n_users * rec.n_items - len(rec.hist_items)
    assert torch.allclose(rec.score(users, mask_history=False), rec.user_vectors() @ rec.item_vectors().T, atol=1e-5)


def test_sasrec_user_vector_is_last_position_over_recent_history(small_sasrec):
    rec = small_sasrec
    users = torch.tensor([3, 4])
    out = rec.encode(rec.recent_history(users))  # (2, N, d)
    assert torch.allclose(rec.user_vectors(users), out[:, -1])
    # the vector depends on the history's order (a sequence model), MF's would not
    hist = rec.recent_history(torch.tensor([3]))
    assert not torch.allclose(rec.user_vectors_from_history(hist), rec.user_vectors_from_history(hist.flip(1)))


def test_sasrec_attention_is_causal_and_skips_padding(small_sasrec):
    rec = small_sasrec
    seq = torch.tensor([[-1, -1, 3, 8, 1, 4, 9, 2, 6]])
    changed = seq.clone()
    changed[0, -1] = 11
    a, b = rec.encode(seq), rec.encode(changed)
    assert torch.allclose(a[0, :-1], b[0, :-1])  # earlier positions never see a later item
    assert not torch.allclose(a[0, -1], b[0, -1])
    other_pad = torch.tensor([[-1, -1, 3, 8, 1, 4, 9, 2, 6]])
    shorter = torch.tensor([[3, 8, 1, 4, 9, 2, 6]])  # the same items without the padding columns
    assert torch.allclose(rec.encode(other_pad)[0, -1], rec.encode(shorter)[0, -1], atol=1e-5)


def test_training_is_deterministic_and_leaves_the_global_rng_alone(small_ds):
    before = torch.get_rng_state()
    a = fit_recommender(small_ds, "sasrec", progress=False, epochs=2, dim=8, seed=5)
    b = fit_recommender(small_ds, "sasrec", progress=False, epochs=2, dim=8, seed=5)
    c = fit_recommender(small_ds, "sasrec", progress=False, epochs=2, dim=8, seed=6)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)  # the caller's RNG state must not matter either
    d = fit_recommender(small_ds, "sasrec", progress=False, epochs=2, dim=8, seed=5)
    torch.set_rng_state(before)
    ta, tb, tc, td = a.tensors(), b.tensors(), c.tensors(), d.tensors()
    assert all(torch.equal(ta[k], tb[k]) and torch.equal(ta[k], td[k]) for k in ta)
    assert not torch.equal(ta["item_emb.weight"], tc["item_emb.weight"])
    m1 = fit_recommender(small_ds, "mf", progress=False, epochs=2, dim=8, seed=5)
    m2 = fit_recommender(small_ds, "mf", progress=False, epochs=2, dim=8, seed=5)
    assert torch.equal(m1.user_emb, m2.user_emb) and torch.equal(m1.item_emb, m2.item_emb)


@pytest.mark.parametrize("kind", ["sasrec", "mf", "lightgcn"])
def test_tensors_round_trip_through_safetensors(kind, small_ds, tmp_path):
    from safetensors.torch import load_file, save_file

    rec = fit_recommender(small_ds, kind, progress=False, epochs=2, dim=8, seed=1)
    save_file(rec.tensors(), str(tmp_path / "rec.safetensors"))
    config = json.loads(json.dumps(rec.config))
    assert config["kind"] == kind
    before = torch.get_rng_state()
    back = recommender_from_tensors(load_file(str(tmp_path / "rec.safetensors")), config)
    assert torch.equal(torch.get_rng_state(), before)
    users = torch.arange(small_ds.n_users)
    assert type(back) is type(rec)
    assert torch.equal(back.user_vectors(users), rec.user_vectors(users))
    assert torch.equal(back.score(users), rec.score(users))
    assert not any(p.requires_grad for p in back.parameters())


def test_lightgcn_wrapper_uses_the_toolkit_lightgcn(small_ds):
    from explainrec.modules.lightgcn import train_lightgcn

    rec = fit_recommender(small_ds, "lightgcn", progress=False, epochs=3, dim=8, seed=2)
    ref = train_lightgcn(small_ds, epochs=3, dim=8, seed=2, progress=False)
    assert isinstance(rec, LightGCNRecommender)
    assert torch.equal(rec.user_vectors(), ref.user_emb) and torch.equal(rec.item_vectors(), ref.item_emb)


def test_sasrec_influence_is_the_leave_one_out_score_drop(small_sasrec):
    rec = small_sasrec
    users, items = torch.tensor([2, 9]), torch.tensor([5, 11])
    hist, infl = rec.history_influence(users, items)
    for b in range(2):
        h = hist[b]
        full = float(rec.user_vectors_from_history(h[None])[0] @ rec.item_vectors(items[b:b + 1])[0])
        for j in range(len(h)):
            if h[j] < 0:
                assert torch.isnan(infl[b, j])
                continue
            without = torch.cat([torch.tensor([-1]), h[:j], h[j + 1:]])
            drop = full - float(rec.user_vectors_from_history(without[None])[0] @ rec.item_vectors(items[b:b + 1])[0])
            assert float(infl[b, j]) == pytest.approx(drop, abs=1e-4)


def test_mf_influence_is_the_item_dot_product(small_mf):
    hist, infl = small_mf.history_influence(torch.tensor([4]), torch.tensor([8]))
    valid = hist[0] >= 0
    expect = small_mf.item_vectors(hist[0][valid]) @ small_mf.item_vectors(torch.tensor([8]))[0]
    assert torch.allclose(infl[0][valid], expect, atol=1e-6)


def test_default_kind(small_ds):
    assert default_kind(small_ds) == "sasrec"
    assert default_kind(make_synthetic(n_users=20, n_items=20)) == "lightgcn"
    with pytest.raises(ValueError, match="unknown recommender"):
        fit_recommender(small_ds, "bert4rec")
