"""GaVaMoE stage 1: the VAE-GMM equations, cold start, batch independence, and the vae-gmm stage's training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from explainrec.config import ConfigError
from explainrec.data import make_synthetic
from explainrec.data.schema import DataError, Dataset, Example, IdMap, Interactions
from explainrec.methods.gavamoe.config import VaeGmmConfig
from explainrec.methods.gavamoe.stage1_eval import read_clusters
from explainrec.methods.gavamoe.stage1_method import VaeGmmStage, load_vae_gmm
from explainrec.methods.gavamoe.vae_gmm import InteractionSampler, VaeGmm
from explainrec.training.checkpoint import CheckpointError


def _model(likelihood: str = "gaussian", k: int = 3, seed: int = 0) -> VaeGmm:
    torch.manual_seed(seed)
    m = VaeGmm(20, 30, n_clusters=k, likelihood=likelihood, embed_dim=16, latent_dim=4, n_heads=2)
    with torch.no_grad():  # spread the prior so responsibilities are not all equal
        m.mu_c.copy_(torch.randn(k, 4))
        m.logvar_c.uniform_(-1.0, 0.5)
        m.pi_logits.copy_(torch.randn(k))
    return m


def _batch(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(20, (n,), generator=g), torch.randint(30, (n,), generator=g),
            torch.randint(1, 6, (n,), generator=g).float(), torch.randint(30, (n,), generator=g),
            torch.randint(30, (n, 2), generator=g))


# ---------------------------------------------------------------------------------------------- equations


@pytest.mark.parametrize("likelihood", ["gaussian", "categorical", "bernoulli"])
def test_elbo_terms_finite_nonnegative_and_differentiable(likelihood):
    m = _model(likelihood)
    m.train()
    user, item, rating, ctx, neg = _batch()
    target = None if likelihood == "bernoulli" else rating
    p = m.elbo(user, item, target, beta=0.1, context_items=ctx, negative_items=neg)
    for name, v in p._asdict().items():
        assert v.dim() == 0 and torch.isfinite(v), name
    assert p.kl_z >= 0 and p.kl_c >= -1e-6 and p.items_nll > 0
    assert torch.allclose(p.kl, p.kl_z + p.kl_c)
    assert torch.allclose(p.loss, p.recon + 0.1 * p.kl)
    assert torch.allclose(p.recon, m.rating_weight * p.rating_nll + p.items_nll)
    p.loss.backward()
    for name in ("user_emb.weight", "to_mu.weight", "to_logvar.weight", "mu_c", "logvar_c", "pi_logits", "item_out.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_kl_matches_closed_form_per_cluster():
    """eq. 17 = sum_c gamma_c KL(N(mu, s^2) || N(mu_c, s_c^2)) + KL(gamma || pi), checked against torch.distributions."""
    m = _model().eval()  # no dropout / id replacement, so encode() below sees what elbo() saw
    user, item, rating, ctx, neg = _batch()
    p = m.elbo(user, item, rating, beta=0.1, context_items=ctx, negative_items=neg, sample=False)
    with torch.no_grad():
        mu, logvar = m.encode(user, item)
        gamma = m.responsibilities(mu)
        q = Normal(mu, (0.5 * logvar).exp())
        kl_z = torch.zeros(len(user))
        for c in range(m.n_clusters):  # the test may loop; the model must not
            prior = Normal(m.mu_c[c], (0.5 * m.logvar_c[c]).exp())
            kl_z += gamma[:, c] * kl_divergence(q, prior).sum(-1)
        pi = m.log_pi.exp()
        kl_c = (gamma * (gamma.log() - pi.log())).sum(-1)
    assert torch.allclose(p.kl_z, kl_z.mean(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(p.kl_c, kl_c.mean(), rtol=1e-4, atol=1e-5)


def test_responsibilities_are_bayes_rule_with_log_pi():
    """eq. 8: gamma_c = pi_c N(z|mu_c, s_c^2) / sum_c' ...; rows sum to 1."""
    m = _model(k=4)
    z = torch.randn(7, 4)
    gamma = m.responsibilities(z)
    assert gamma.shape == (7, 4)
    assert torch.allclose(gamma.sum(-1), torch.ones(7))
    with torch.no_grad():
        dens = torch.stack([Normal(m.mu_c[c], (0.5 * m.logvar_c[c]).exp()).log_prob(z).sum(-1).exp()
                            for c in range(4)], dim=1)
        w = m.log_pi.exp() * dens
        ref = w / w.sum(-1, keepdim=True)
    assert torch.allclose(gamma, ref, atol=1e-5)
    # the prior weight matters: a near-certain pi_c moves every point to c (it would not if pi were added to log densities)
    with torch.no_grad():
        m.pi_logits.copy_(torch.tensor([0.0, 0.0, 60.0, 0.0]))
    assert (m.responsibilities(z).argmax(-1) == 2).all()


