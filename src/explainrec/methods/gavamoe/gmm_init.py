"""Initialise the VAE-GMM prior from a diagonal sklearn GaussianMixture fitted on encoder means.

Why: VaDE-style training from a random prior tends to collapse clusters; starting from a mixture fitted on
the pre-trained autoencoder's latent means gives every component real data to explain (VaDE, paper ref. 16).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from explainrec.methods.gavamoe.vae_gmm import VaeGmm

log = logging.getLogger(__name__)


@dataclass
class GmmParams:
    """A fitted diagonal mixture: weights (K,), means (K, D), variances (K, D)."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray


def fit_gmm(
    latents: np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    max_samples: int = 50_000,
    n_init: int = 3,
    reg_covar: float = 1e-4,
) -> GmmParams:
    """Fit ``GaussianMixture(covariance_type='diag')`` on ``latents`` (N, D).

    At most ``max_samples`` rows (a seeded random subset) are used: the mixture of a few hundred thousand
    pairs is as well determined by 50k of them, at a fraction of the EM cost. ``n_init`` restarts guard
    against a poor k-means start; ``reg_covar`` keeps a tight component's variance away from zero.
    """
    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim != 2 or latents.shape[0] < n_clusters:
        raise ValueError(f"need a (N, D) latent matrix with N >= n_clusters={n_clusters}, got {latents.shape}")
    if not np.isfinite(latents).all():
        raise ValueError("latent means contain NaN or inf; the pre-training diverged")
    if latents.shape[0] > max_samples:
        pick = np.random.default_rng(seed).choice(latents.shape[0], size=max_samples, replace=False)
        latents = latents[pick]
    gmm = GaussianMixture(n_components=n_clusters, covariance_type="diag", n_init=n_init, reg_covar=reg_covar,
                          random_state=seed)
    gmm.fit(latents)
    if not gmm.converged_:
        log.warning("GaussianMixture init did not converge in %d iterations; using its last estimate", gmm.max_iter)
    return GmmParams(weights=gmm.weights_, means=gmm.means_, variances=gmm.covariances_)


@torch.no_grad()
def init_prior_from_latents(model: VaeGmm, latents: np.ndarray, *, seed: int = 0, max_samples: int = 50_000,
                            posterior_var_ratio: float = 0.1) -> GmmParams:
    """Fit the mixture on ``latents`` (N, D) and copy it into ``model``'s prior (pi, mu_c, sigma_c^2).

    The plain-autoencoder warm-up never trains the log-variance head, which therefore starts near
    sigma^2 = 1 -- often wider than the fitted components. Samples z would then land between the components
    and the widest one would absorb every pair (a collapse to one cluster, seen in practice). So q(z|x)
    starts input-independent at ``posterior_var_ratio`` times the median component variance.
    """
    params = fit_gmm(latents, model.n_clusters, seed=seed, max_samples=max_samples)
    like = model.mu_c
    model.init_prior(
        torch.as_tensor(params.weights, dtype=like.dtype, device=like.device),
        torch.as_tensor(params.means, dtype=like.dtype, device=like.device),
        torch.as_tensor(params.variances, dtype=like.dtype, device=like.device),
    )
    start = float(np.log(posterior_var_ratio * np.median(params.variances)))
    model.to_logvar.weight.zero_()
    model.to_logvar.bias.fill_(start)
    return params
