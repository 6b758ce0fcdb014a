"""GaVaMoE stage 1 results: the cluster of every pair (clusters.csv), metrics (cluster sizes, rating RMSE/MAE,
AUC, agreement with the synthetic data's true user types) and the latent / loss plots."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch

from explainrec.data.schema import Dataset
from explainrec.io import atomic_write_text
from explainrec.methods.gavamoe.config import VaeGmmConfig
from explainrec.methods.gavamoe.stage1_train import TrainData, latent_means
from explainrec.methods.gavamoe.vae_gmm import VaeGmm

log = logging.getLogger(__name__)


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


def evaluate_and_write(model: VaeGmm, ds: Dataset, data: TrainData, cfg: VaeGmmConfig, out: Path,
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

    sizes = cluster_sizes(i_clusters, cfg.clusters)
    small = small_clusters(sizes, cfg.small_cluster_fraction)
    warnings = []
    if small:
        msg = (f"clusters {small} hold less than {cfg.small_cluster_fraction:.0%} of the {sum(sizes)} interactions "
               f"(sizes {sizes}); their gates would see little training data (the paper's imbalance failure mode) "
               "-- consider fewer clusters")
        log.warning(msg)
        warnings.append(msg)
    metrics: dict = {
        "dataset": ds.name, "likelihood": model.likelihood, "n_clusters": cfg.clusters,
        "cluster_sizes": sizes, "cluster_sizes_examples": cluster_sizes(e_clusters, cfg.clusters),
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
                    seed=cfg.seed, title=f"{ds.name}: VAE-GMM latent means, K={cfg.clusters} ({cfg.plot_method})")
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
