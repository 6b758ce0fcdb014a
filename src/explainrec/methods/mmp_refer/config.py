"""MMP-Refer's settings, one dataclass per stage. Defaults are the paper's where it states them (RQ-VAE 4 x 256 codes,
latent and hidden 64, beta 0.25; 3-hop, 2-core, k = 3 paths; GAT) and CPU choices where it is silent (each help
line says which)."""
from __future__ import annotations

from dataclasses import dataclass

from explainrec.config import Config, ConfigError, option, seed_option
from explainrec.training.settings import LLMTrainConfig, LoraConfig

FALLBACKS = ("neighbours", "mean")
USER_ENCODERS = ("auto", "sasrec", "mean")
PATH_COSTS = ("mmp", "degree")
USER_ANCHORS = ("item", "user")
DEGREES = ("subgraph", "graph")
GNNS = ("gat", "gcn")


@dataclass
class ContentConfig(Config):
    """Item content (step 1): two MiniLM text views of every item, or a file of per-item vectors."""

    features: str | None = option(None, "file of per-item vectors (.safetensors/.npz/.npy keyed by raw item id); "
                                        "null: two text views (title, profile) through MiniLM")
    encoder: str = option("minilm", "sentence encoder of the text views: the embedded MiniLM, an HF id or folder, or "
                          "hashing (model-free hashed bag of words: tests, quick runs)")
    batch_size: int = option(64, "texts per encoder batch", min=1)
    max_length: int = option(128, "encoder tokens per text (longer texts are cut)", min=8)
    fallback: str = option("neighbours", "vector of an item without content: mean over items sharing a train user "
                                         "(neighbours), else the mean of all items (mean)", choices=FALLBACKS)


@dataclass
class RQVAEConfig(Config):
    """One RQ-VAE per view (step 2), trained jointly with a cross-view InfoNCE."""

    levels: int = option(4, "codebook levels (paper: 4)", min=1)
    codes: int = option(256, "codes per level, upper bound (paper: 256); the used size is the largest power of two "
                             "<= items / 4, at least 2", min=2)
    latent: int = option(64, "latent and code width (paper: 64)", min=1)
    hidden: int = option(256, "hidden width of the encoder and decoder MLPs (not given)", min=1)
    beta: float = option(0.25, "commitment weight beta (paper: 0.25)", min=0.0)
    align_weight: float = option(1.0, "weight of the cross-view InfoNCE (paper: 1, a plain sum)", min=0.0)
    tau: float = option(0.1, "InfoNCE temperature (not given)", above=0.0)
    epochs: int = option(40, "joint training epochs after the warm-up (not given)", min=0)
    warmup_epochs: int = option(5, "autoencoder-only epochs before the k-means initialisation of the codebooks", min=0)
    batch_size: int = option(512, "items per step", min=2)
    lr: float = option(1e-3, "Adam learning rate", above=0.0)
    restart_every: int = option(5, "re-seed unused codes from random residuals every N epochs (0: never)", min=0)
    kmeans_iters: int = option(50, "Lloyd iterations of each level's k-means initialisation", min=1)
    seed: int = seed_option("random seed")


@dataclass
class VectorConfig(Config):
    """User and item vectors in one space (step 3), trained with InfoNCE on the train split."""

    dim: int = option(64, "vector width (paper: 64)", min=1)
    user_encoder: str = option("auto", "sasrec over time-ordered items, mean of the items' vectors, or auto "
                                       "(sasrec when the data has timestamps)", choices=USER_ENCODERS)
    max_len: int = option(50, "most recent train items per user", min=2)
    blocks: int = option(2, "SASRec transformer blocks", min=1)
    heads: int = option(2, "SASRec attention heads", min=1)
    dropout: float = option(0.2, "dropout in the item tower and SASRec", min=0.0, max=0.9)
    negatives: int = option(128, "uniform negative items per batch, shared by its users (not given)", min=1)
    epochs: int = option(20, "training epochs", min=0)
    batch_size: int = option(256, "users per step", min=1)
    lr: float = option(1e-3, "Adam learning rate", above=0.0)
    use_quantised: bool = option(True, "concatenate the RQ-VAE's quantised vectors (false: ablation w/o Multi-SID)")
    eval_k: int = option(20, "cut-off of the validation Recall/NDCG in the report", min=1)
    seed: int = seed_option("random seed")

    def check(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"heads: {self.heads} must divide dim ({self.dim})")


