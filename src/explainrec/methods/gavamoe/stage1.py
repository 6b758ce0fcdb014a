"""GaVaMoE stage 1 recipe: train the VAE-GMM, cluster every user-item pair, write metrics and plots.

    setup    data arrays, id maps, likelihood from the data, model, AdamW, interaction sampler
    train    pre-train as a plain autoencoder (z = mu, reconstruction only) for ``pretrain_epochs``
             -> fit sklearn GaussianMixture(diag) on the latent means -> init pi, mu_c, sigma_c^2
             -> optimise the beta-weighted ELBO (eq. 16-17) with early stopping on the validation loss
             (a checkpoint after every epoch; ``resume=True`` continues the same run bit for bit)
    save     model.safetensors + config.json + id_maps.json, clusters.csv, metrics.json, latent.png, loss.png

Command (the lead's CLI): ``explainrec gavamoe fit-clusters --data DATA --clusters K --out RUN_DIR``.

Outputs in ``out_dir``:
    model.safetensors, config.json, id_maps.json   the model (see :class:`Stage1Model`)
    clusters.csv    kind (interaction | example), index (row in its table), user, item (raw ids), split, cluster
    metrics.json    cluster sizes (+ warnings), rating RMSE/MAE (explicit), AUC, NMI vs. user types (synthetic)
    history.json    per-epoch losses;  latent.png, loss.png  plots;  checkpoint/  the last epoch's state
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from explainrec.data.schema import DataError, Dataset, IdMap, load_id_maps
from explainrec.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from explainrec.methods.gavamoe.gmm_init import init_prior_from_latents
from explainrec.methods.gavamoe.vae_gmm import InteractionSampler, VaeGmm
from explainrec.train.checkpoint import (
    CheckpointError,
    is_complete,
    load_checkpoint,
    load_extra_tensors,
    save_checkpoint,
)
from explainrec.train.loop_utils import progress as progress_bar
from explainrec.train.loop_utils import resolve_device, seed_everything

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ID_MAPS_FILE = "id_maps.json"
CHECKPOINT_DIR = "checkpoint"
# Training settings that may change between a run and its resume without changing the trajectory so far.
RESUMABLE_KEYS = ("epochs", "patience", "progress", "plot_method", "plot_per_cluster", "device", "eval_batch_size")


@dataclass
class Stage1Config:
    """Training settings of :func:`fit_clusters` (model shape settings go to :class:`VaeGmm`)."""

    n_clusters: int
    epochs: int = 30  # most ELBO epochs (paper: 30); early stopping may end sooner
    pretrain_epochs: int = 10  # plain-autoencoder epochs before the GMM init
    batch_size: int = 4096  # positive pairs per step (paper: 4096)
    lr: float = 2e-3  # paper: 1e-5 for E=768 on a GPU; the small CPU model needs far fewer, larger steps
    weight_decay: float = 0.01  # on Linear weights only (not embeddings, biases, norms or the prior)
    beta: float = 0.1  # KL weight (paper: 0.1)
    likelihood: str | None = None  # None: bernoulli for implicit data, gaussian for ratings
    n_negatives: int = 1  # uniform negative items per pair for the interaction vector (eq. 7)
    reconstruct_items: bool = True  # False: the paper's rating-only reconstruction (explicit data only)
    embed_dim: int = 64
    latent_dim: int = 32
    n_heads: int = 4
    n_layers: int = 2
    dropout: float = 0.0
    unknown_prob: float = 0.05
    rating_weight: float = 0.3
    patience: int = 5  # ELBO epochs without a better validation loss before stopping
    grad_clip: float = 1.0
    seed: int = 0
    plot_method: str = "tsne"  # or "pca" (fast)
    plot_per_cluster: int = 300
    small_cluster_fraction: float = 0.01  # warn when a cluster holds less than this share of the pairs
    device: str | None = None  # None: CUDA when available, else CPU
    eval_batch_size: int = 16384
    progress: bool = True


@dataclass
class Stage1Result:
    """What :func:`fit_clusters` produced; every file is also in ``out_dir``."""

    out_dir: Path
    model: VaeGmm
    users: IdMap
    items: IdMap
    metrics: dict
    history: list[dict] = field(default_factory=list)

    @property
    def clusters_path(self) -> Path:
        return self.out_dir / "clusters.csv"


# ---------------------------------------------------------------------------------------------------- model folder


class Stage1Model:
    """A trained VAE-GMM with its id maps: the unit stage 2 and serving load.

    ``save_pretrained(dir)`` writes ``model.safetensors`` (weights), ``config.json`` (constructor arguments
    under ``"model"``, training settings under ``"training"``) and ``id_maps.json``.
    """

    def __init__(self, model: VaeGmm, users: IdMap, items: IdMap, training: dict | None = None) -> None:
        self.model, self.users, self.items = model, users, items
        self.training = dict(training or {})

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the three files (each atomically) into ``path``, which may hold other run outputs."""
        from safetensors.torch import save

        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_bytes(path / WEIGHTS_FILE, save(tensors))
        atomic_write_json(path / CONFIG_FILE, {"model": self.model.config, "training": self.training})
        atomic_write_json(path / ID_MAPS_FILE, {"users": self.users.raw, "items": self.items.raw})
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = "cpu") -> Stage1Model:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights, maps = path / CONFIG_FILE, path / WEIGHTS_FILE, path / ID_MAPS_FILE
        for f in (cfg_file, weights, maps):
            if not f.is_file():
                raise DataError(f"{f}: missing -- not a stage-1 folder (train one with `explainrec gavamoe fit-clusters`)")
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            model = VaeGmm(**cfg["model"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{cfg_file}: unreadable model config ({e})") from e
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as e:
            raise DataError(f"{weights}: cannot read safetensors ({e})") from e
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise DataError(f"{weights}: does not fit the model in {CONFIG_FILE} ({e})") from e
        try:
            users, items = load_id_maps(maps)
        except (json.JSONDecodeError, KeyError, DataError) as e:
            raise DataError(f"{maps}: unreadable id maps ({e})") from e
        if len(users) != model.n_users or len(items) != model.n_items:
            raise DataError(f"{maps}: {len(users)} users / {len(items)} items, but the model has "
                            f"{model.n_users} / {model.n_items}")
        model.to(device or "cpu").eval()
        return cls(model, users, items, cfg.get("training"))

    def index(self, raw_users, raw_items) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ids -> contiguous id tensors; unseen raw ids become -1 (the model maps them to "unknown")."""
        dev = self.model.mu_c.device
        u = torch.tensor([self.users.encode(x, default=-1) for x in raw_users], dtype=torch.long, device=dev)
        i = torch.tensor([self.items.encode(x, default=-1) for x in raw_items], dtype=torch.long, device=dev)
        return u, i

    def assign(self, raw_users, raw_items, batch_size: int = 16384) -> np.ndarray:
        """Cluster (eq. 9) of each raw (user, item) pair; any unseen id still gets a cluster."""
        u, i = self.index(raw_users, raw_items)
        return assign_batched(self.model, u, i, batch_size)


def load_stage1(run_dir: str | Path, *, device: str | torch.device | None = "cpu") -> tuple[VaeGmm, IdMap, IdMap]:
    """``(model, users, items)`` from a folder written by :func:`fit_clusters` (model in eval mode)."""
    s1 = Stage1Model.from_pretrained(run_dir, device=device)
    return s1.model, s1.users, s1.items


# ---------------------------------------------------------------------------------------------------- recipe


def fit_clusters(
    dataset: Dataset,
    n_clusters: int,
    out_dir: str | Path,
    *,
    epochs: int = 30,
    pretrain_epochs: int = 10,
    batch_size: int = 4096,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    beta: float = 0.1,
    likelihood: str | None = None,
    n_negatives: int = 1,
    reconstruct_items: bool = True,
    embed_dim: int = 64,
    latent_dim: int = 32,
    n_heads: int = 4,
    n_layers: int = 2,
    dropout: float = 0.0,
    unknown_prob: float = 0.05,
    rating_weight: float = 0.3,
    patience: int = 5,
    grad_clip: float = 1.0,
    seed: int = 0,
    resume: bool = False,
    plot_method: str = "tsne",
    plot_per_cluster: int = 300,
    small_cluster_fraction: float = 0.01,
    device: str | None = None,
    eval_batch_size: int = 16384,
    progress: bool = True,
) -> Stage1Result:
    """Train the VAE-GMM on ``dataset``'s train interactions and cluster every pair; see the module docstring.

    Defaults (all plain keyword arguments, see :class:`Stage1Config` for one line on each): ``epochs=30``
    ELBO epochs at most, ``pretrain_epochs=10``, ``batch_size=4096`` positive pairs, ``lr=2e-3`` AdamW,
    ``beta=0.1``, ``embed_dim=64`` (paper 768), ``latent_dim=32`` (paper 128), ``likelihood=None`` (from the
    data), ``n_negatives=1``, ``reconstruct_items=True`` (False: ratings only, as in the paper; clusters
    then follow rating levels rather than users -- see vae_gmm.py), ``patience=5``, ``seed=0``, ``plot_method="tsne"`` ("pca" is fast),
    ``progress=True`` (tqdm bars). ``resume=True`` continues from ``out_dir/checkpoint`` when present (same
    epoch counter, optimizer and RNG states: the result equals an uninterrupted run); the saved config must
    match except for ``epochs``, ``patience`` and display settings.
    """
    cfg = Stage1Config(
        n_clusters=n_clusters, epochs=epochs, pretrain_epochs=pretrain_epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, beta=beta, likelihood=likelihood, n_negatives=n_negatives,
        reconstruct_items=reconstruct_items, embed_dim=embed_dim,
        latent_dim=latent_dim, n_heads=n_heads, n_layers=n_layers, dropout=dropout, unknown_prob=unknown_prob,
        rating_weight=rating_weight, patience=patience, grad_clip=grad_clip, seed=seed, plot_method=plot_method,
        plot_per_cluster=plot_per_cluster, small_cluster_fraction=small_cluster_fraction, device=device,
        eval_batch_size=eval_batch_size, progress=progress,
    )
    return run(dataset, out_dir, cfg, resume=resume)


def run(dataset: Dataset, out_dir: str | Path, cfg: Stage1Config, *, resume: bool = False) -> Stage1Result:
    """The recipe behind :func:`fit_clusters`: setup -> train -> save."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(cfg)
    t_start = time.perf_counter()

    # ------------------------------------------------------------------ setup
    seed_everything(cfg.seed)
    dev = resolve_device(cfg.device)
    data = _TrainData.from_dataset(dataset, cfg, dev)
    model = VaeGmm(
        dataset.n_users, dataset.n_items, n_clusters=cfg.n_clusters, likelihood=data.likelihood,
        n_rating_levels=data.n_levels, rating_range=data.rating_range, embed_dim=cfg.embed_dim,
        latent_dim=cfg.latent_dim, n_heads=cfg.n_heads, n_layers=cfg.n_layers, dropout=cfg.dropout,
        unknown_prob=cfg.unknown_prob,
        # the rating weight balances ratings against the interaction vector; alone, ratings keep weight 1
        rating_weight=cfg.rating_weight if cfg.reconstruct_items else 1.0,
    ).to(dev)
    model.set_known(data.user_known, data.item_known)
    optimizer = _make_optimizer(model, cfg)
    data_gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and sampling; saved in checkpoints
    run_config = {"model": model.config, "training": asdict(cfg),
                  "data": {"name": dataset.name, "n_train": int(data.train_user.shape[0])}}
    ckpt = out / CHECKPOINT_DIR
    state = {"epoch": 0, "gmm_initialized": False, "best_valid": None, "best_epoch": None, "bad_epochs": 0,
             "stopped_early": False, "history": []}
    best_weights: dict[str, torch.Tensor] | None = None
    if resume and is_complete(ckpt):
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, expected_config=run_config,
                                ignore_config_keys=[f"training.{k}" for k in RESUMABLE_KEYS],
                                generators={"data": data_gen})
        extra = load_extra_tensors(ckpt)
        best_weights = {k[len("best."):]: v.to(dev) for k, v in extra.items() if k.startswith("best.")} or None
        log.info("resumed %s at epoch %d", ckpt, state["epoch"])
    elif resume:
        log.warning("resume requested but %s holds no complete checkpoint; starting a new run", ckpt)

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
        train_parts = _train_epoch(model, optimizer, data, cfg, phase, data_gen, desc=f"epoch {epoch + 1}/{total_epochs} {phase}")
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

    # ------------------------------------------------------------------ save
    s1 = Stage1Model(model, dataset.users, dataset.items, training=asdict(cfg))
    s1.save_pretrained(out)
    metrics = _evaluate_and_write(model, dataset, data, cfg, out, state)
    metrics["seconds_total"] = time.perf_counter() - t_start
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "history.json", state["history"])
    return Stage1Result(out_dir=out, model=model, users=dataset.users, items=dataset.items, metrics=metrics,
                        history=state["history"])


