"""GaVaMoE stage 1: a VAE with a Gaussian-mixture prior over user-item pairs (paper section 3.2, Appendix A).

Shapes: B pairs in a batch, E embedding width, D latent width, K clusters, L rating levels, H decoder width,
N sampled negative items per pair.

    user, item (B,) --embed--> (B, 2, E) --Transformer (batch_first: pairs never attend to each other)-->
    (B, 2, E) --flatten--> (B, 2E) --heads--> mu, logvar (B, D)                                   eq. 1
    z = mu + eps * sigma                                                                           eq. 2
    decoder: h = GELU(W1 z) (B, H); rating head W2 h (B, L) | (B,); item columns <h, w_j> + b_j    eq. 3, 7
    prior p(c) = Cat(softmax(pi_logits)), p(z|c) = N(mu_c, diag(exp(logvar_c)))                    eq. 4-6
    gamma = p(c|z) (B, K); cluster = argmax_c gamma                                                eq. 8-9

What p(x|z) reconstructs. The paper decodes the rating (eq. 3) and names p(x|z) a multivariate Bernoulli
(eq. 7, citing VAE-CF and RecVAE, where x is a user's interaction vector over items). Both are used here:

* the pair's rating (explicit data): ``categorical`` over ``n_rating_levels`` or ``gaussian``;
* the user's interaction vector (eq. 7), estimated by sampling: one other item of the same user
  (``context_items``, target 1) and ``N`` uniform items (``negative_items``, target 0), each scored by an
  item column of the decoder's second layer. For implicit data (``likelihood="bernoulli"``) this is the
  whole reconstruction.

Why both: a rating is explained by whether the user's taste matches the item, so a latent that only
reconstructs ratings needs to hold little more than that match, and its mixture components follow rating
levels, not users. Measured on ``make_synthetic(n_users=1000)`` with K=4 (every user type rates alike):
ratings alone gave NMI(pair cluster, user type) 0.04, test RMSE 0.83, one cluster empty; ratings plus the
interaction vector gave NMI 0.99, RMSE 0.60. The items a user picks are what tells users apart.
``rating_weight`` (0.3) scales the rating term against the interaction vector: at 1.0 the latent splits by
rating level again (NMI 0.43-0.67 in prototype runs on 300 users), and the rating error was no worse at 0.3.

Cold start: each embedding table has one extra "unknown" row (index ``n_users`` / ``n_items``). Ids that are
negative, out of range, or marked unseen in ``user_known``/``item_known`` (set by the recipe from the train
split) map to it, so any pair gets a latent and a cluster -- never an index error. Training keeps that row
useful by replacing each input id with "unknown" with probability ``unknown_prob`` (default 5%) in
:meth:`VaeGmm.elbo` / :meth:`VaeGmm.pretrain_loss` while the module is in training mode.

Differences from the reference release (STYLE.md section 1, items 3-4): the encoder is batch-first over a
(B, 2, E) tensor, so a pair's latent never depends on the rest of its batch; clusters are assigned from the
mean of q(z|x) by default (deterministic) and use log pi_c, not pi_c, next to log densities.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LIKELIHOODS = ("categorical", "gaussian", "bernoulli")
# Keeps exp(logvar) inside float32's comfortable range; q(z|x) and the prior never need wider variances.
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0
_LOG_2PI = math.log(2.0 * math.pi)


class LossParts(NamedTuple):
    """The beta-weighted negative ELBO (eq. 16) and its unweighted parts, each a scalar mean over the batch.

    ``loss = recon + beta * kl``; ``recon = rating_weight * rating_nll + items_nll``; ``kl = kl_z + kl_c`` is
    KL(q(z,c|x) || p(z,c)) (eq. 17) split into E_q(c|x)[KL(q(z|x) || p(z|c))] and KL(q(c|x) || p(c)).
    """

    loss: Tensor
    recon: Tensor
    kl: Tensor
    kl_z: Tensor
    kl_c: Tensor
    rating_nll: Tensor
    items_nll: Tensor


class VaeGmm(nn.Module):
    """Pair encoder, decoder (rating + interaction vector) and learnable GMM prior.

    Args:
        n_users, n_items: table sizes (contiguous ids ``0..n-1``); one "unknown" row is added to each.
        n_clusters: K, the number of mixture components (= gates in stage 2).
        likelihood: ``"categorical"`` over ``n_rating_levels`` evenly spaced levels of ``rating_range``,
            ``"gaussian"`` for real-valued ratings (learned global noise variance), or ``"bernoulli"`` for
            implicit feedback (no rating; only the interaction vector, eq. 7).
        embed_dim: E. The paper uses 768; 64 is the CPU default (a 2-token sequence needs little width, and
            the step time grows with E squared).
        latent_dim: D. The paper uses 128; 32 is the CPU default (K Gaussians separate well in 32 dimensions
            and the GMM init is cheaper).
        n_heads, n_layers: attention heads and Transformer layers (the paper: 2 layers).
        ff_dim: Transformer feed-forward width; default 4E (PyTorch's default of 2048 would dominate the cost).
        decoder_hidden: H, hidden width of the 2-layer decoder; default E.
        dropout: dropout inside the Transformer. Off by default: its random masks cost about 20% of a CPU
            step, and the sampled z (eq. 2) and the id replacement already regularise.
        unknown_prob: chance, per input id and training step, of replacing it with "unknown" (cold start).
        rating_weight: weight of the rating term against the interaction-vector term (module docstring).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        n_clusters: int,
        likelihood: str = "gaussian",
        n_rating_levels: int = 5,
        rating_range: tuple[float, float] = (1.0, 5.0),
        embed_dim: int = 64,
        latent_dim: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        ff_dim: int | None = None,
        decoder_hidden: int | None = None,
        dropout: float = 0.0,
        unknown_prob: float = 0.05,
        rating_weight: float = 0.3,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if n_users < 1 or n_items < 1 or n_clusters < 1:
            raise ValueError(f"need n_users, n_items, n_clusters >= 1; got {n_users}, {n_items}, {n_clusters}")
        if likelihood == "categorical" and n_rating_levels < 2:
            raise ValueError(f"categorical likelihood needs n_rating_levels >= 2, got {n_rating_levels}")
        lo, hi = float(rating_range[0]), float(rating_range[1])
        if likelihood != "bernoulli" and not hi > lo:
            raise ValueError(f"rating_range must be (low, high) with high > low, got {rating_range}")
        if not 0.0 <= unknown_prob < 1.0:
            raise ValueError(f"unknown_prob must be in [0, 1), got {unknown_prob}")
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by n_heads={n_heads}")
        hidden = decoder_hidden or embed_dim
        ff_dim = ff_dim or 4 * embed_dim
        # Everything needed to rebuild the module: saved as config.json next to the weights.
        self.config = {
            "n_users": n_users, "n_items": n_items, "n_clusters": n_clusters, "likelihood": likelihood,
            "n_rating_levels": n_rating_levels, "rating_range": [lo, hi], "embed_dim": embed_dim,
            "latent_dim": latent_dim, "n_heads": n_heads, "n_layers": n_layers, "ff_dim": ff_dim,
            "decoder_hidden": hidden, "dropout": dropout, "unknown_prob": unknown_prob, "rating_weight": rating_weight,
        }
        self.n_users, self.n_items, self.n_clusters = n_users, n_items, n_clusters
        self.likelihood = likelihood
        self.n_rating_levels = n_rating_levels
        self.rating_range = (lo, hi)
        self.latent_dim = latent_dim
        self.unknown_prob = unknown_prob
        self.rating_weight = float(rating_weight) if likelihood != "bernoulli" else 0.0

        # --- encoder E(u, i) -> mu, logvar (eq. 1)
        self.user_emb = nn.Embedding(n_users + 1, embed_dim)  # last row: unknown user
        self.item_emb = nn.Embedding(n_items + 1, embed_dim)  # last row: unknown item
        self.pos_emb = nn.Parameter(torch.zeros(2, embed_dim))  # tells the encoder which token is the user
        for p in (self.user_emb.weight, self.item_emb.weight, self.pos_emb):
            nn.init.normal_(p, std=0.1)
        layer = nn.TransformerEncoderLayer(d_model=embed_dim, nhead=n_heads, dim_feedforward=ff_dim,
                                           dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=n_layers, norm=nn.LayerNorm(embed_dim),
                                             enable_nested_tensor=False)
        self.to_mu = nn.Linear(2 * embed_dim, latent_dim)
        self.to_logvar = nn.Linear(2 * embed_dim, latent_dim)

        # --- decoder D(z) (eq. 3, 7): shared first layer, then rating units and one column per item
        self.dec_hidden = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU())
        self.rating_head = None
        if likelihood != "bernoulli":
            self.rating_head = nn.Linear(hidden, n_rating_levels if likelihood == "categorical" else 1)
        if likelihood == "gaussian":
            nn.init.constant_(self.rating_head.bias, (lo + hi) / 2)  # start at the middle of the scale
            self.obs_logvar = nn.Parameter(torch.zeros(()))  # global rating noise, learned
        self.item_out = nn.Embedding(n_items + 1, hidden)  # item columns of the interaction vector
        self.item_bias = nn.Embedding(n_items + 1, 1)
        nn.init.normal_(self.item_out.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        self.register_buffer("levels", torch.linspace(lo, hi, n_rating_levels), persistent=False)

        # --- GMM prior (eq. 4-6); overwritten by init_prior() from a fitted sklearn GaussianMixture
        self.pi_logits = nn.Parameter(torch.zeros(n_clusters))
        self.mu_c = nn.Parameter(torch.randn(n_clusters, latent_dim))
        self.logvar_c = nn.Parameter(torch.zeros(n_clusters, latent_dim))

        # which contiguous ids were seen in training; the others use the unknown row
        self.register_buffer("user_known", torch.ones(n_users, dtype=torch.bool))
        self.register_buffer("item_known", torch.ones(n_items, dtype=torch.bool))

    # ------------------------------------------------------------------ ids

    def map_ids(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        """Send negative, out-of-range and unseen ids to the unknown rows. Shapes (B,) -> (B,)."""
        return _map(user.long(), self.user_known), _map(item.long(), self.item_known)

    @torch.no_grad()
    def set_known(self, user_known: Tensor, item_known: Tensor) -> None:
        """Mark which contiguous ids have trained embeddings (bool masks of shape (n_users,), (n_items,))."""
        self.user_known.copy_(user_known.to(torch.bool))
        self.item_known.copy_(item_known.to(torch.bool))

    def _drop_ids(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        """Training-time cold-start augmentation: each id becomes "unknown" with probability unknown_prob."""
        if not self.training or self.unknown_prob == 0.0:
            return user, item
        drop = torch.rand(2, user.shape[0], device=user.device) < self.unknown_prob  # (2, B)
        user = torch.where(drop[0], torch.full_like(user, self.n_users), user)
        item = torch.where(drop[1], torch.full_like(item, self.n_items), item)
        return user, item

    # ------------------------------------------------------------------ encoder / decoder

    def encode(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) for each pair (eq. 1): ``mu, logvar`` of shape (B, D). Ids are mapped with :meth:`map_ids`."""
        return self._encode_mapped(*self.map_ids(user, item))

    def _encode_mapped(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        tokens = torch.stack([self.user_emb(user), self.item_emb(item)], dim=1) + self.pos_emb  # (B, 2, E)
        hidden = self.encoder(tokens)  # (B, 2, E): attention only within each pair's 2 tokens
        flat = hidden.flatten(1)  # (B, 2, E) -> (B, 2E)
        return self.to_mu(flat), self.to_logvar(flat).clamp(LOGVAR_MIN, LOGVAR_MAX)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + eps * sigma, eps ~ N(0, I) (eq. 2)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: Tensor) -> Tensor:
        """Rating parameters (eq. 3) from z (B, D): categorical logits (B, L) or gaussian mean (B,).
        Bernoulli models have no rating head; use :meth:`item_logits`."""
        if self.rating_head is None:
            raise ValueError("a bernoulli (implicit-feedback) VaeGmm has no rating head; use item_logits")
        out = self.rating_head(self.dec_hidden(z))
        return out if self.likelihood == "categorical" else out.squeeze(-1)

    def item_logits(self, z: Tensor, items: Tensor) -> Tensor:
        """Logits of the interaction vector (eq. 7) at item columns: z (B, D), items (B, ...) -> (B, ...)."""
        h = self.dec_hidden(z)  # (B, H)
        items = _map(items.long(), self.item_known)
        w = self.item_out(items)  # (B, ..., H)
        shape = (h.shape[0],) + (1,) * (items.dim() - 1) + (h.shape[1],)
        return (w * h.view(shape)).sum(-1) + self.item_bias(items).squeeze(-1)

    def rating_nll(self, out: Tensor, rating: Tensor) -> Tensor:
        """-log p(r|z) per pair (B,): cross-entropy over levels, or a Gaussian NLL with learned noise."""
        rating = rating.to(out.dtype)
        if self.likelihood == "categorical":
            return F.cross_entropy(out, self.rating_to_level(rating), reduction="none")
        return 0.5 * (_LOG_2PI + self.obs_logvar + (rating - out) ** 2 * torch.exp(-self.obs_logvar))

    def items_nll(self, z: Tensor, context_items: Tensor, negative_items: Tensor | None) -> Tensor:
        """-log p(x_u|z) per pair (B,) for the sampled interaction vector (eq. 7): one observed item of the
        same user (B,) with target 1 and N uniform items (B, N) with target 0."""
        pos = self.item_logits(z, context_items)  # (B,)
        nll = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
        if negative_items is not None and negative_items.numel():
            neg = self.item_logits(z, negative_items.view(z.shape[0], -1))  # (B, N)
            nll = nll + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none").sum(-1)
        return nll

    def rating_to_level(self, rating: Tensor) -> Tensor:
        """Nearest rating level index (B,) in 0..L-1 for a categorical likelihood."""
        lo, hi = self.rating_range
        scaled = (rating - lo) / (hi - lo) * (self.n_rating_levels - 1)
        return scaled.round().clamp(0, self.n_rating_levels - 1).long()

    def point_prediction(self, out: Tensor) -> Tensor:
        """Rating prediction (B,) from :meth:`decode` output: the expected rating for categorical (it
        minimises the squared error that RMSE measures), the mean for gaussian."""
        if self.likelihood == "categorical":
            return out.softmax(-1) @ self.levels.to(out.dtype)
        return out

    @torch.no_grad()
    def predict(self, user: Tensor, item: Tensor) -> Tensor:
        """Predicted rating (B,) from the mean of q(z|x) (explicit likelihoods)."""
        with self.inference():
            mu, _ = self.encode(user, item)
            return self.point_prediction(self.decode(mu))

    @torch.no_grad()
    def score(self, user: Tensor, item: Tensor) -> Tensor:
        """Interaction score (B,) of each pair: the logit of the pair's own item column at the mean of
        q(z|x). Ranks observed pairs above unobserved ones (AUC); works for every likelihood."""
        with self.inference():
            mu, _ = self.encode(user, item)
            return self.item_logits(mu, item)

    # ------------------------------------------------------------------ GMM prior

    @property
    def log_pi(self) -> Tensor:
        """log p(c) (K,) (eq. 5), normalised from the free logits."""
        return F.log_softmax(self.pi_logits, dim=0)

    def prior_logvar(self) -> Tensor:
        return self.logvar_c.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def log_joint(self, z: Tensor) -> Tensor:
        """log p(c) + log N(z | mu_c, sigma_c^2) for every cluster: (B, D) -> (B, K) (eq. 5-6), no loop over K."""
        logvar_c = self.prior_logvar()  # (K, D)
        diff = z.unsqueeze(1) - self.mu_c.unsqueeze(0)  # (B, 1, D) - (1, K, D) -> (B, K, D)
        log_density = -0.5 * (_LOG_2PI + logvar_c + diff.pow(2) * torch.exp(-logvar_c)).sum(-1)  # (B, K)
        return self.log_pi + log_density

    def responsibilities(self, z: Tensor) -> Tensor:
        """gamma_c = p(c|z) (eq. 8), computed in log space: (B, D) -> (B, K); rows sum to 1."""
        return torch.softmax(self.log_joint(z), dim=-1)

    @torch.no_grad()
    def init_prior(self, weights: Tensor, means: Tensor, variances: Tensor) -> None:
        """Copy a fitted mixture (weights (K,), means (K, D), diagonal variances (K, D)) into the prior."""
        k, d = self.mu_c.shape
        if weights.shape != (k,) or means.shape != (k, d) or variances.shape != (k, d):
            raise ValueError(f"prior shapes {tuple(weights.shape)}, {tuple(means.shape)}, {tuple(variances.shape)} "
                             f"do not fit K={k}, D={d}")
        self.pi_logits.copy_(weights.clamp_min(1e-8).log())
        self.mu_c.copy_(means)
        self.logvar_c.copy_(variances.clamp_min(1e-8).log())

    # ------------------------------------------------------------------ clusters

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode (no dropout, no id replacement) for the duration, then back to the previous mode."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def assign(self, user: Tensor, item: Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        """Cluster of each pair (B,) = argmax_c gamma_c (eq. 9).

        By default gamma is evaluated at the mean of q(z|x), so the result is deterministic and does not
        depend on the rest of the batch; ``sample=True`` draws z (eq. 2) instead, e.g. for diagnostics.
        """
        with self.inference():
            mu, logvar = self.encode(user, item)
            z = self.reparameterize(mu, logvar, generator) if sample else mu
            return self.log_joint(z).argmax(-1)

    # ------------------------------------------------------------------ losses

    def elbo(
        self,
        user: Tensor,
        item: Tensor,
        target: Tensor | None = None,
        beta: float = 0.1,
        *,
        context_items: Tensor | None = None,
        negative_items: Tensor | None = None,
        sample: bool | None = None,
        kl_mask: Tensor | None = None,
    ) -> LossParts:
        """The beta-weighted negative ELBO, VaDE-style (eq. 16-17), averaged over the batch.

        recon = rating_weight * -log p(r|z) + -log p(x_u|z) with z drawn by eq. 2 (one sample, as in VaDE);
        gamma = p(c|z) (eq. 8);
        kl_z  = sum_c gamma_c KL(N(mu, sigma^2) || N(mu_c, sigma_c^2))
              = sum_c gamma_c * 1/2 sum_d [log sigma_cd^2 - log sigma_d^2 + (sigma_d^2 + (mu_d - mu_cd)^2) / sigma_cd^2 - 1]
        kl_c  = sum_c gamma_c (log gamma_c - log pi_c)
        Together these are eq. 17 (the terms regrouped); both are >= 0.

        Args:
            user, item: (B,) contiguous ids.
            target: (B,) ratings for explicit likelihoods. For ``bernoulli`` it may instead hold 1/0 labels of
                the pairs themselves (observed pair / sampled negative pair), scored at their own item column.
            beta: weight of the KL terms (paper: 0.1, after beta-VAE).
            context_items: (B,) another observed item of each pair's user; with ``negative_items`` (B, N) it
                adds the sampled interaction-vector term (eq. 7). See :class:`InteractionSampler`.
            sample: draw z (default: in training mode) or use z = mu (eval: a deterministic validation loss).
            kl_mask: optional (B,) weights of each pair in the KL mean (e.g. 0 for sampled negative pairs).
        """
        user, item = self._drop_ids(*self.map_ids(user, item))
        mu, logvar = self._encode_mapped(user, item)  # (B, D) each
        sample = self.training if sample is None else sample
        z = self.reparameterize(mu, logvar) if sample else mu

        zero = mu.new_zeros(())
        rating_nll, items_nll = zero, zero
        if target is not None:
            if self.likelihood == "bernoulli":
                logits = self.item_logits(z, item)
                items_nll = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none").mean()
            else:
                rating_nll = self.rating_nll(self.decode(z), target).mean()
        if context_items is not None:
            items_nll = items_nll + self.items_nll(z, context_items, negative_items).mean()
        if target is None and context_items is None:
            raise ValueError("elbo needs a target (ratings or pair labels) and/or context_items to reconstruct")
        recon = self.rating_weight * rating_nll + items_nll

        log_joint = self.log_joint(z)  # (B, K)
        log_gamma = F.log_softmax(log_joint, dim=-1)  # (B, K)
        gamma = log_gamma.exp()
        logvar_c = self.prior_logvar()  # (K, D)
        var_ratio = torch.exp(logvar.unsqueeze(1) - logvar_c)  # (B, 1, D) - (K, D) -> (B, K, D)
        sq = (mu.unsqueeze(1) - self.mu_c).pow(2) * torch.exp(-logvar_c)  # (B, K, D)
        kl_gauss = 0.5 * (logvar_c - logvar.unsqueeze(1) + var_ratio + sq - 1.0).sum(-1)  # (B, K)
        kl_z = (gamma * kl_gauss).sum(-1)  # (B,)
        kl_c = (gamma * (log_gamma - self.log_pi)).sum(-1)  # (B,)
        if kl_mask is None:
            kl_z_m, kl_c_m = kl_z.mean(), kl_c.mean()
        else:
            w = kl_mask.to(kl_z.dtype)
            denom = w.sum().clamp_min(1.0)
            kl_z_m, kl_c_m = (kl_z * w).sum() / denom, (kl_c * w).sum() / denom
        kl = kl_z_m + kl_c_m
        return LossParts(loss=recon + beta * kl, recon=recon, kl=kl, kl_z=kl_z_m, kl_c=kl_c_m,
                         rating_nll=rating_nll, items_nll=items_nll)

    def pretrain_loss(self, user: Tensor, item: Tensor, target: Tensor | None = None, *,
                      context_items: Tensor | None = None, negative_items: Tensor | None = None) -> Tensor:
        """Plain autoencoder loss for the warm-up before the GMM init: the reconstruction term at z = mu, no KL."""
        user, item = self._drop_ids(*self.map_ids(user, item))
        mu, _ = self._encode_mapped(user, item)
        loss = mu.new_zeros(())
        if target is not None and self.likelihood != "bernoulli":
            loss = loss + self.rating_weight * self.rating_nll(self.decode(mu), target).mean()
        if context_items is not None:
            loss = loss + self.items_nll(mu, context_items, negative_items).mean()
        return loss

    def forward(self, user: Tensor, item: Tensor, target: Tensor | None = None, beta: float = 0.1,
                **kwargs) -> LossParts:
        return self.elbo(user, item, target, beta, **kwargs)


class InteractionSampler:
    """Samples the interaction-vector targets of eq. 7 for a batch of training pairs.

    Holds each user's training items (CSR arrays). For a pair (u, i) it draws one *other* item of u (the
    "context" item; i itself only when u has a single training item) and ``n_negatives`` items uniformly
    from all items. Negatives are not filtered against u's items: with sparse data a collision is rare and
    costs only a little label noise, and filtering would need a per-user set lookup in the hot loop.
    """

    def __init__(self, user: np.ndarray, item: np.ndarray, n_users: int, n_items: int) -> None:
        user = np.asarray(user, dtype=np.int64)
        item = np.asarray(item, dtype=np.int64)
        order = np.argsort(user, kind="stable")
        counts = np.bincount(user, minlength=n_users)
        self.items = torch.as_tensor(item[order])  # (N,) items grouped by user
        self.start = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]))  # (n_users,)
        self.count = torch.as_tensor(counts)  # (n_users,)
        self.n_items = n_items

    def sample(self, user: Tensor, item: Tensor, n_negatives: int = 1,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(context (B,), negatives (B, n_negatives))`` for pairs ``user``, ``item`` (B,) of known users."""
        user = user.long().cpu().clamp(0, self.count.shape[0] - 1)
        has = self.count[user] > 0  # users without training items get the unknown item column
        n = self.count[user].clamp_min(1)  # (B,)
        last = max(self.items.shape[0] - 1, 0)
        k = (torch.rand(user.shape, generator=generator) * n).long().clamp_max(n - 1)
        context = self.items[(self.start[user] + k).clamp_max(last)]
        # hit the pair's own item: take the user's next item instead (same item again only if n == 1)
        again = (context == item.cpu()) & (n > 1)
        context = torch.where(again, self.items[(self.start[user] + (k + 1) % n).clamp_max(last)], context)
        context = torch.where(has, context, torch.full_like(context, self.n_items))
        negatives = torch.randint(self.n_items, (user.shape[0], n_negatives), generator=generator)
        return context.to(item.device), negatives.to(item.device)


def _map(ids: Tensor, known: Tensor) -> Tensor:
    """ids (...) -> ids (...) with negatives, ids >= len(known) and unseen ids replaced by len(known)."""
    n = known.shape[0]
    in_range = (ids >= 0) & (ids < n)
    safe = torch.where(in_range, ids, torch.zeros_like(ids))
    ok = in_range & known[safe]
    return torch.where(ok, ids, torch.full_like(ids, n))
