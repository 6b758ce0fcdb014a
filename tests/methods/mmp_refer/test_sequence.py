"""User and item vectors: the encoder choice, training helps, mean pooling, SASRec causality, the ablation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.data.schema import DataError
from explainrec.methods.mmp_refer.config import RQVAEConfig, VectorConfig
from explainrec.methods.mmp_refer.content import ItemContent
from explainrec.methods.mmp_refer.rqvae import train_rqvae
from explainrec.methods.mmp_refer.sequence import (
    SASRec, UserItemVectors, choose_encoder, train_sequences, train_vectors,
)


@pytest.fixture(scope="module")
def setup():
    """Synthetic data whose item content carries its structure: a bag of the item's feature words (+ noise), and
    a random projection of it as the second view."""
    ds = make_synthetic(n_users=150, n_items=80, n_types=3, seed=4)
    words = sorted({w for e in ds.examples for w in e.features})
    bow = np.zeros((ds.n_items, len(words)), dtype=np.float32)
    for e in ds.examples:
        bow[e.item, [words.index(w) for w in e.features]] = 1.0
    rng = np.random.default_rng(0)
    views = {"title": bow + 0.1 * rng.standard_normal(bow.shape).astype(np.float32),
             "profile": (bow @ rng.standard_normal((len(words), 10))).astype(np.float32)}
    content = ItemContent(views=views, present={k: np.ones(ds.n_items, bool) for k in views}, source="bow")
    rq = train_rqvae(content, RQVAEConfig(epochs=2, warmup_epochs=1, levels=2, latent=8, hidden=16))
    return ds, content, rq


FAST = dict(dim=16, heads=2, negatives=32, batch_size=32, lr=3e-3)


def test_training_puts_users_near_their_future_items(setup):
    ds, content, rq = setup
    untrained = train_vectors(ds, content, rq, VectorConfig(epochs=0, **FAST))
    trained = train_vectors(ds, content, rq, VectorConfig(epochs=8, **FAST))
    assert trained.encoder == "mean" and "no timestamps" in trained.reason
    print(untrained.report["valid_recall@20"], "->", trained.report["valid_recall@20"])
    assert trained.report["valid_recall@20"] > untrained.report["valid_recall@20"] + 0.15
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]
    assert trained.user.shape == (ds.n_users, 16) and trained.item.shape == (ds.n_items, 16)
    assert trained.node_table().shape == (ds.n_users + ds.n_items, 16)


def test_mean_encoder_user_vector_is_the_mean_of_the_train_items(setup):
    ds, content, rq = setup
    vec = train_vectors(ds, content, rq, VectorConfig(epochs=1, **FAST))
    indptr, items = train_sequences(ds, ordered=False)
    for u in (0, 7, 42):
        mine = items[indptr[u]: indptr[u + 1]]
        assert torch.allclose(vec.user[u], vec.item[torch.from_numpy(mine)].mean(0), atol=1e-5)
    back = UserItemVectors.from_tensors(vec.tensors(), vec.meta())
    assert torch.equal(back.user, vec.user) and back.encoder == "mean"


def test_encoder_choice_follows_the_timestamps(setup):
    ds, content, rq = setup
    assert choose_encoder(ds, "auto")[0] == "mean"
    with pytest.raises(DataError, match="no timestamps"):
        choose_encoder(ds, "sasrec")
    timed = make_synthetic(n_users=150, n_items=80, n_types=3, seed=4)
    timed.interactions.timestamp = np.arange(len(timed.interactions), dtype=np.float64)[::-1].copy()
    assert choose_encoder(timed, "auto")[0] == "sasrec"
    indptr, items = train_sequences(timed, ordered=True)
    inter = timed.interactions.of_split("train")
    u0 = inter.item[inter.user == 0][::-1]  # timestamps run backwards through the file
    assert items[indptr[0]: indptr[1]].tolist() == u0.tolist()
    vec = train_vectors(timed, content, rq, VectorConfig(epochs=2, **FAST))
    assert vec.encoder == "sasrec" and torch.isfinite(vec.user).all()
    assert vec.history[-1]["loss"] < vec.history[0]["loss"] + 0.5


def test_sasrec_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    model = SASRec(8, max_len=6, blocks=2, heads=2, dropout=0.0).eval()
    seq = torch.randn(1, 4, 8)
    pad = torch.zeros(1, 4, dtype=torch.bool)
    out = model(seq, pad)
    changed = seq.clone()
    changed[0, 3] = torch.randn(8)  # the last item must not affect earlier positions (a random change: a constant
    # shift would vanish in the layer norms)
    out2 = model(changed, pad)
    assert torch.allclose(out[0, :3], out2[0, :3], atol=1e-6) and not torch.allclose(out[0, 3], out2[0, 3])
    # left padding: the same items behind two pad slots give the same last output
    padded = torch.cat([torch.randn(1, 2, 8) * 100, seq], 1)
    out3 = model(padded, torch.tensor([[True, True, False, False, False, False]]))
    assert torch.allclose(out3[0, -1], out[0, -1], atol=1e-5)
    assert torch.isfinite(out3).all()


def test_without_quantised_parts_the_ablation_trains_and_codebooks_train_otherwise(setup):
    ds, content, rq = setup
    plain = train_vectors(ds, content, None, VectorConfig(epochs=1, use_quantised=False, **FAST))
    assert plain.report["use_quantised"] is False and torch.isfinite(plain.item).all()
    with pytest.raises(ValueError, match="needs the RQ-VAE"):
        train_vectors(ds, content, None, VectorConfig(epochs=1, **FAST))
    # the codebooks are trainable: the quantised part of the item vectors changes with training
    from explainrec.methods.mmp_refer import sequence

    seen = {}
    original = sequence._final_vectors

    def spy(model, *args, **kwargs):
        seen["codebook"] = model.tower.codebooks[0].detach().clone()
        return original(model, *args, **kwargs)

    sequence._final_vectors = spy
    try:
        train_vectors(ds, content, rq, VectorConfig(epochs=2, **FAST))
    finally:
        sequence._final_vectors = original
    assert not torch.allclose(seen["codebook"], rq.codebooks["title"])