# ---------------------------------------------------------------------------------------------------- pieces


@dataclass
class _TrainData:
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
    def from_dataset(cls, ds: Dataset, cfg: Stage1Config, dev: torch.device) -> _TrainData:
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
        if len(train) < cfg.n_clusters:
            raise DataError(f"{where}: {len(train)} training pairs cannot fill {cfg.n_clusters} clusters")
        likelihood = cfg.likelihood or ("bernoulli" if ds.implicit else "gaussian")
        if likelihood != "bernoulli" and ds.implicit:
            raise DataError(f"{where}: likelihood {likelihood!r} needs ratings, but the data is implicit feedback")
        if likelihood == "bernoulli" and not cfg.reconstruct_items:
            raise ValueError("reconstruct_items=False leaves a bernoulli (implicit) model nothing to reconstruct")
        n_levels, rating_range = 5, (1.0, 5.0)
        if likelihood != "bernoulli":
            r = np.asarray(train.rating, dtype=np.float64)
            if not np.isfinite(r).all():
                raise DataError(f"{where}: field 'rating' holds NaN or inf in split 'train'")
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


def _check_config(cfg: Stage1Config) -> None:
    if cfg.n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {cfg.n_clusters}")
    if cfg.epochs < 0 or cfg.pretrain_epochs < 0:
        raise ValueError(f"epochs and pretrain_epochs must be >= 0, got {cfg.epochs}, {cfg.pretrain_epochs}")
    if cfg.batch_size < 1 or cfg.eval_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {cfg.batch_size}, {cfg.eval_batch_size}")
    if cfg.n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, got {cfg.n_negatives}")
    if cfg.plot_method not in ("tsne", "pca", "none"):
        raise ValueError(f"plot_method must be 'tsne', 'pca' or 'none', got {cfg.plot_method!r}")


