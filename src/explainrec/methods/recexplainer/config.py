"""RecExplainer's settings: the recommender being explained (a ``recommender`` stage), the alignment data, the
LLM's training. Defaults are the CPU setting for SmolLM2-135M; the paper's GPU setting is ``configs/paper.yaml``."""
from __future__ import annotations

from dataclasses import dataclass

from explainrec.config import Config, option, seed_option
from explainrec.training.settings import LLMTrainConfig, LoraConfig

VARIANTS = ("behaviour", "intention", "hybrid")
KINDS = ("auto", "sasrec", "mf", "lightgcn")
TUNING = ("lora", "full", "projectors")


@dataclass
class RecommenderSettings(Config):
    """The recommender trained on the train split and then frozen; ``null`` = that recommender's own default."""

    RESUMABLE = ("epochs", "max_seconds")

    kind: str = option("auto", "sasrec (ordered interactions), mf (BPR), lightgcn; auto: sasrec when the data has "
                       "timestamps, else lightgcn", choices=KINDS)
    dim: int = option(64, "vector size (the projectors' input)", min=1)
    epochs: int | None = option(None, "training epochs (null: 30)", min=1)
    batch_size: int | None = option(None, "batch size (null: sasrec 256, mf 4096, lightgcn 8192)", min=1)
    lr: float | None = option(None, "learning rate (null: sasrec 3e-3, mf 5e-3, lightgcn 1e-2)", above=0.0)
    layers: int | None = option(None, "SASRec blocks / LightGCN propagation depth (null: 2)", min=0)
    history_len: int = option(9, "last N history items a user vector reads (SASRec) and prompts list", min=1)
    max_seconds: float | None = option(None, "wall-clock budget of the recommender's training", above=0.0)

    def trainer_options(self) -> dict:
        """Keyword arguments of the recommender's trainer (:func:`...recommenders.fit_recommender`)."""
        out = {"dim": self.dim, "history_len": self.history_len, "max_seconds": self.max_seconds}
        for key in ("epochs", "batch_size", "lr", "layers"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.kind == "mf":
            out.pop("layers", None)
        return out


@dataclass
class RecommenderConfig(RecommenderSettings):
    """The recommender on its own (``explainrec train recommender``)."""

    seed: int = seed_option("random seed")


@dataclass
class AlignmentSettings(Config):
    """Which alignment rows the LLM trains on (tasks 1-4 and 6 from the recommender's answers)."""

    max_users: int | None = option(None, "users whose rows are built (a seeded subset; null: all)", min=1)
    max_items: int | None = option(None, "items of the item tasks (task 4; null: all)", min=1)
    holdout_frac: float = option(0.1, "share of users held out for the task 1/2/6 test rows", min=0.0, max=0.9)
    next_items_per_user: int = option(1, "task 1 train rows per user (the k best items)", min=1)
    replay: int = option(0, "task 5: generic instructions answered by the frozen base LLM (0 = off)", min=0)
    max_title_chars: int = option(60, "item names in prompts are cut at this many characters", min=8)
    named_items_only: bool = option(True, "ask only about items the data gives a title (the recommender's answers "
                                    "restricted to them); histories stay complete")


@dataclass
class RecExplainerConfig(LLMTrainConfig):
    """An LLM aligned to the recommender of the ``recommender`` stage; the variant decides what it reads."""

    variant: str = option("hybrid", "behaviour (titles only), intention (<user>/<item> vectors only), hybrid (both)",
                          choices=VARIANTS)
    tuning: str = option("lora", "lora (adapters + projectors), full (the whole LLM + projectors), projectors",
                         choices=TUNING)
    lr: float = option(3e-4, "AdamW learning rate (paper: 1e-4 with LoRA on 7B)", above=0.0, max=1.0)
    batch_size: int = option(8, "alignment rows per forward pass", min=1)
    max_prompt_tokens: int = option(320, "prompt tokens kept (the oldest are cut)", min=8)
    max_target_tokens: int = option(128, "answer tokens trained on (task 6 lists are long)", min=2)
    max_valid_pairs: int | None = option(64, "validate on the first N held-out alignment rows", min=1)
    lora: LoraConfig = option(lambda: LoraConfig(r=16, alpha=32.0, dropout=0.05),
                              "LoRA on q/k/v/o (the release: r 16, alpha 32, dropout 0.05)")
    recommender: RecommenderSettings = option(RecommenderSettings, "the recommender being explained")
    alignment: AlignmentSettings = option(AlignmentSettings, "the alignment data")

    def recommender_config(self) -> RecommenderConfig:
        return RecommenderConfig.from_dict({**self.recommender.to_dict(), "seed": self.seed}, "recommender")

    def check(self) -> None:
        from explainrec.config import ConfigError

        if self.tuning == "lora" and self.lora.r == 0:
            raise ConfigError("tuning: 'lora' needs lora.r > 0 (or tuning=full / tuning=projectors)")


@dataclass
class AlignmentEvaluationOptions(Config):
    """The ``alignment`` evaluation of a trained run (``explainrec evaluate RUN --extra alignment``, the bench's
    ``evaluations: {alignment: {...}}``): Table 1 on the held-out alignment rows and the explanation checks."""

    limit: int | None = option(100, "held-out rows scored per task (null: all)", min=1)
    explanations: int = option(48, "explanations generated for the checks (0: none)", min=0)
    zero_shot: bool = option(True, "also score the untrained LLM on the titles-only form of the same questions")
    catalogue_max: int = option(3000, "rank the whole catalogue by likelihood (Task 1's catalogue column) when it "
                                "has at most this many items", min=1)
    max_new_tokens: int = option(96, "longest generated answer or explanation, in tokens", min=1)
