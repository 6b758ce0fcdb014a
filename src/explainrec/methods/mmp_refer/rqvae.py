"""Joint residual encoding (step 2): one RQ-VAE per content view, aligned by a cross-view InfoNCE.

Per view m (paper sec. 3.2.1 and App. A.1), for an item's standardised content vector e (per-dimension z-score):

    z       = enc(e)                                   MLP, d_m -> hidden -> latent (64)
    r_1     = z;  c_l = argmin_k ||r_l - C_l[k]||^2;  r_{l+1} = r_l - C_l[c_l],   l = 1..L (4)
    q       = sum_l C_l[c_l]                           the quantised vector; (c_1..c_L) is the semantic ID
    e_hat   = dec(z + sg[q - z])                       straight-through: the decoder sees q, the encoder gets its
                                                       gradient
    L_rec   = mean (e_hat - e)^2
    L_rq    = sum_l mean (sg[r_l] - C_l[c_l])^2 + beta * mean (r_l - sg[C_l[c_l]])^2       beta = 0.25
    L_align = InfoNCE between the views' q of the same item against the other items of the batch (cosine / tau),
              both directions, averaged over view pairs; its gradient reaches the codebooks (q is a sum of codes)
    loss    = align_weight * L_align + sum_m (L_rq + L_rec)                               eq. 4

Why the alignment gradient stops at the codebooks: passed on to the encoder (straight-through, as the decoder's
is), it inflated the latents -- the gradient of a cosine is orthogonal to its input, so every step lengthens z --
and on google's two text views (a 4k-item sample, 15 epochs) the RQ loss rose from 2.3 to 7.2 and reconstruction
got worse (0.60 -> 0.61 MSE); with codebook-only alignment the RQ loss fell to 0.84, reconstruction improved to
0.48 (as with no alignment at all), the align loss still fell (8.5 -> 6.8) and the joint collision rate was 0.2%.

Codebook size: 256 codes per level (paper) when the items allow, else the largest power of two <= items / 4
(at least 2) -- with fewer items than about 4 per code, most codes could never be used. Training: a few
autoencoder-only warm-up epochs, then each level's codebook is initialised by k-means (our seeded k-means++) on
the latents' residuals at that level, then joint epochs; every ``restart_every`` epochs a code that no item of
the epoch chose is moved onto the residual of a random item at its level (dead-code restart). Seeded through
private generators; the global RNG is untouched.

The report gives, per view and level, the share of codes in use and the code perplexity, and the collision rate
of the semantic IDs: the share of items whose full code tuple is shared with another item (per view -- also split
into items with their own content and items whose vector is a fallback fill -- and for the views' tuples together).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainrec.methods.mmp_refer.config import RQVAEConfig
from explainrec.methods.mmp_refer.content import ItemContent


def codebook_size(n_items: int, max_codes: int = 256) -> int:
    """Codes per level: the largest power of two <= ``n_items / 4``, clamped to ``[2, max_codes]``."""
    if n_items < 2:
        raise ValueError(f"an RQ-VAE needs at least 2 items; got {n_items}")
    size = 1 << max(1, int(np.floor(np.log2(max(n_items / 4, 1.0)))))
    return int(min(max(size, 2), max_codes, n_items))


def collision_rate(codes: np.ndarray) -> float:
    """Share of rows of ``codes (n, L)`` whose full tuple also occurs in another row."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def _share_colliding(codes: np.ndarray, present: np.ndarray, own: bool) -> float | None:
    """Share of the items of one group (own content or filled) whose full tuple occurs in another item (any group)."""
    group = present if own else ~present
    if not group.any():
        return None
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return round(float((counts[inverse.reshape(-1)] > 1)[group].mean()), 4)


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, o))