def _make_optimizer(model: VaeGmm, cfg: Stage1Config) -> torch.optim.Optimizer:
    """AdamW with weight decay on Linear weights only: decaying embeddings would shrink rarely seen rows every
    step, and the prior's parameters are distribution parameters, not weights."""
    decay, no_decay = [], []
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    for p in model.parameters():
        (decay if id(p) in linear_weights else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, foreach=True)


def _train_epoch(model: VaeGmm, optimizer, data: _TrainData, cfg: Stage1Config, phase: str,
                 gen: torch.Generator, desc: str) -> dict[str, float]:
    model.train()
    dev = model.mu_c.device
    n = data.train_user.shape[0]
    perm = torch.randperm(n, generator=gen)
    sums: dict[str, float] = {}
    n_batches = math.ceil(n / cfg.batch_size)
    bar = progress_bar(range(n_batches), enabled=cfg.progress, desc=desc, total=n_batches)
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
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at batch {b}; lower lr (now {cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * idx.shape[0]
        if cfg.progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def _valid_loss(model: VaeGmm, data: _TrainData, cfg: Stage1Config, phase: str) -> dict[str, float]:
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


@torch.no_grad()
def assign_batched(model: VaeGmm, user: torch.Tensor, item: torch.Tensor, batch_size: int = 16384) -> np.ndarray:
    """Deterministic clusters (eq. 9) of many pairs, in batches (results do not depend on the batching)."""
    dev = model.mu_c.device
    out = [model.assign(user[s:s + batch_size].to(dev), item[s:s + batch_size].to(dev)).cpu()
           for s in range(0, user.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.int64)


@torch.no_grad()
def _scores(model: VaeGmm, user: torch.Tensor, item: torch.Tensor, batch_size: int, rating: bool) -> np.ndarray:
    dev = model.mu_c.device
    fn = model.predict if rating else model.score
    out = [fn(user[s:s + batch_size].to(dev), item[s:s + batch_size].to(dev)).cpu()
           for s in range(0, user.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)


def _evaluate_and_write(model: VaeGmm, ds: Dataset, data: _TrainData, cfg: Stage1Config, out: Path,
                        state: dict) -> dict:
    """Clusters of every interaction and example -> clusters.csv; metrics; plots."""
    from sklearn.metrics import roc_auc_score

    from explainrec.analysis.latent import (
        cluster_agreement,
        cluster_sizes,
        plot_latent,
        plot_loss_curves,
        small_clusters,
    )

    inter = ds.interactions
    i_user = torch.as_tensor(inter.user, dtype=torch.long)
    i_item = torch.as_tensor(inter.item, dtype=torch.long)
    i_clusters = assign_batched(model, i_user, i_item, cfg.eval_batch_size)
    e_user = torch.as_tensor([e.user for e in ds.examples], dtype=torch.long)
    e_item = torch.as_tensor([e.item for e in ds.examples], dtype=torch.long)
    e_clusters = assign_batched(model, e_user, e_item, cfg.eval_batch_size)
    _write_clusters_csv(out / "clusters.csv", ds, i_clusters, e_clusters)

    sizes = cluster_sizes(i_clusters, cfg.n_clusters)
    small = small_clusters(sizes, cfg.small_cluster_fraction)
    warnings = []
    if small:
        msg = (f"clusters {small} hold less than {cfg.small_cluster_fraction:.0%} of the {sum(sizes)} interactions "
               f"(sizes {sizes}); their gates would see little training data (the paper's imbalance failure mode) "
               "-- consider fewer clusters")
        log.warning(msg)
        warnings.append(msg)
    metrics: dict = {
        "dataset": ds.name, "likelihood": model.likelihood, "n_clusters": cfg.n_clusters,
        "cluster_sizes": sizes, "cluster_sizes_examples": cluster_sizes(e_clusters, cfg.n_clusters),
        "small_clusters": small, "warnings": warnings,
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "best_valid_loss": state["best_valid"],
        "stopped_early": state["stopped_early"],
    }

    test = inter.of_split("test")
    t_user, t_item = torch.as_tensor(test.user, dtype=torch.long), torch.as_tensor(test.item, dtype=torch.long)
    if len(test) and model.likelihood != "bernoulli":
        pred = _scores(model, t_user, t_item, cfg.eval_batch_size, rating=True)
        err = pred - np.asarray(test.rating, dtype=np.float64)
        metrics["test_rmse"] = float(np.sqrt(np.mean(err ** 2)))
        metrics["test_mae"] = float(np.mean(np.abs(err)))
        metrics["rating_prediction"] = "expected rating" if model.likelihood == "categorical" else "gaussian mean"
    if len(test):
        # AUC: each test positive against one uniformly sampled item for the same user (seeded)
        gen = torch.Generator().manual_seed(cfg.seed + 2)
        neg = torch.randint(ds.n_items, (len(test),), generator=gen)
        pos_s = _scores(model, t_user, t_item, cfg.eval_batch_size, rating=False)
        neg_s = _scores(model, t_user, neg, cfg.eval_batch_size, rating=False)
        labels = np.r_[np.ones(len(pos_s)), np.zeros(len(neg_s))]
        metrics["test_auc"] = float(roc_auc_score(labels, np.r_[pos_s, neg_s]))
    if ds.user_types is not None:
        truth = np.asarray(ds.user_types)[np.asarray(inter.user)]
        metrics["agreement_with_user_types"] = cluster_agreement(i_clusters, truth)

    if cfg.plot_method != "none":
        train_rows = np.flatnonzero(np.asarray(inter.split) == "train")
        pick = train_rows[_cap_rows(i_clusters[train_rows], cfg.plot_per_cluster, cfg.seed)]
        mu = latent_means(model, i_user[pick], i_item[pick], cfg.eval_batch_size).numpy()
        plot_latent(mu, i_clusters[pick], out / "latent.png", method=cfg.plot_method, per_cluster=cfg.plot_per_cluster,
                    seed=cfg.seed, title=f"{ds.name}: VAE-GMM latent means, K={cfg.n_clusters} ({cfg.plot_method})")
        if state["history"]:
            plot_loss_curves(state["history"], out / "loss.png", title=f"{ds.name}: VAE-GMM training")
    return metrics


def _cap_rows(clusters: np.ndarray, per_cluster: int, seed: int) -> np.ndarray:
    from explainrec.analysis.latent import sample_per_cluster

    return sample_per_cluster(clusters, per_cluster, seed)


def _write_clusters_csv(path: Path, ds: Dataset, i_clusters: np.ndarray, e_clusters: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "index", "user", "item", "split", "cluster"])
    users, items = ds.users.raw, ds.items.raw
    inter = ds.interactions
    for n, (u, i, s, c) in enumerate(zip(inter.user.tolist(), inter.item.tolist(), inter.split.tolist(), i_clusters.tolist())):
        w.writerow(["interaction", n, users[u], items[i], s, c])
    for n, (e, c) in enumerate(zip(ds.examples, e_clusters.tolist())):
        w.writerow(["example", n, users[e.user], items[e.item], e.split, c])
    atomic_write_text(path, buf.getvalue())


def read_clusters(path: str | Path) -> list[dict]:
    """Rows of a ``clusters.csv`` (cluster and index as ints)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{**r, "index": int(r["index"]), "cluster": int(r["cluster"])} for r in csv.DictReader(f)]


__all__ = [
    "CheckpointError",
    "Stage1Config",
    "Stage1Model",
    "Stage1Result",
    "assign_batched",
    "fit_clusters",
    "latent_means",
    "load_stage1",
    "read_clusters",
    "run",
]
