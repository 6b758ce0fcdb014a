"""RQ-VAE: reconstruction improves with training, codes are used, alignment, k-means, sizes, collisions, seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explainrec.methods.mmp_refer.config import RQVAEConfig
from explainrec.methods.mmp_refer.content import ItemContent
from explainrec.methods.mmp_refer.rqvae import (
    RQVAEResult, ResidualQuantizer, align_loss, codebook_size, collision_rate, kmeans, train_rqvae,
)


def two_views(n: int = 240, seed: int = 0) -> ItemContent:
    """Two views of the same items: each a different random linear map of a shared 6-d latent, plus noise."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 6))
    views = {name: (latent @ rng.standard_normal((6, d)) + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
             for name, d in (("title", 24), ("profile", 20))}
    return ItemContent(views=views, present={k: np.ones(n, dtype=bool) for k in views}, source="test")


FAST = dict(levels=3, latent=8, hidden=32, batch_size=64, lr=3e-3, kmeans_iters=20)


@pytest.fixture(scope="module")
def trained():
    return train_rqvae(two_views(), RQVAEConfig(epochs=25, warmup_epochs=0, **FAST))


def test_reconstruction_improves_with_training_and_codes_are_used(trained):
    hist = trained.history
    first, last = hist[0], hist[-1]
    for v in ("title", "profile"):
        print(v, first[f"{v}_rec"], "->", last[f"{v}_rec"])
        assert last[f"{v}_rec"] < 0.5 * first[f"{v}_rec"], v
        usage = trained.report["views"][v]["usage_per_level"]
        assert min(usage) > 0.6, usage  # 240 items, 32 codes per level: most in use
        assert trained.report["views"][v]["collision_rate"] < 0.1
    assert trained.report["codes_per_level"] == codebook_size(240) == 32
    assert set(trained.codes) == {"title", "profile"} and trained.codes["title"].shape == (240, 3)
    assert int(trained.codes["title"].max()) < 32


def test_quantised_vectors_are_the_sum_of_the_chosen_codes(trained):
    for v in trained.views:
        cb, codes = trained.codebooks[v], trained.codes[v]
        rebuilt = sum(cb[level][codes[:, level]] for level in range(cb.shape[0]))
        assert torch.allclose(rebuilt, trained.quantised[v], atol=1e-5)


def test_alignment_loss_falls_with_training_and_only_with_its_weight():
    content = two_views(seed=3)
    aligned = train_rqvae(content, RQVAEConfig(epochs=15, warmup_epochs=2, **FAST))
    plain = train_rqvae(content, RQVAEConfig(epochs=15, warmup_epochs=2, align_weight=0.0, **FAST))
    assert aligned.history[-1]["align"] < aligned.history[0]["align"] - 0.3
    assert aligned.history[-1]["align"] < plain.history[-1]["align"] - 0.3


def test_align_loss_is_symmetric_infonce():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    logits = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T / 0.5
    t = torch.arange(5)
    expect = 0.5 * (torch.nn.functional.cross_entropy(logits, t) + torch.nn.functional.cross_entropy(logits.T, t))
    assert torch.allclose(align_loss([a, b], 0.5), expect)
    assert float(align_loss([a], 0.5)) == 0.0


def test_residual_quantisation_picks_nearest_codes_level_by_level():
    rq = ResidualQuantizer(2, 3, 2)
    with torch.no_grad():
        rq.codebooks[0] = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
        rq.codebooks[1] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    q, codes, _, residuals = rq(torch.tensor([[10.9, 0.1], [0.2, 11.1]]))
    assert codes.tolist() == [[1, 0], [2, 1]]
    assert torch.allclose(q, torch.tensor([[11.0, 0.0], [0.0, 11.0]]))
    assert torch.allclose(residuals[:, 1], torch.tensor([[0.9, 0.1], [0.2, 1.1]]), atol=1e-6)


def test_kmeans_finds_separated_blobs_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    x = torch.cat([c + torch.randn(50, 2, generator=g) for c in centres])
    found, labels = kmeans(x, 3, 30, torch.Generator().manual_seed(1))
    again, labels2 = kmeans(x, 3, 30, torch.Generator().manual_seed(1))
    assert torch.equal(found, again) and torch.equal(labels, labels2)
    assert torch.cdist(centres, found).min(1).values.max() < 1.0
    assert len(set(labels[:50].tolist())) == 1 and len(set(labels.tolist())) == 3


def test_codebook_size_rule_and_collision_rate():
    assert codebook_size(16557) == 256 and codebook_size(2000) == 256
    assert codebook_size(1000) == 128 and codebook_size(200) == 32 and codebook_size(40) == 8
    assert codebook_size(5) == 2 and codebook_size(100000, max_codes=64) == 64
    codes = np.array([[1, 2], [1, 2], [1, 3], [0, 2]])
    assert collision_rate(codes) == 0.5


def test_training_is_seeded_and_round_trips(trained):
    again = train_rqvae(two_views(), RQVAEConfig(epochs=25, warmup_epochs=0, **FAST))
    assert all(torch.equal(trained.codes[v], again.codes[v]) for v in trained.views)
    back = RQVAEResult.from_tensors(trained.tensors(), {"report": trained.report, "config": trained.config})
    assert all(torch.equal(back.codes[v], trained.codes[v]) for v in trained.views)
    assert set(back.state) == set(trained.state) and back.report == trained.report
