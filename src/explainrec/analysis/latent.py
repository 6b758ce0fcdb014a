"""Cluster statistics and plots of a learned latent space (GaVaMoE stage 1, paper Figure 5).

matplotlib runs on the non-interactive Agg backend, so plots work on servers and in tests without a display.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from explainrec.io import atomic_write_bytes


def cluster_sizes(clusters: np.ndarray, n_clusters: int) -> list[int]:
    """Number of pairs in each of the ``n_clusters`` clusters (empty clusters included as 0)."""
    return np.bincount(np.asarray(clusters, dtype=np.int64), minlength=n_clusters)[:n_clusters].tolist()


def small_clusters(sizes: Sequence[int], min_fraction: float = 0.01) -> list[int]:
    """Clusters holding less than ``min_fraction`` of all pairs: the paper's failure mode of an under-fed gate."""
    total = max(int(sum(sizes)), 1)
    return [c for c, n in enumerate(sizes) if n / total < min_fraction]


def cluster_agreement(clusters: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How well clusters recover known labels (synthetic data): NMI, adjusted Rand index, purity."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    clusters = np.asarray(clusters)
    truth = np.asarray(truth)
    if clusters.shape != truth.shape or clusters.size == 0:
        raise ValueError(f"need equally long, non-empty label arrays; got {clusters.shape} and {truth.shape}")
    # purity: each cluster votes for its most common true label
    table = np.zeros((clusters.max() + 1, truth.max() + 1), dtype=np.int64)
    np.add.at(table, (clusters, truth), 1)
    return {
        "nmi": float(normalized_mutual_info_score(truth, clusters)),
        "ari": float(adjusted_rand_score(truth, clusters)),
        "purity": float(table.max(1).sum() / clusters.size),
    }


def sample_per_cluster(clusters: np.ndarray, per_cluster: int = 300, seed: int = 0) -> np.ndarray:
    """Row indices with at most ``per_cluster`` rows of each cluster (seeded), so small clusters stay visible."""
    rng = np.random.default_rng(seed)
    clusters = np.asarray(clusters)
    picks = []
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        picks.append(rows if rows.size <= per_cluster else rng.choice(rows, per_cluster, replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, dtype=np.int64)


def project_2d(latents: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with t-SNE (the paper's Figure 5) or PCA (fast, deterministic)."""
    latents = np.asarray(latents, dtype=np.float64)
    if latents.shape[1] == 1:
        return np.column_stack([latents[:, 0], np.zeros(len(latents))])
    if method == "pca" or len(latents) < 5:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(latents)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(latents) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(latents)
    raise ValueError(f"unknown projection {method!r}; use 'tsne' or 'pca'")


def plot_latent(
    latents: np.ndarray,
    clusters: np.ndarray,
    path: str | Path,
    *,
    method: str = "tsne",
    per_cluster: int = 300,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Scatter a 2-D projection of latent means coloured by cluster (at most ``per_cluster`` points each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = np.asarray(clusters)
    rows = sample_per_cluster(clusters, per_cluster, seed)
    if rows.size == 0:
        raise ValueError("no latent points to plot")
    xy = project_2d(np.asarray(latents)[rows], method, seed)
    cl = clusters[rows]
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=120)
    cmap = plt.get_cmap("tab10" if cl.max() < 10 else "tab20")
    for c in np.unique(cl):
        m = cl == c
        ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.7, color=cmap(int(c) % cmap.N), label=f"cluster {c} ({m.sum()})")
    ax.set_title(title or f"Latent means q(z|x) by cluster ({method.upper()}, <= {per_cluster} per cluster)")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.legend(markerscale=2, fontsize=8, loc="best")
    return _save(fig, path)


def plot_loss_curves(history: Sequence[Mapping[str, float]], path: str | Path, *, title: str | None = None) -> Path:
    """Train/valid loss per epoch (left) and the ELBO parts (right); a dashed line marks the GMM init.

    ``history`` rows hold ``epoch``, ``phase`` ("pretrain" or "elbo"), ``train_loss``, ``valid_loss`` and
    optionally ``train_recon``, ``train_kl``, ``valid_recon``, ``valid_kl``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("empty training history: nothing to plot")
    epochs = np.array([h["epoch"] for h in history]) + 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for key, style in (("train_loss", "-o"), ("valid_loss", "--s")):
        ys = np.array([h.get(key, np.nan) for h in history], dtype=float)
        if np.isfinite(ys).any():
            ax1.plot(epochs, ys, style, ms=3, label=key.replace("_", " "))
    for key, style in (("train_recon", "-"), ("valid_recon", "--"), ("train_kl", "-"), ("valid_kl", "--")):
        ys = np.array([h.get(key, np.nan) for h in history], dtype=float)
        if np.isfinite(ys).any():
            ax2.plot(epochs, ys, style, label=key.replace("_", " "))
    switch = [e for e, h in zip(epochs, history) if h.get("phase") == "elbo"]
    for ax in (ax1, ax2):
        if switch and switch[0] > epochs[0]:
            ax.axvline(switch[0] - 0.5, color="grey", ls=":", lw=1)
            ax.text(switch[0] - 0.5, 0.98, " GMM init", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax1.set_ylabel("loss (pretrain: reconstruction; then -ELBO)")
    ax2.set_ylabel("ELBO parts (unweighted)")
    fig.suptitle(title or "VAE-GMM training")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
