"""GaVaMoE stage 1: train the VAE-GMM on the interaction graph, resumably.

    setup    data arrays, id maps, likelihood from the data, model, AdamW, interaction sampler
    train    pre-train as a plain autoencoder (z = mu, reconstruction only) for ``pretrain_epochs``
             -> fit sklearn GaussianMixture(diag) on the latent means -> init pi, mu_c, sigma_c^2
             -> optimise the beta-weighted ELBO (eq. 16-17) with early stopping on the validation loss
             (a checkpoint after every epoch; ``resume=True`` continues the same run bit for bit)

Saving, clusters, metrics and plots are in :mod:`stage1_method` and :mod:`stage1_eval`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explainrec.data.schema import DataError, Dataset
from explainrec.methods.gavamoe.config import VaeGmmConfig
from explainrec.methods.gavamoe.gmm_init import init_prior_from_latents
from explainrec.methods.gavamoe.vae_gmm import InteractionSampler, VaeGmm
from explainrec.training.checkpoint import checkpoint_exists, load_checkpoint, load_extra_tensors, save_checkpoint
from explainrec.training.loop_utils import progress as progress_bar
from explainrec.training.loop_utils import resolve_device, seed_everything

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


def train_vae_gmm(dataset: Dataset, out: Path, cfg: VaeGmmConfig, *, resume: bool = False,
                  progress: bool = True, echo=log.info) -> tuple[VaeGmm, "TrainData", dict]:
    """Train on ``dataset``'s train interactions, checkpointing into ``out/checkpoint`` after every epoch.

    Returns ``(model, data, state)`` with the best-validation weights loaded. ``resume=True`` continues from the
    checkpoint (same epoch counter, optimizer and RNG states: the result equals an uninterrupted run); its config
    must match except for budgets and display settings (``VaeGmmSettings.RESUMABLE``).
    """
    out.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ setup
    seed_everything(cfg.seed)
    dev = resolve_device(None)
    data = TrainData.from_dataset(dataset, cfg, dev)
    model = VaeGmm(
        dataset.n_users, dataset.n_items, n_clusters=cfg.clusters, likelihood=data.likelihood,
        n_rating_levels=data.n_levels, rating_range=data.rating_range, embed_dim=cfg.embed_dim,
        latent_dim=cfg.latent_dim, n_heads=cfg.n_heads, n_layers=cfg.n_layers, dropout=cfg.dropout,
        unknown_prob=cfg.unknown_prob,
        # the rating weight balances ratings against the interaction vector; alone, ratings keep weight 1
        rating_weight=cfg.rating_weight if cfg.reconstruct_items else 1.0,
    ).to(dev)
    model.set_known(data.user_known, data.item_known)
    optimizer = _make_optimizer(model, cfg)
    data_gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and sampling; saved in checkpoints
    run_config = {"model": model.config, "training": cfg.to_dict(),
                  "data": {"name": dataset.name, "n_train": int(data.train_user.shape[0])}}
    ckpt = out / CHECKPOINT_DIR
    state = {"epoch": 0, "gmm_initialized": False, "best_valid": None, "best_epoch": None, "bad_epochs": 0,
             "stopped_early": False, "history": []}
    best_weights: dict[str, torch.Tensor] | None = None
    if resume and checkpoint_exists(ckpt):  # an incomplete or damaged one raises CheckpointError
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, expected_config=run_config,
                                ignore_config_keys=[f"training.{k}" for k in cfg.RESUMABLE],
                                generators={"data": data_gen})
        extra = load_extra_tensors(ckpt)
        best_weights = {k[len("best."):]: v.to(dev) for k, v in extra.items() if k.startswith("best.")} or None
        echo(f"[vae-gmm] resumed from {ckpt}: continuing after epoch {state['epoch']}")
    elif resume:
        echo(f"[vae-gmm] --resume: no checkpoint in {ckpt} yet; training starts at epoch 1")

    # ------------------------------------------------------------------ train
    total_epochs = cfg.pretrain_epochs + cfg.epochs
    while state["epoch"] < total_epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        phase = "pretrain" if epoch < cfg.pretrain_epochs else "elbo"
        if phase == "elbo" and not state["gmm_initialized"]:
            latents = latent_means(model, data.train_user, data.train_item, cfg.eval_batch_size)
            init_prior_from_latents(model, latents.numpy(), seed=cfg.seed)
            state["gmm_initialized"] = True
        t0 = time.perf_counter()
        train_parts = _train_epoch(model, optimizer, data, cfg, phase, data_gen, desc=f"epoch {epoch + 1}/{total_epochs} {phase}", progress=progress)
        valid_parts = _valid_loss(model, data, cfg, phase)
        row = {"epoch": epoch, "phase": phase, "seconds": time.perf_counter() - t0,
               **{f"train_{k}": v for k, v in train_parts.items()}, **{f"valid_{k}": v for k, v in valid_parts.items()}}
        state["history"].append(row)
        if phase == "elbo":
            score = valid_parts.get("loss", train_parts["loss"])
            if state["best_valid"] is None or score < state["best_valid"]:
                state.update(best_valid=score, best_epoch=epoch, bad_epochs=0)
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
                state["stopped_early"] = state["bad_epochs"] >= cfg.patience
        state["epoch"] = epoch + 1
        log.info("epoch %d/%d %s: train %.4f valid %s (%.1fs)", epoch + 1, total_epochs, phase, train_parts["loss"],
                 f"{valid_parts['loss']:.4f}" if "loss" in valid_parts else "-", row["seconds"])
        extra = {f"best.{k}": v for k, v in best_weights.items()} if best_weights else None
        save_checkpoint(ckpt, model=model, optimizer=optimizer, state=state, extra_tensors=extra,
                        config=run_config, generators={"data": data_gen})
    if state["stopped_early"]:
        log.info("early stop: no better validation loss for %d epochs (best at epoch %s)", cfg.patience,
                 None if state["best_epoch"] is None else state["best_epoch"] + 1)
    if not state["gmm_initialized"]:  # epochs=0: the prior still needs a fit for the clusters to mean anything
        init_prior_from_latents(model, latent_means(model, data.train_user, data.train_item, cfg.eval_batch_size).numpy(),
                                seed=cfg.seed)
    if best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()

    return model, data, state


# ---------------------------------------------------------------------------------------------------- pieces


@dataclass
class TrainData:
    """Tensors of the three splits plus everything derived from the data (likelihood, rating levels)."""

    likelihood: str
    n_levels: int
    rating_range: tuple[float, float]
    train_user: torch.Tensor
    train_item: torch.Tensor
    train_rating: torch.Tensor | None
    valid_user: torch.Tensor
    valid_item: torch.Tensor
    valid_rating: torch.Tensor | None
    valid_context: torch.Tensor
    valid_negatives: torch.Tensor
    user_known: torch.Tensor
    item_known: torch.Tensor
    sampler: InteractionSampler

    @classmethod
    def from_dataset(cls, ds: Dataset, cfg: VaeGmmConfig, dev: torch.device) -> TrainData:
        likelihood = check_data(ds, cfg)
        inter = ds.interactions
        train = inter.of_split("train")
        n_levels, rating_range = 5, (1.0, 5.0)
        if likelihood != "bernoulli":
            r = np.asarray(train.rating, dtype=np.float64)
            lo, hi = float(r.min()), float(r.max())
            hi = hi if hi > lo else lo + 1.0
            rating_range = (lo, hi)
            integral = np.allclose(r, np.round(r)) and float(lo).is_integer() and float(hi).is_integer()
            n_levels = int(hi - lo) + 1 if integral else 5
        valid = inter.of_split("valid")
        sampler = InteractionSampler(train.user, train.item, ds.n_users, ds.n_items)
        vgen = torch.Generator().manual_seed(cfg.seed + 1)  # fixed validation targets: comparable across epochs
        v_user, v_item = torch.as_tensor(valid.user, dtype=torch.long), torch.as_tensor(valid.item, dtype=torch.long)
        v_ctx, v_neg = sampler.sample(v_user, v_item, cfg.n_negatives, generator=vgen)
        user_known = torch.zeros(ds.n_users, dtype=torch.bool)
        user_known[torch.as_tensor(train.user, dtype=torch.long)] = True
        item_known = torch.zeros(ds.n_items, dtype=torch.bool)
        item_known[torch.as_tensor(train.item, dtype=torch.long)] = True
        rating = (lambda s: None if likelihood == "bernoulli" else torch.as_tensor(s.rating, dtype=torch.float32))
        return cls(
            likelihood=likelihood, n_levels=n_levels, rating_range=rating_range,
            train_user=torch.as_tensor(train.user, dtype=torch.long), train_item=torch.as_tensor(train.item, dtype=torch.long),
            train_rating=rating(train), valid_user=v_user, valid_item=v_item, valid_rating=rating(valid),
            valid_context=v_ctx, valid_negatives=v_neg, user_known=user_known.to(dev), item_known=item_known.to(dev),
            sampler=sampler,
        )


def check_data(ds: Dataset, cfg: VaeGmmConfig) -> str:
    """Everything stage 1 rejects about ``ds`` with ``cfg``, cheap enough to ask before any work (a bad setting
    must not surface after minutes of training); returns the likelihood it will use."""
    from explainrec.config import ConfigError

    inter = ds.interactions
    where = f"dataset {ds.name!r} interactions"
    if len(inter) == 0:
        raise DataError(f"{where}: no interactions")
    for col in ("user", "item"):
        ids = np.asarray(getattr(inter, col))
        n = ds.n_users if col == "user" else ds.n_items
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise DataError(f"{where}: field '{col}' holds ids outside 0..{n - 1}")
    train = inter.of_split("train")
    if len(train) == 0:
        raise DataError(f"{where}: no interactions in split 'train'")
    if len(train) < cfg.clusters:
        raise ConfigError(f"clusters: {len(train)} training pairs of {where.removesuffix(' interactions')} cannot "
                          f"fill {cfg.clusters} clusters; use at most {len(train)}")
    likelihood = cfg.likelihood or ("bernoulli" if ds.implicit else "gaussian")
    if likelihood != "bernoulli" and ds.implicit:
        raise ConfigError(f"likelihood: {likelihood!r} needs ratings, but {where} are implicit feedback")
    if likelihood == "bernoulli" and not cfg.reconstruct_items:
        raise ConfigError("reconstruct_items: false leaves a bernoulli (implicit) model nothing to reconstruct")
    if likelihood != "bernoulli" and not np.isfinite(np.asarray(train.rating, dtype=np.float64)).all():
        raise DataError(f"{where}: field 'rating' holds NaN or inf in split 'train'")
    return likelihood


def _make_optimizer(model: VaeGmm, cfg: VaeGmmConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on Linear weights only: decaying embeddings would shrink rarely seen rows every
    step, and the prior's parameters are distribution parameters, not weights."""
    decay, no_decay = [], []
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    for p in model.parameters():
        (decay if id(p) in linear_weights else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, foreach=True)