def test_assign_is_deterministic_by_default_and_sampling_is_opt_in():
    m = _model()
    with torch.no_grad():
        m.to_logvar.bias.fill_(3.0)  # wide posteriors, so sampled z would often change the cluster
    user, item, *_ = _batch(64)
    m.train()  # assign must switch off dropout / id replacement itself ...
    a = m.assign(user, item)
    b = m.assign(user, item)
    assert torch.equal(a, b) and a.shape == (64,) and a.dtype == torch.long
    assert m.training  # ... and restore the mode afterwards
    with torch.no_grad(), m.inference():
        mu, _ = m.encode(user, item)
    assert torch.equal(a, m.responsibilities(mu).argmax(-1))  # eq. 9 at the posterior mean
    sampled = [m.assign(user, item, sample=True, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    assert any(not torch.equal(s, a) for s in sampled)


def test_batch_independence():
    """A pair's latent and cluster do not depend on the other pairs in its batch (reference weakness #3)."""
    m = _model().eval()
    user, item, *_ = _batch(32)
    with torch.no_grad():
        mu_batch, _ = m.encode(user, item)
        mu_single = torch.cat([m.encode(user[i:i + 1], item[i:i + 1])[0] for i in range(32)])
        perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
        mu_perm, _ = m.encode(user[perm], item[perm])
    assert torch.allclose(mu_batch, mu_single, atol=1e-5)
    assert torch.allclose(mu_batch[perm], mu_perm, atol=1e-5)
    clusters = m.assign(user, item)
    assert torch.equal(torch.cat([m.assign(user[i:i + 1], item[i:i + 1]) for i in range(32)]), clusters)
    assert torch.equal(m.assign(user[perm], item[perm]), clusters[perm])
    # a different neighbour changes nothing for pair 0
    other = m.assign(torch.stack([user[0], torch.tensor(3)]), torch.stack([item[0], torch.tensor(5)]))
    assert other[0] == clusters[0]


def test_unseen_and_out_of_range_ids_get_a_cluster():
    m = _model()
    known_u = torch.ones(20, dtype=torch.bool)
    known_u[7] = False  # user 7 was never in the train split
    m.set_known(known_u, torch.ones(30, dtype=torch.bool))
    user = torch.tensor([-1, 20, 10_000, 7, 3])
    item = torch.tensor([0, 1, 2, 3, -5])
    c = m.assign(user, item)
    assert c.shape == (5,) and ((c >= 0) & (c < m.n_clusters)).all()
    mapped_u, mapped_i = m.map_ids(user, item)
    assert mapped_u.tolist() == [20, 20, 20, 20, 3] and mapped_i.tolist() == [0, 1, 2, 3, 30]
    # an unseen id behaves exactly like the unknown row
    assert torch.equal(m.assign(torch.tensor([7]), torch.tensor([3])), m.assign(torch.tensor([20]), torch.tensor([3])))
    assert torch.isfinite(m.score(user, item)).all() and torch.isfinite(m.predict(user, item)).all()


def test_rating_levels_and_expected_rating():
    m = VaeGmm(5, 5, n_clusters=2, likelihood="categorical", n_rating_levels=5, rating_range=(1, 5),
               embed_dim=8, latent_dim=2, n_heads=2)
    assert m.rating_to_level(torch.tensor([1.0, 2.4, 2.6, 5.0, 9.0])).tolist() == [0, 1, 2, 4, 4]
    logits = torch.full((1, 5), -1e4)
    logits[0, 3] = 0.0  # all mass on level 3 -> rating 4
    assert torch.allclose(m.point_prediction(logits), torch.tensor([4.0]))
    assert torch.allclose(m.point_prediction(torch.zeros(1, 5)), torch.tensor([3.0]))  # uniform -> mean


def test_interaction_sampler_draws_another_item_of_the_same_user():
    user = np.array([0, 0, 0, 1, 2, 2])
    item = np.array([5, 6, 7, 8, 1, 2])
    s = InteractionSampler(user, item, n_users=4, n_items=10)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ctx, neg = s.sample(torch.tensor([0, 0, 1, 2, 3]), torch.tensor([5, 6, 8, 1, 4]), 3, generator=g)
        assert ctx[0] in (6, 7) and ctx[1] in (5, 7)  # never the pair's own item when the user has others
        assert ctx[2] == 8  # the only item of user 1
        assert ctx[3] == 2
        assert ctx[4] == 10  # user 3 has no training items -> the unknown column
        assert neg.shape == (5, 3) and ((neg >= 0) & (neg < 10)).all()


def test_constructor_validates_and_exposes_config():
    with pytest.raises(ValueError, match="likelihood"):
        VaeGmm(3, 3, n_clusters=2, likelihood="poisson")
    with pytest.raises(ValueError, match="rating_range"):
        VaeGmm(3, 3, n_clusters=2, rating_range=(5, 1))
    m = VaeGmm(3, 4, n_clusters=2, embed_dim=8, latent_dim=2, n_heads=2)
    rebuilt = VaeGmm(**json.loads(json.dumps(m.config)))
    assert rebuilt.state_dict().keys() == m.state_dict().keys()


# ---------------------------------------------------------------------------------------------- recipe


def fit_clusters(ds, k: int, out, *, resume: bool = False, **settings):
    """Train the vae-gmm stage into ``out`` as the registry does; return what the tests look at."""
    out = Path(out)
    cfg = VaeGmmConfig.from_dict({**settings, "clusters": k})
    metrics = VaeGmmStage().train(ds, out, cfg, stages={}, resume=resume, progress=False,
                                  echo=lambda *_: None).summary.metrics
    model, _, _ = load_vae_gmm(out)
    return SimpleNamespace(metrics=metrics, model=model, out_dir=out, clusters_path=out / "clusters.csv",
                           history=json.loads((out / "history.json").read_text()))


# Small but complete: 300 users, 4 types, the generator's defaults. E=16 and 1 layer keep it to seconds.
# Seeds 0-5 of this config gave NMI 0.985, 0.91, 0.93, 0.95, 0.96, 0.74 (seed 5: the GMM init merged two types).
FAST = {"epochs": 4, "pretrain_epochs": 25, "batch_size": 256, "lr": 5e-3, "embed_dim": 16, "latent_dim": 8,
        "n_layers": 1, "plot_method": "pca", "seed": 0}


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(n_users=300, n_items=200, n_types=4, seed=0)


@pytest.fixture(scope="module")
def fitted(synthetic, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield fit_clusters(synthetic, 4, tmp_path_factory.mktemp("stage1"), **FAST)
    finally:
        torch.set_num_threads(n)


def test_clusters_recover_user_types(fitted, synthetic):
    """Acceptance: with K = number of user types, pair clusters agree with the types (NMI >= 0.8)."""
    from sklearn.metrics import normalized_mutual_info_score

    rows = [r for r in read_clusters(fitted.clusters_path) if r["kind"] == "interaction"]
    clusters = np.array([r["cluster"] for r in rows])
    types = synthetic.user_types[synthetic.interactions.user]
    nmi = normalized_mutual_info_score(types, clusters)
    assert nmi >= 0.8, f"NMI {nmi:.3f}; cluster sizes {fitted.metrics['cluster_sizes']}"
    assert abs(fitted.metrics["agreement_with_user_types"]["nmi"] - nmi) < 1e-9


def test_outputs_written(fitted, synthetic):
    out = fitted.out_dir
    for name in ("model/model.safetensors", "model/explainrec.json", "model/id_maps.json", "clusters.csv",
                 "metrics.json", "history.json"):
        assert (out / name).is_file(), name
    rows = read_clusters(out / "clusters.csv")
    inter = [r for r in rows if r["kind"] == "interaction"]
    ex = [r for r in rows if r["kind"] == "example"]
    assert len(inter) == len(synthetic.interactions) and len(ex) == len(synthetic.examples)
    assert {r["split"] for r in inter} == {"train", "valid", "test"}
    assert inter[0]["user"] == synthetic.users.decode(synthetic.interactions.user[0])
    assert ex[5]["item"] == synthetic.items.decode(synthetic.examples[5].item)
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["cluster_sizes"]) == len(synthetic.interactions) and len(metrics["cluster_sizes"]) == 4
    # ratings are 1..5: a model that learned something beats predicting the middle of the scale
    assert 0 < metrics["test_rmse"] < 1.6 and 0.6 < metrics["test_auc"] <= 1.0
    # the reported errors are those of the saved model's predictions on the test interactions
    test = synthetic.interactions.of_split("test")
    with torch.no_grad():
        pred = fitted.model.predict(torch.as_tensor(test.user), torch.as_tensor(test.item)).numpy()
    err = pred - np.asarray(test.rating, dtype=np.float64)
    assert metrics["test_rmse"] == pytest.approx(float(np.sqrt(np.mean(err ** 2))), rel=1e-5)
    assert metrics["test_mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-5)
    manifest = json.loads((out / "model" / "explainrec.json").read_text())
    assert manifest["arch"]["vae"]["n_clusters"] == 4 and manifest["arch"]["vae"]["likelihood"] == "gaussian"
    assert manifest["config"]["batch_size"] == 256 and manifest["method"] == "vae-gmm"
    assert [h["phase"] for h in fitted.history].count("pretrain") == 25


def test_plots_are_nonempty_pngs(fitted):
    for name in ("latent.png", "loss.png"):
        data = (fitted.out_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_load_stage1_restores_the_same_clusters(fitted, synthetic, tmp_path):
    model, users, items = load_vae_gmm(fitted.out_dir)
    assert users.raw == synthetic.users.raw and items.raw == synthetic.items.raw
    u = torch.as_tensor(synthetic.interactions.user)
    i = torch.as_tensor(synthetic.interactions.item)
    expected = np.array([r["cluster"] for r in read_clusters(fitted.clusters_path) if r["kind"] == "interaction"])
    assert np.array_equal(model.assign(u, i).numpy(), expected)
    # a copied folder loads the same, raw ids map through the saved id maps, unseen ids still get a cluster
    shutil.copytree(fitted.out_dir / "model", tmp_path / "copy")
    again, users, items = load_vae_gmm(tmp_path / "copy")
    raw_u = [synthetic.users.decode(x) for x in synthetic.interactions.user[:10]]
    raw_i = [synthetic.items.decode(x) for x in synthetic.interactions.item[:10]]
    ids = torch.tensor(users.encode_all(raw_u)), torch.tensor(items.encode_all(raw_i))
    assert np.array_equal(again.assign(*ids).numpy(), expected[:10])
    cold = again.assign(torch.tensor(users.encode_all(["never-seen-user", raw_u[0]])),
                        torch.tensor(items.encode_all([raw_i[0], "never-seen-item"]))).numpy()
    assert cold.shape == (2,) and ((cold >= 0) & (cold < 4)).all()


def test_load_stage1_errors_name_the_file(fitted, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fitted.out_dir, broken, ignore=shutil.ignore_patterns("checkpoint"))
    (broken / "model" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"model\.safetensors: contents changed"):
        load_vae_gmm(broken)
    (broken / "model" / "explainrec.json").unlink()
    with pytest.raises(DataError, match=r"broken: not a run or model folder"):
        load_vae_gmm(broken)


TINY = {"pretrain_epochs": 2, "batch_size": 64, "lr": 5e-3, "embed_dim": 8, "latent_dim": 4, "n_heads": 2,
        "n_layers": 1, "plot_method": "none", "seed": 3}


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_users=40, n_items=30, n_types=2, seed=1)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small, tmp_path):
    full = fit_clusters(small, 2, tmp_path / "full", epochs=4, **TINY)
    fit_clusters(small, 2, tmp_path / "resumed", epochs=1, **TINY)  # "interrupted" after 2 + 1 epochs
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 3 and state["gmm_initialized"]
    resumed = fit_clusters(small, 2, tmp_path / "resumed", epochs=4, resume=True, **TINY)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_resume_rejects_a_mismatched_or_corrupt_checkpoint(small, tmp_path):
    fit_clusters(small, 2, tmp_path / "run", epochs=1, **TINY)
    with pytest.raises(CheckpointError, match=r"config\.json: config mismatch .*training\.lr"):
        fit_clusters(small, 2, tmp_path / "run", epochs=2, resume=True, **{**TINY, "lr": 1e-3})
    with pytest.raises(CheckpointError, match=r"config\.json: config mismatch .*model\.n_clusters"):
        fit_clusters(small, 3, tmp_path / "run", epochs=2, resume=True, **TINY)
    (tmp_path / "run" / "checkpoint" / "optimizer.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: contents changed"):
        fit_clusters(small, 2, tmp_path / "run", epochs=2, resume=True, **TINY)


def _implicit(ds: Dataset) -> Dataset:
    inter = ds.interactions
    return Dataset(name="implicit", interactions=Interactions(inter.user, inter.item, inter.split),
                   examples=ds.examples, users=ds.users, items=ds.items, user_types=ds.user_types)


def test_implicit_data_uses_bernoulli_and_reports_auc(synthetic, small, tmp_path):
    # 300 users of 4 types: enough structure that a trained model ranks test items above random ones (seeds
    # 0 and 1 gave AUC 0.71 and 0.75; an untrained or broken scorer gives about 0.5)
    res = fit_clusters(_implicit(synthetic), 4, tmp_path / "imp", **{**FAST, "pretrain_epochs": 10, "epochs": 2})
    assert res.model.likelihood == "bernoulli" and res.model.rating_head is None
    assert "test_rmse" not in res.metrics and res.metrics["test_auc"] > 0.6
    with pytest.raises(ConfigError, match="needs ratings"):  # a setting the data cannot serve
        fit_clusters(_implicit(small), 2, tmp_path / "bad", likelihood="gaussian", epochs=1, **TINY)


def test_categorical_likelihood_runs(small, tmp_path):
    res = fit_clusters(small, 2, tmp_path / "cat", likelihood="categorical", epochs=1, **TINY)
    assert res.model.n_rating_levels == 5 and res.model.rating_range == (1.0, 5.0)
    with torch.no_grad():  # the point prediction is an expected rating: inside the scale, and pair-dependent
        pred = res.model.predict(torch.arange(10), torch.arange(10))
    assert ((pred >= 1.0) & (pred <= 5.0)).all() and pred.std() > 0


def test_rating_only_reconstruction_is_available(small, tmp_path):
    """The paper's objective (ratings only) stays selectable, e.g. for ablations."""
    res = fit_clusters(small, 2, tmp_path / "ratings", reconstruct_items=False, epochs=1, **TINY)
    assert res.model.rating_weight == 1.0 and "test_rmse" in res.metrics
    elbo = [h for h in res.history if h["phase"] == "elbo"]
    assert elbo and all(h["train_items_nll"] == 0.0 for h in elbo)  # no interaction-vector term
    with pytest.raises(ValueError, match="nothing to reconstruct"):
        fit_clusters(_implicit(small), 2, tmp_path / "bad", reconstruct_items=False, epochs=1, **TINY)


def test_small_cluster_rule():
    from explainrec.analysis.latent import cluster_sizes, small_clusters

    assert cluster_sizes(np.array([0, 0, 2, 2, 2]), 4) == [2, 0, 3, 0]
    assert small_clusters([500, 4, 496, 0], 0.01) == [1, 3]
    assert small_clusters([50, 50], 0.01) == []


def test_small_cluster_warning_is_logged_and_recorded(small, tmp_path, caplog):
    """A cluster under the threshold share of pairs is logged and recorded in metrics.json (a threshold of
    60% makes every cluster of a 2-cluster run but the largest "small", whatever the data)."""
    with caplog.at_level("WARNING", logger="explainrec.methods.gavamoe.stage1_eval"):
        res = fit_clusters(small, 2, tmp_path / "warn", epochs=0, small_cluster_fraction=0.6, **TINY)
    sizes = res.metrics["cluster_sizes"]
    expected = [c for c, n in enumerate(sizes) if n < 0.6 * sum(sizes)]
    assert expected and res.metrics["small_clusters"] == expected
    assert len(res.metrics["warnings"]) == 1 and "imbalance" in res.metrics["warnings"][0]
    assert any("imbalance" in r.getMessage() for r in caplog.records)
    saved = json.loads((tmp_path / "warn" / "metrics.json").read_text())
    assert saved["warnings"] == res.metrics["warnings"]


def test_bad_data_is_rejected_with_a_clear_error(tmp_path):
    ds = Dataset(name="empty", interactions=Interactions(np.array([0]), np.array([0]), np.array(["test"]),
                 np.array([4.0], dtype=np.float32)), examples=[Example(0, 0)], users=IdMap(["a"]), items=IdMap(["x"]))
    with pytest.raises(DataError, match="no interactions in split 'train'"):
        fit_clusters(ds, 2, tmp_path / "e", **TINY)
