"""GaVaMoE's settings: stage 1 (the VAE-GMM), the MoE surgery and stage 2. Defaults are the CPU setting for
SmolLM2-135M; the paper's LLaMA-3.1-8B values are in the help lines and in ``configs/paper.yaml``."""
from __future__ import annotations

from dataclasses import dataclass

from explainrec.config import Config, ConfigError, option, seed_option
from explainrec.training.settings import LLMTrainConfig

VARIANTS = ("full", "single-gate", "coarse", "base")
TRAINABLE_GROUPS = ("experts", "gates", "soft", "vae", "ffn", "attention", "all")
LIKELIHOODS = ("categorical", "gaussian", "bernoulli")


@dataclass
class VaeGmmSettings(Config):
    """How the VAE-GMM is trained (stage 1); the number of clusters and the seed come from the run."""

    RESUMABLE = ("epochs", "patience", "plot_method", "plot_per_cluster", "eval_batch_size")

    epochs: int = option(30, "most ELBO epochs (early stopping on the validation loss; paper: 30)", min=0)
    pretrain_epochs: int = option(10, "plain-autoencoder epochs before the GMM fit", min=0)
    batch_size: int = option(4096, "positive pairs per step (paper: 4096)", min=1)
    lr: float = option(2e-3, "AdamW learning rate (paper: 1e-5 on its 768-d model)", above=0.0, max=1.0)
    weight_decay: float = option(0.01, "AdamW weight decay on Linear weights", min=0.0)
    beta: float = option(0.1, "weight of the KL terms in the ELBO (paper: 0.1)", min=0.0)
    likelihood: str | None = option(None, "rating likelihood (null: bernoulli for implicit data, else gaussian)",
                                    choices=LIKELIHOODS)
    n_negatives: int = option(1, "uniform negative items per pair for the interaction vector (eq. 7)", min=0)
    reconstruct_items: bool = option(True, "also reconstruct the interaction vector (false: ratings only, as the paper)")
    embed_dim: int = option(64, "user/item embedding size (paper: 768)", min=1)
    latent_dim: int = option(32, "latent size (paper: 128)", min=1)
    n_heads: int = option(4, "attention heads of the pair encoder", min=1)
    n_layers: int = option(2, "transformer layers of the pair encoder", min=0)
    dropout: float = option(0.0, "dropout in the encoder", min=0.0, max=0.9)
    unknown_prob: float = option(0.05, "share of ids replaced by the unknown row in training (cold start)", min=0.0, max=1.0)
    rating_weight: float = option(0.3, "weight of the rating term next to the interaction vector", min=0.0)
    patience: int = option(5, "ELBO epochs without a better validation loss before stopping", min=1)
    grad_clip: float = option(1.0, "gradient-norm clipping (0 = off)", min=0.0)
    plot_method: str = option("tsne", "latent plot projection (tsne: paper's Figure 5; pca: fast)",
                              choices=("tsne", "pca", "none"))
    plot_per_cluster: int = option(300, "latent points plotted per cluster", min=1)
    small_cluster_fraction: float = option(0.01, "warn when a cluster holds less than this share of the pairs",
                                           min=0.0, max=1.0)
    eval_batch_size: int = option(16384, "pairs per batch when scoring", min=1)

    def check(self) -> None:
        if self.embed_dim % self.n_heads:
            raise ConfigError(f"n_heads: {self.n_heads} must divide embed_dim ({self.embed_dim})")


@dataclass
class VaeGmmConfig(VaeGmmSettings):
    """Stage 1 on its own (``explainrec train vae-gmm``): the settings plus the number of clusters and the seed."""

    clusters: int = option(4, "number of GMM clusters K (= gates of stage 2)", min=1)
    seed: int = seed_option("random seed")