def _train_epoch(model: VaeGmm, optimizer, data: TrainData, cfg: VaeGmmConfig, phase: str,
                 gen: torch.Generator, desc: str, progress: bool) -> dict[str, float]:
    model.train()
    dev = model.mu_c.device
    n = data.train_user.shape[0]
    perm = torch.randperm(n, generator=gen)
    sums: dict[str, float] = {}
    n_batches = math.ceil(n / cfg.batch_size)
    bar = progress_bar(range(n_batches), enabled=progress, desc=desc, total=n_batches)
    for b in bar:
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        user, item = data.train_user[idx], data.train_item[idx]
        context, negatives = data.sampler.sample(user, item, cfg.n_negatives, generator=gen)
        if not cfg.reconstruct_items:
            context = negatives = None
        rating = None if data.train_rating is None else data.train_rating[idx].to(dev)
        user, item = user.to(dev), item.to(dev)
        context, negatives = _to(context, dev), _to(negatives, dev)
        if phase == "pretrain":
            loss = model.pretrain_loss(user, item, rating, context_items=context, negative_items=negatives)
            parts = {"loss": loss, "recon": loss}
        else:
            p = model.elbo(user, item, rating, cfg.beta, context_items=context, negative_items=negatives)
            parts = {"loss": p.loss, "recon": p.recon, "kl": p.kl, "rating_nll": p.rating_nll, "items_nll": p.items_nll}
            loss = p.loss
        if not torch.isfinite(loss):
            from explainrec.training.loop import TrainingError

            raise TrainingError(f"[vae-gmm] {desc}: the loss became {loss.item()} at batch {b}; training stopped and "
                                f"the last epoch's checkpoint is kept -- lower lr (now {cfg.lr:g}) and start again")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * idx.shape[0]
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def _valid_loss(model: VaeGmm, data: TrainData, cfg: VaeGmmConfig, phase: str) -> dict[str, float]:
    """Deterministic validation loss (z = mu, fixed sampled targets); empty dict without a valid split."""
    n = data.valid_user.shape[0]
    if n == 0:
        return {}
    dev = model.mu_c.device
    sums: dict[str, float] = {}
    with model.inference():
        for s in range(0, n, cfg.eval_batch_size):
            sl = slice(s, s + cfg.eval_batch_size)
            user, item = data.valid_user[sl].to(dev), data.valid_item[sl].to(dev)
            ctx, neg = data.valid_context[sl].to(dev), data.valid_negatives[sl].to(dev)
            if not cfg.reconstruct_items:
                ctx = neg = None
            rating = None if data.valid_rating is None else data.valid_rating[sl].to(dev)
            if phase == "pretrain":
                loss = model.pretrain_loss(user, item, rating, context_items=ctx, negative_items=neg)
                parts = {"loss": loss, "recon": loss}
            else:
                p = model.elbo(user, item, rating, cfg.beta, context_items=ctx, negative_items=neg, sample=False)
                parts = {"loss": p.loss, "recon": p.recon, "kl": p.kl}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * user.shape[0]
    return {k: v / n for k, v in sums.items()}


def _to(t: torch.Tensor | None, dev: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(dev)


@torch.no_grad()
def latent_means(model: VaeGmm, user: torch.Tensor, item: torch.Tensor, batch_size: int = 16384) -> torch.Tensor:
    """Means of q(z|x) (N, D) on CPU, computed in eval mode in batches."""
    dev = model.mu_c.device
    out = []
    with model.inference():
        for s in range(0, user.shape[0], batch_size):
            mu, _ = model.encode(user[s:s + batch_size].to(dev), item[s:s + batch_size].to(dev))
            out.append(mu.cpu())
    return torch.cat(out) if out else torch.empty(0, model.latent_dim)