class ResidualQuantizer(nn.Module):
    """``levels`` codebooks of ``codes`` vectors of width ``dim``; nearest-code residual quantisation."""

    def __init__(self, levels: int, codes: int, dim: int) -> None:
        super().__init__()
        self.codebooks = nn.Parameter(torch.randn(levels, codes, dim) * 0.1)  # (L, K, D)

    @property
    def levels(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def n_codes(self) -> int:
        return int(self.codebooks.shape[1])

    def forward(self, z: Tensor, beta: float = 0.25) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``z (B, D)`` -> ``(q (B, D), codes (B, L), rq_loss, residuals (B, L, D))``."""
        r, q = z, torch.zeros_like(z)
        codes, residuals = [], []
        loss = z.new_zeros(())
        for cb in self.codebooks:  # (K, D)
            with torch.no_grad():
                dist = r.pow(2).sum(-1, keepdim=True) - 2 * r @ cb.T + cb.pow(2).sum(-1)  # (B, K)
                idx = dist.argmin(-1)
            c = cb[idx]  # (B, D)
            loss = loss + F.mse_loss(c, r.detach()) + beta * F.mse_loss(r, c.detach())
            residuals.append(r)
            codes.append(idx)
            q = q + c
            r = r - c
        return q, torch.stack(codes, 1), loss, torch.stack(residuals, 1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Quantised vectors ``(B, D)`` of semantic IDs ``(B, L)``."""
        return sum(self.codebooks[level][codes[:, level]] for level in range(self.levels))


class RQVAE(nn.Module):
    """Encoder, residual quantiser and decoder of one view."""

    def __init__(self, in_dim: int, cfg: RQVAEConfig, n_codes: int) -> None:
        super().__init__()
        self.encoder = _mlp(in_dim, cfg.hidden, cfg.latent)
        self.decoder = _mlp(cfg.latent, cfg.hidden, in_dim)
        self.quantizer = ResidualQuantizer(cfg.levels, n_codes, cfg.latent)
        self.beta = cfg.beta

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.encoder(x)
        q, codes, rq_loss, residuals = self.quantizer(z, self.beta)
        recon = self.decoder(z + (q - z).detach())
        return {"z": z, "q": q, "codes": codes, "residuals": residuals, "rq": rq_loss,
                "rec": F.mse_loss(recon, x)}


def info_nce(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE of row-aligned ``(B, D)`` batches: row i of ``a`` and of ``b`` are the positive pair."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau  # (B, B)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def align_loss(qs: list[Tensor], tau: float) -> Tensor:
    """Mean InfoNCE over every pair of views (zero with one view)."""
    pairs = [(i, j) for i in range(len(qs)) for j in range(i + 1, len(qs))]
    if not pairs:
        return qs[0].new_zeros(())
    return sum(info_nce(qs[i], qs[j], tau) for i, j in pairs) / len(pairs)


@dataclass
class RQVAEResult:
    """Semantic IDs, codebooks and quantised vectors of every item, per view (CPU tensors), and the report.

    ``mean``/``std`` standardise the view's raw vectors the way the RQ-VAE (and the item tower) read them.
    ``state`` is the model's state dict (encoders and decoders too, for encoding new items).
    """

    codes: dict[str, Tensor]  # view -> (I, L) long
    codebooks: dict[str, Tensor]  # view -> (L, K, D)
    quantised: dict[str, Tensor]  # view -> (I, D)
    mean: dict[str, Tensor]  # view -> (d_view,)
    std: dict[str, Tensor]  # view -> (d_view,)
    state: dict[str, Tensor] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def views(self) -> list[str]:
        return list(self.codes)

    def tensors(self) -> dict[str, Tensor]:
        """Flat ``name -> tensor`` dict for safetensors: ``codes.<view>``, ``codebooks.<view>``, ``model.<key>`` ..."""
        out = {}
        for kind in ("codes", "codebooks", "quantised", "mean", "std"):
            out.update({f"{kind}.{v}": t.contiguous() for v, t in getattr(self, kind).items()})
        out.update({f"model.{k}": t.contiguous() for k, t in self.state.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict) -> "RQVAEResult":
        """Inverse of :meth:`tensors`; ``meta`` = ``{"report", "history", "config"}`` as saved beside them."""
        kinds = ("codes", "codebooks", "quantised", "mean", "std", "model")
        parts: dict[str, dict[str, Tensor]] = {k: {} for k in kinds}
        for name, t in tensors.items():
            kind, _, key = name.partition(".")
            if kind not in parts:
                raise ValueError(f"unexpected tensor {name!r} in an RQ-VAE result")
            parts[kind][key] = t
        return cls(codes=parts["codes"], codebooks=parts["codebooks"], quantised=parts["quantised"],
                   mean=parts["mean"], std=parts["std"], state=parts["model"], report=meta.get("report", {}),
                   history=meta.get("history", []), config=meta.get("config", {}))


def standardise(x: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """``(z-scored x, mean, std)`` per dimension, float32 (a constant dimension keeps std 1)."""
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    mean, std = t.mean(0), t.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (t - mean) / std, mean, std


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Seeded k-means: k-means++ initialisation, then Lloyd iterations; ``(centres (k, D), labels (n,))``.

    Our own (a few lines of torch) rather than scikit-learn's, whose import alone took ~8 s on the test machine.
    A cluster left empty takes the point farthest from its centre. With fewer distinct points than ``k`` some
    centres coincide; the dead-code restarts move them later.
    """
    n = x.shape[0]
    centres = torch.empty(k, x.shape[1])
    centres[0] = x[torch.randint(n, (1,), generator=generator)]
    d2 = (x - centres[0]).pow(2).sum(-1)  # (n,) squared distance to the nearest chosen centre
    for j in range(1, k):
        p = d2.clamp(min=0)
        pick = torch.multinomial(p / p.sum(), 1, generator=generator) if p.sum() > 0 else \
            torch.randint(n, (1,), generator=generator)
        centres[j] = x[pick]
        d2 = torch.minimum(d2, (x - centres[j]).pow(2).sum(-1))
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ centres.T + centres.pow(2).sum(-1)  # (n, k)
        new = dist.argmin(-1)
        counts = torch.bincount(new, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, new, x)
        moved = centres.clone()
        full = counts > 0
        moved[full] = sums[full] / counts[full, None].float()
        empty = torch.nonzero(~full).flatten()
        if len(empty):
            far = dist.gather(1, new[:, None]).squeeze(1).topk(min(len(empty), n)).indices
            moved[empty[: len(far)]] = x[far]
        converged = torch.equal(new, labels) and not len(empty)
        centres, labels = moved, new
        if converged:
            break
    return centres, labels


def _usage(codes: np.ndarray, n_codes: int) -> tuple[list[float], list[float]]:
    """Per level: share of codes used and perplexity exp(H(code distribution))."""
    used, ppl = [], []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=n_codes).astype(np.float64)
        p = counts / max(counts.sum(), 1.0)
        nz = p[p > 0]
        used.append(float((counts > 0).mean()))
        ppl.append(float(np.exp(-(nz * np.log(nz)).sum())))
    return used, ppl


def train_rqvae(content: ItemContent, cfg: RQVAEConfig | None = None, *, progress: bool = False,
                echo: Callable[[str], None] | None = None) -> RQVAEResult:
    """Train one RQ-VAE per view of ``content`` jointly; return every item's semantic IDs and quantised vectors."""
    cfg = cfg or RQVAEConfig()
    say = echo or (lambda _msg: None)
    start = time.perf_counter()
    views = content.names
    n_items = content.n_items
    n_codes = codebook_size(n_items, cfg.codes)
    data, means, stds = {}, {}, {}
    for v in views:
        data[v], means[v], stds[v] = standardise(content.views[v])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = nn.ModuleDict({v: RQVAE(data[v].shape[1], cfg, n_codes) for v in views})
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batch = min(cfg.batch_size, n_items)

    def batches():
        order = torch.randperm(n_items, generator=gen)
        for lo in range(0, n_items, batch):
            idx = order[lo: lo + batch]
            if len(idx) >= 2:  # InfoNCE needs negatives
                yield idx

    # warm-up: plain autoencoders, so that k-means sees informative latents
    for _ in range(cfg.warmup_epochs):
        for idx in batches():
            loss = sum(F.mse_loss(model[v].decoder(model[v].encoder(data[v][idx])), data[v][idx]) for v in views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    # k-means initialisation, level by level on the residuals
    with torch.no_grad():
        for v in views:
            r = model[v].encoder(data[v])
            for level in range(cfg.levels):
                centres, labels = kmeans(r, n_codes, cfg.kmeans_iters, gen)
                model[v].quantizer.codebooks[level] = centres
                r = r - centres[labels]

    @torch.no_grad()
    def evaluate() -> tuple[dict, dict]:
        model.eval()
        row, outs = {}, {}
        for v in views:
            out = model[v](data[v])
            outs[v] = out
            codes = out["codes"].numpy()
            used, _ = _usage(codes, n_codes)
            row[f"{v}_rec"] = round(float(out["rec"]), 5)
            row[f"{v}_rq"] = round(float(out["rq"]), 5)
            row[f"{v}_used"] = [round(u, 3) for u in used]
            row[f"{v}_collisions"] = round(collision_rate(codes), 4)
        if len(views) > 1:
            row["align"] = round(float(align_loss([outs[v]["q"][:4096] for v in views], cfg.tau)), 4)
        model.train()
        return row, outs

    row, outs = evaluate()
    history = [{"epoch": 0, **row}]
    restarts = {v: [0] * cfg.levels for v in views}
    from explainrec.training.loop_utils import progress as bar

    for epoch in bar(range(cfg.epochs), enabled=progress, desc="rq-vae", total=cfg.epochs):
        counts = {v: np.zeros((cfg.levels, n_codes), dtype=np.int64) for v in views}
        sums = {"loss": 0.0, "rec": 0.0, "rq": 0.0, "align": 0.0}
        steps = 0
        for idx in batches():
            out = {v: model[v](data[v][idx]) for v in views}
            rec = sum(o["rec"] for o in out.values())
            rq = sum(o["rq"] for o in out.values())
            align = align_loss([out[v]["q"] for v in views], cfg.tau)
            loss = cfg.align_weight * align + rec + rq
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for v in views:
                codes = out[v]["codes"].numpy()
                for level in range(cfg.levels):
                    counts[v][level] += np.bincount(codes[:, level], minlength=n_codes)
            steps += 1
            for k, val in (("loss", loss), ("rec", rec), ("rq", rq), ("align", align)):
                sums[k] += float(val.detach())
        row, outs = evaluate()
        history.append({"epoch": epoch + 1, **{k: round(s / max(steps, 1), 5) for k, s in sums.items()}, **row})
        say(f"[rq-vae] epoch {epoch + 1}/{cfg.epochs} loss {sums['loss'] / max(steps, 1):.4f} "
            + " ".join(f"{v}: rec {row[f'{v}_rec']:.4f} coll {row[f'{v}_collisions']:.3f}" for v in views))
        last = epoch + 1 == cfg.epochs
        if cfg.restart_every and (epoch + 1) % cfg.restart_every == 0 and not last:
            with torch.no_grad():
                for v in views:
                    res = outs[v]["residuals"]  # (I, L, D) of the current model
                    for level in range(cfg.levels):
                        dead = np.flatnonzero(counts[v][level] == 0)
                        if len(dead):
                            pick = torch.from_numpy(rng.choice(n_items, size=len(dead), replace=len(dead) > n_items))
                            base = res[pick, level]
                            noise = torch.randn(base.shape, generator=gen) * 0.01 * base.std().clamp(min=1e-3)
                            model[v].quantizer.codebooks[level, torch.from_numpy(dead)] = base + noise
                            restarts[v][level] += len(dead)
            row, outs = evaluate()  # codes follow the moved codebooks

    model.eval()
    codes = {v: outs[v]["codes"].clone() for v in views}
    quantised = {v: outs[v]["q"].detach().clone() for v in views}
    report = {"codes_per_level": n_codes, "levels": cfg.levels, "items": n_items, "views": {},
              "content": content.source, "seconds": round(time.perf_counter() - start, 2)}
    for v in views:
        c = codes[v].numpy()
        used, ppl = _usage(c, n_codes)
        report["views"][v] = {
            "usage_per_level": [round(u, 4) for u in used],
            "perplexity_per_level": [round(p, 2) for p in ppl],
            "collision_rate": round(collision_rate(c), 4),
            # items whose vector is their own content vs a fallback fill (content.py): fills crowd together
            "collision_rate_own_content": _share_colliding(c, content.present[v], True),
            "collision_rate_filled": _share_colliding(c, content.present[v], False),
            "recon_mse_at_init": history[0][f"{v}_rec"],  # after the warm-up and the k-means initialisation
            "recon_mse": history[-1][f"{v}_rec"],
            "restarted_codes_per_level": restarts[v],
        }
    if len(views) > 1:
        report["joint_collision_rate"] = round(collision_rate(np.concatenate([codes[v].numpy() for v in views], 1)), 4)
        report["align_loss"] = history[-1].get("align")
    return RQVAEResult(
        codes=codes, quantised=quantised, mean=means, std=stds,
        codebooks={v: model[v].quantizer.codebooks.detach().clone() for v in views},
        state={k: t.detach().clone() for k, t in model.state_dict().items()},
        report=report, history=history, config=cfg.to_dict(),
    )