@dataclass
class MoEConfig(Config):
    """Surgery settings. Default for SmolLM2-135M: 8 experts of 1536/4 = 384 neurons, 4 active per token.

    Why top-4 and not the paper's top-2: with 8 upcycled experts of a quarter FFN each, 4 active experts run the same
    compute as the dense FFN and keep far more of the pretrained model at step one (explanation NLL at init on 32
    amazon test pairs: dense 3.74, top-4 3.75 with the mirrored router init of ``MultiGatedMoE.from_dense``
    (7.33 without it), top-2 13.97, random experts 25.7; `benchmarks/bench_moe_layer.py --upcycle-nll`). The
    paper's 8B setting is ``n_experts=12, top_k=2`` with 1280-neuron experts.

    ``paired_router`` (on by default) ties the router rows of each doubly covered expert pair (``j`` and
    ``j + E/2``) for good, so that every token keeps one copy of each neuron group however far training moves the
    gates. It applies to upcycled layouts where every neuron sits in exactly two experts and ``top_k = E/2`` (the
    default 8 x 384 top-4 and the coarse 2 x 1536 top-1); other layouts keep free routers. Why on: with free
    (mirrored-init) routers the pairs drift apart and up to 18% of routings drop a quarter of the FFN; on XRec's
    data the paired router's validation NLL stays within 0.03 nats of the dense model's (free: 0.15 above) and
    its test scores are higher than the free router's (docs/results.md).
    """

    variant: str = option("full", "full | single-gate (w/o multi-gating) | coarse (w/o fine-grained experts) | "
                          "base (the dense LLM)", choices=VARIANTS)
    n_experts: int = option(8, "fine-grained experts per layer (paper, 8B: 12)", min=1)
    top_k: int = option(4, "experts active per token (paper, 8B: 2; 4 keeps SmolLM2's FFN compute)", min=1)
    granularity: int = option(4, "r: an expert has 1/r of the dense FFN's neurons", min=1)
    expert_size: int | None = option(None, "neurons per expert, instead of granularity (paper, 8B: 1280)", min=1)
    init: str = option("upcycle", "upcycle (split the pretrained FFN) or random (reference release)",
                       choices=("upcycle", "random"))
    load_balance_coef: float = option(0.01, "weight of the load-balancing loss", min=0.0)
    router_z_coef: float = option(0.001, "weight of the router z-loss", min=0.0)
    paired_router: bool = option(True, "tie the router rows of each doubly covered expert pair (see docs/gavamoe.md)")

    def check(self) -> None:
        if self.variant in ("full", "single-gate") and self.top_k > self.n_experts:
            raise ConfigError(f"top_k: {self.top_k} active experts cannot exceed n_experts ({self.n_experts})")

    def surgery_kwargs(self, n_clusters: int) -> dict | None:
        """Arguments of :func:`explainrec.methods.gavamoe.surgery.moe_upcycle`, or None for the dense ``base``."""
        if self.variant == "base":
            return None
        if self.variant == "coarse":  # same total parameters as the default, full-size experts
            kwargs = dict(n_clusters=n_clusters, n_experts=2, top_k=1, granularity=1, init=self.init)
        else:
            gates = 1 if self.variant == "single-gate" else n_clusters
            size = {"granularity": self.granularity} if self.expert_size is None else {"expert_size": self.expert_size}
            kwargs = dict(n_clusters=gates, n_experts=self.n_experts, top_k=self.top_k, init=self.init, **size)
        doubly_covered = kwargs["n_experts"] == 2 * kwargs.get("granularity", 0) == 2 * kwargs["top_k"]
        if self.paired_router and self.init == "upcycle" and doubly_covered:
            kwargs["paired_router"] = True
        return kwargs


@dataclass
class GaVaMoEConfig(LLMTrainConfig):
    """Stage 2 (the multi-gated MoE LLM with soft tokens) plus the stage-1 settings it trains first."""

    lr: float = option(1e-4, "AdamW learning rate (paper: 3e-5 on 8B)", above=0.0, max=1.0)
    clip: float = option(0.3, "gradient-norm clipping (paper: 0.3)", min=0.0)
    clusters: int = option(4, "GMM clusters K = gates per MoE layer", min=1)
    moe: MoEConfig = option(MoEConfig, "the MoE surgery")
    alpha: float = option(0.1, "weight of the ELBO in alpha*ELBO + (1-alpha)*NLL (eq. 13)", min=0.0, max=0.999)
    beta: float = option(0.1, "KL weight inside the joint ELBO (paper: 0.1)", min=0.0)
    profiles: bool = option(True, "user and item profile text in the prompt (false: the paper's input, soft "
                            "tokens + title + features + rating)")
    trainable: tuple[str, ...] = option(lambda: ("experts", "gates", "soft", "vae"),
                                        "parameter groups that train (comma list)", choices=TRAINABLE_GROUPS)
    stage1: VaeGmmSettings = option(VaeGmmSettings, "stage 1 (VAE-GMM) training")

    def check(self) -> None:
        super().check()
        if not self.trainable:
            raise ConfigError(f"trainable: name at least one parameter group ({', '.join(TRAINABLE_GROUPS)}); with "
                              "none, nothing would train")

    def stage1_config(self) -> VaeGmmConfig:
        return VaeGmmConfig.from_dict({**self.stage1.to_dict(), "clusters": self.clusters, "seed": self.seed}, "stage1")
