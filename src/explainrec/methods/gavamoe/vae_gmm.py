"""GaVaMoE stage 1: a VAE with a Gaussian-mixture prior over user-item pairs (paper section 3.2, Appendix A).

Shapes: B pairs in a batch, T=2 tokens per pair ([user, item]), E embedding width, D latent width,
K clusters, L rating levels.

    user, item (B,) --embed--> (B, 2, E) --Transformer (batch_first, pairs never attend to each other)-->
    (B, 2, E) --flatten--> (B, 2E) --heads--> mu, logvar (B, D)                          eq. 1
    z = mu + eps * sigma                                                                  eq. 2
    decoder MLP: z (B, D) -> rating parameters (B, L) | (B,)                              eq. 3, 7
    prior p(c) = Cat(softmax(pi_logits)), p(z|c) = N(mu_c, diag(exp(logvar_c)))           eq. 4-6
    gamma = p(c|z) (B, K); cluster = argmax_c gamma                                       eq. 8-9

Cold start: each embedding table has one extra "unknown" row (index ``n_users`` / ``n_items``). Ids that are
negative, out of range, or marked unseen in ``user_known``/``item_known`` (set by the recipe from the train
split) map to it, so any pair gets a latent and a cluster -- never an index error. Training keeps that row
useful by replacing each id with "unknown" with probability ``unknown_prob`` (default 5%) inside
:meth:`VaeGmm.elbo` / :meth:`VaeGmm.pretrain_loss` while the module is in training mode.

Differences from the reference release (see STYLE.md section 1, items 3-4): the encoder is batch-first over
a (B, 2, E) tensor, so a pair's latent never depends on the rest of its batch; clusters are assigned from the
mean of q(z|x) by default (deterministic) and use log pi_c, not pi_c, in log space.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LIKELIHOODS = ("categorical", "gaussian", "bernoulli")
# Keeps exp(logvar) inside float32's comfortable range; q(z|x) and the prior never need wider variances.
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0
_LOG_2PI = math.log(2.0 * math.pi)


class LossParts(NamedTuple):
    """The beta-weighted negative ELBO (eq. 16) and its unweighted parts, each a scalar mean over the batch.

    ``loss = recon + beta * kl`` where ``kl = kl_z + kl_c`` is KL(q(z,c|x) || p(z,c)) (eq. 17) split into
    E_q(c|x)[KL(q(z|x) || p(z|c))] and KL(q(c|x) || p(c)).
    """

    loss: Tensor
    recon: Tensor
    kl: Tensor
    kl_z: Tensor
    kl_c: Tensor


class VaeGmm(nn.Module):
    """Pair encoder, rating decoder and learnable GMM prior.

    Args:
        n_users, n_items: table sizes (contiguous ids ``0..n-1``); one "unknown" row is added to each.
        n_clusters: K, the number of mixture components (= gates in stage 2).
        likelihood: ``"categorical"`` over ``n_rating_levels`` evenly spaced levels of ``rating_range``,
            ``"gaussian"`` for real-valued ratings (learned global noise variance), or ``"bernoulli"`` for
            implicit feedback (target 1 = observed pair, 0 = sampled negative; eq. 7).
        embed_dim: E. The paper uses 768; 64 is the CPU default (a 2-token sequence needs little width and
            the step time grows with E squared).
        latent_dim: D. The paper uses 128; 32 is the CPU default (K Gaussians in 32 dimensions still separate
            well and the GMM init is cheaper).
        n_heads, n_layers: attention heads and Transformer layers (the paper: 2 layers).
        ff_dim: Transformer feed-forward width; default 4E (PyTorch's default of 2048 would dominate the cost).
        decoder_hidden: hidden width of the 2-layer decoder MLP; default E.
        dropout: dropout inside the Transformer.
        unknown_prob: chance, per id and training step, of replacing an id with "unknown" (cold-start row).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        n_clusters: int,
        likelihood: str = "categorical",
        n_rating_levels: int = 5,
        rating_range: tuple[float, float] = (1.0, 5.0),
        embed_dim: int = 64,
        latent_dim: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        ff_dim: int | None = None,
        decoder_hidden: int | None = None,
        dropout: float = 0.1,
        unknown_prob: float = 0.05,
        model_absence: bool = False,
        pool: str = "concat",
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
        self.n_users, self.n_items, self.n_clusters = n_users, n_items, n_clusters
        self.likelihood = likelihood
        self.n_rating_levels = n_rating_levels
        self.rating_range = (lo, hi)
        self.latent_dim = latent_dim
        self.unknown_prob = unknown_prob

        # --- encoder E(u, i) -> mu, logvar (eq. 1)
        self.user_emb = nn.Embedding(n_users + 1, embed_dim)  # last row: unknown user
        self.item_emb = nn.Embedding(n_items + 1, embed_dim)  # last row: unknown item
        self.pos_emb = nn.Parameter(torch.zeros(2, embed_dim))  # tells the encoder which token is the user
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.normal_(self.pos_emb, std=0.1)
        layer = nn.TransformerEncoderLayer(
            d_model=embed_dim, nhead=n_heads, dim_feedforward=ff_dim or 4 * embed_dim, dropout=dropout,
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=n_layers, norm=nn.LayerNorm(embed_dim),
                                             enable_nested_tensor=False)
        self.pool = pool
        pooled = 2 * embed_dim if pool == "concat" else embed_dim
        self.to_mu = nn.Linear(pooled, latent_dim)
        self.to_logvar = nn.Linear(pooled, latent_dim)

        # --- decoder D(z) -> rating parameters (eq. 3)
        # With model_absence an explicit-rating decoder also says whether the pair was observed at all:
        # output 0 is the logit of "observed", the rest parameterise the rating (see recon_nll).
        self.model_absence = bool(model_absence) and likelihood != "bernoulli"
        hidden = decoder_hidden or embed_dim
        out_dim = (n_rating_levels if likelihood == "categorical" else 1) + int(self.model_absence)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        if likelihood == "gaussian":
            with torch.no_grad():
                self.decoder[-1].bias[-1] = (lo + hi) / 2  # start at the middle of the scale
            self.obs_logvar = nn.Parameter(torch.zeros(()))  # global rating noise, learned
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
        user, item = self.map_ids(user, item)
        return self._encode_mapped(user, item)

    def _encode_mapped(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        tokens = torch.stack([self.user_emb(user), self.item_emb(item)], dim=1) + self.pos_emb  # (B, 2, E)
        hidden = self.encoder(tokens)  # (B, 2, E): attention only within each pair's 2 tokens
        if self.pool == "concat":
            flat = hidden.flatten(1)  # (B, 2E)
        elif self.pool == "user":
            flat = hidden[:, 0]
        elif self.pool == "mean":
            flat = hidden.mean(1)
        else:
            flat = hidden[:, 0] + hidden[:, 0] * hidden[:, 1]
        logvar = self.to_logvar(flat).clamp(LOGVAR_MIN, LOGVAR_MAX)
        return self.to_mu(flat), logvar

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + eps * sigma, eps ~ N(0, I) (eq. 2)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output (eq. 3) for z (B, D): categorical logits (B, L), gaussian mean (B,), bernoulli logit
        (B,). Under ``model_absence`` column 0 is prepended: the logit that the pair is observed at all."""
        out = self.decoder(z)
        return out if out.shape[-1] > 1 else out.squeeze(-1)

    def recon_nll(self, out: Tensor, target: Tensor, observed: Tensor | None = None) -> Tensor:
        """-log p(x|z) per pair (B,): the reconstruction term of eq. 16 under the chosen likelihood.

        ``target`` holds ratings (or 1/0 for bernoulli, eq. 7). ``observed`` (B,) bool marks real pairs
        versus sampled negatives; it is needed only by a ``model_absence`` decoder, where the rating of a
        negative is ignored.
        """
        target = target.to(out.dtype)
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, target, reduction="none")
        if self.model_absence:
            if observed is None:
                observed = torch.ones_like(target, dtype=torch.bool)
            observed = observed.to(torch.bool)
        elif observed is not None and not bool(observed.all()):
            raise ValueError("sampled negatives need a model_absence=True decoder")
        if self.likelihood == "categorical":
            logits = out[..., 1:] if self.model_absence else out
            nll = F.cross_entropy(logits, self.rating_to_level(torch.nan_to_num(target)), reduction="none")
        else:
            mean = out[..., 1] if self.model_absence else out
            diff2 = (torch.nan_to_num(target) - mean) ** 2
            nll = 0.5 * (_LOG_2PI + self.obs_logvar + diff2 * torch.exp(-self.obs_logvar))
        if not self.model_absence:
            return nll
        # p(x|z) = Ber(observed | sigmoid(out[:, 0])) * p(rating | z)^observed
        seen = F.binary_cross_entropy_with_logits(out[..., 0], observed.to(out.dtype), reduction="none")
        return seen + torch.where(observed, nll, torch.zeros_like(nll))

    def rating_to_level(self, rating: Tensor) -> Tensor:
        """Nearest rating level index (B,) in 0..L-1 for a categorical likelihood."""
        lo, hi = self.rating_range
        scaled = (rating - lo) / (hi - lo) * (self.n_rating_levels - 1)
        return scaled.round().clamp(0, self.n_rating_levels - 1).long()

    def point_prediction(self, out: Tensor) -> Tensor:
        """A point prediction (B,) from decoder output.

        Categorical: the expected rating (it minimises the squared error that RMSE measures). Gaussian: the
        mean. Bernoulli: the probability that the pair is a positive. With ``model_absence`` the rating part
        is the rating given that the pair is observed.
        """
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        rating_out = out[..., 1:] if self.model_absence else out
        if self.likelihood == "categorical":
            return rating_out.softmax(-1) @ self.levels.to(out.dtype)
        return rating_out.squeeze(-1) if self.model_absence else rating_out

    def observed_score(self, out: Tensor) -> Tensor:
        """A score (B,) that ranks observed pairs above negatives: the logit of "observed" (bernoulli or
        ``model_absence``); for a decoder without absence modelling, the predicted rating."""
        if self.likelihood == "bernoulli":
            return out
        if self.model_absence:
            return out[..., 0]
        return self.point_prediction(out)

    @torch.no_grad()
    def predict(self, user: Tensor, item: Tensor) -> Tensor:
        """Point prediction (B,) from the mean of q(z|x); see :meth:`point_prediction`."""
        with self.inference():
            mu, _ = self.encode(user, item)
            return self.point_prediction(self.decode(mu))

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
        target: Tensor,
        beta: float = 0.1,
        *,
        sample: bool | None = None,
        observed: Tensor | None = None,
        kl_mask: Tensor | None = None,
    ) -> LossParts:
        """The beta-weighted negative ELBO, VaDE-style (eq. 16-17), averaged over the batch.

        recon = -log p(x|z) with z drawn by eq. 2 (one sample, as in VaDE); gamma = p(c|z) (eq. 8);
        kl_z  = sum_c gamma_c KL(N(mu, sigma^2) || N(mu_c, sigma_c^2))
              = sum_c gamma_c * 1/2 sum_d [log sigma_cd^2 - log sigma_d^2 + (sigma_d^2 + (mu_d - mu_cd)^2) / sigma_cd^2 - 1]
        kl_c  = sum_c gamma_c (log gamma_c - log pi_c)
        Together these are eq. 17 (the terms regrouped); both are >= 0.

        Args:
            user, item: (B,) contiguous ids; target: (B,) ratings (or 1/0 for bernoulli).
            beta: weight of the KL terms (paper: 0.1, after beta-VAE).
            sample: draw z (default: in training mode) or use z = mu (eval: a deterministic validation loss).
            observed: optional (B,) bool, False for sampled negatives (``model_absence`` decoders only).
            kl_mask: optional (B,) bool/float weights of each pair in the KL mean, e.g. so that sampled
                negatives of implicit feedback train the decoder without pulling mixture mass toward them.
        """
        user, item = self._drop_ids(*self.map_ids(user, item))
        mu, logvar = self._encode_mapped(user, item)  # (B, D) each
        sample = self.training if sample is None else sample
        z = self.reparameterize(mu, logvar) if sample else mu
        recon = self.recon_nll(self.decode(z), target, observed)  # (B,)

        log_joint = self.log_joint(z)  # (B, K)
        log_gamma = F.log_softmax(log_joint, dim=-1)  # (B, K)
        gamma = log_gamma.exp()
        logvar_c = self.prior_logvar()  # (K, D)
        var_ratio = torch.exp(logvar.unsqueeze(1) - logvar_c)  # (B, K, D)
        sq = (mu.unsqueeze(1) - self.mu_c).pow(2) * torch.exp(-logvar_c)  # (B, K, D)
        kl_gauss = 0.5 * (logvar_c - logvar.unsqueeze(1) + var_ratio + sq - 1.0).sum(-1)  # (B, K)
        kl_z = (gamma * kl_gauss).sum(-1)  # (B,)
        kl_c = (gamma * (log_gamma - self.log_pi)).sum(-1)  # (B,)

        recon_m = recon.mean()
        if kl_mask is None:
            kl_z_m, kl_c_m = kl_z.mean(), kl_c.mean()
        else:
            w = kl_mask.to(kl_z.dtype)
            denom = w.sum().clamp_min(1.0)
            kl_z_m, kl_c_m = (kl_z * w).sum() / denom, (kl_c * w).sum() / denom
        kl = kl_z_m + kl_c_m
        return LossParts(loss=recon_m + beta * kl, recon=recon_m, kl=kl, kl_z=kl_z_m, kl_c=kl_c_m)

    def pretrain_loss(self, user: Tensor, item: Tensor, target: Tensor, observed: Tensor | None = None) -> Tensor:
        """Plain autoencoder loss for the warm-up before the GMM init: mean -log p(x | z = mu), no KL."""
        user, item = self._drop_ids(*self.map_ids(user, item))
        mu, _ = self._encode_mapped(user, item)
        return self.recon_nll(self.decode(mu), target, observed).mean()

    def forward(self, user: Tensor, item: Tensor, target: Tensor, beta: float = 0.1) -> LossParts:
        return self.elbo(user, item, target, beta)


def _map(ids: Tensor, known: Tensor) -> Tensor:
    """ids (B,) -> ids (B,) with negatives, ids >= len(known) and unseen ids replaced by len(known)."""
    n = known.shape[0]
    in_range = (ids >= 0) & (ids < n)
    safe = torch.where(in_range, ids, torch.zeros_like(ids))
    ok = in_range & known[safe]
    return torch.where(ok, ids, torch.full_like(ids, n))