@dataclass
class PathConfig(Config):
    """Retrieval paths (step 4)."""

    k: int = option(3, "paths per pair (paper: 3)", min=1)
    hops: int = option(3, "radius of the neighbourhoods of the user and the item (paper: 3)", min=1)
    core: int = option(2, "k of the k-core pruning; the pair's user and item are always kept (paper: 2)", min=0)
    max_degree: int | None = option(200, "nodes with more edges in the subgraph lose them all (G-Refer: 200); "
                                         "null: no cap", min=1)
    max_hops: int = option(5, "longest path kept, in edges (G-Refer: 5)", min=1)
    max_candidates: int = option(10, "loopless paths examined in cost order before the hop filter (G-Refer: 10)",
                                 min=1)
    cost: str = option("mmp", "edge cost: mmp = log((2 - sim) * degree), degree = log(degree) (G-Refer style, "
                              "ablation)", choices=PATH_COSTS)
    user_anchor: str = option("item", "cost into a user: similarity to the target item (item) or the target user "
                                      "(user); the paper gives the rule for edges into items only",
                              choices=USER_ANCHORS)
    degree: str = option("subgraph", "degree in the cost: in the pruned subgraph (G-Refer) or in the train graph",
                         choices=DEGREES)

    def check(self) -> None:
        if self.max_candidates < self.k:
            raise ConfigError(f"max_candidates: {self.max_candidates} must be >= k ({self.k})")


@dataclass
class GraphPromptConfig(Config):
    """Graph soft prompt (step 5) and the path hard prompt (step 6)."""

    gnn: str = option("gat", "graph encoder of each path (paper: gat; gcn is the ablation)", choices=GNNS)
    layers: int = option(2, "GNN layers (not given)", min=1)
    heads: int = option(4, "GAT attention heads (not given)", min=1)
    hidden: int = option(64, "GNN width", min=1)
    max_neighbours: int = option(10, "sampled 1-hop neighbours per path node (seeded per pair)", min=0)
    n_experts: int = option(4, "experts of the MoE adapter (not given)", min=1)
    dropout: float = option(0.2, "dropout on the adapter's input (every expert) and between GNN layers", min=0.0,
                            max=0.9)
    soft_tokens: int = option(1, "graph soft tokens in the prompt (the paper's s_(u,v) is one embedding)", min=1)
    max_profile_words: int = option(25, "words kept of each node profile in the path text", min=1)
    sample_seed: int = seed_option("seed of the neighbour sampling")

    def check(self) -> None:
        if self.gnn == "gat" and self.hidden % self.heads:
            raise ConfigError(f"heads: {self.heads} must divide hidden ({self.hidden})")


@dataclass
class MMPGraphSettings(Config):
    """Steps 1-4, trained once per data and settings and shared by every run that asks for them (the ``mmp-graph``
    stage); the seeds of the RQ-VAE and the vectors come from the run."""

    content: ContentConfig = option(ContentConfig, "item content (two text views or a feature file)")
    rqvae: RQVAEConfig = option(RQVAEConfig, "the residual-quantised codes")
    vectors: VectorConfig = option(VectorConfig, "user and item vectors in one space")
    paths: PathConfig = option(lambda: PathConfig(k=5), "retrieval paths (k here: the most any run uses; a run "
                               "keeps its first k)")


@dataclass
class MMPGraphConfig(MMPGraphSettings):
    """The graph stage on its own (``explainrec train mmp-graph``). It keeps no checkpoint (minutes of work, all
    of it deterministic per seed): a resumed run trains it again, so its epoch budgets may change."""

    RESUMABLE = ("rqvae.epochs", "rqvae.warmup_epochs", "vectors.epochs")

    seed: int = seed_option("random seed (RQ-VAE, vectors)")

    def seeded(self) -> "MMPGraphConfig":
        """The config with the run's seed in the RQ-VAE's and the vectors' own settings."""
        return self.replace(rqvae=self.rqvae.replace(seed=self.seed), vectors=self.vectors.replace(seed=self.seed))


@dataclass
class MMPReferConfig(LLMTrainConfig):
    """The LLM with the path text and the graph soft prompt (step 5), over the ``mmp-graph`` stage."""

    lr: float = option(3e-4, "AdamW learning rate (paper: 1e-5 on a 3B LLaMA; a 135M model on a CPU budget "
                       "needs a larger step)", above=0.0, max=1.0)
    batch_size: int = option(4, "pairs per forward pass", min=1)
    max_prompt_tokens: int = option(1024, "prompt tokens kept (path texts are long; the oldest are cut)", min=8)
    k: int = option(3, "retrieval paths per pair given to the LLM (paper: 3)", min=1)
    graph_prompt: bool = option(True, "the graph soft prompt (false: ablation w/o graph-level, path text only)")
    item_kind: str = option("item", "what the prompt calls an item (business, book, ...)")
    graph: GraphPromptConfig = option(GraphPromptConfig, "the graph soft prompt")
    lora: LoraConfig = option(lambda: LoraConfig(r=8, alpha=16.0), "LoRA on the LLM (r = 0: frozen LLM, ablation "
                              "w/o LoRA)")
    stage: MMPGraphSettings = option(MMPGraphSettings, "steps 1-4 (content, RQ-VAE, vectors, paths)")

    def stage_config(self) -> MMPGraphConfig:
        return MMPGraphConfig.from_dict({**self.stage.to_dict(), "seed": self.seed}, "stage")

    def check(self) -> None:
        if self.k > self.stage.paths.k:
            raise ConfigError(f"k: {self.k} paths asked for, but the stage keeps {self.stage.paths.k} "
                              f"(stage.paths.k)")
