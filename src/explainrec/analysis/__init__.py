"""Analysis helpers: cluster statistics and latent-space plots."""
from explainrec.analysis.latent import (
    cluster_agreement,
    cluster_sizes,
    plot_latent,
    plot_loss_curves,
    small_clusters,
)

__all__ = ["cluster_agreement", "cluster_sizes", "plot_latent", "plot_loss_curves", "small_clusters"]
