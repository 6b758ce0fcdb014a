"""RecExplainer's settings: the recommender being explained (a ``recommender`` stage), the alignment data, the
LLM's training. Defaults are the CPU setting for SmolLM2-135M; the paper's GPU setting is ``configs/paper.yaml``."""
from __future__ import annotations

from dataclasses import dataclass

from explainrec.config import Config, option, seed_option
from explainrec.training.settings import LLMTrainConfig, LoraConfig

VARIANTS = ("behaviour", "intention", "hybrid")
KINDS = ("auto", "sasrec", "mf", "lightgcn")
TUNING = ("lora", "full", "projectors")
WARMUP_TASKS = ("interest", "item_title", "item_profile", "item_similar")
# alignment_data.TASK_NUMBER's trainable tasks, spelled out here so that config stays free of torch imports
TASKS = ("next_item", "ranking", "interest", "item_title", "item_profile", "profile_item", "item_similar", "history",
         "summary", "replay")


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
    task_weights: dict[str, float] = option(dict, "the train mixture: a task's rows are repeated (2 = twice, 1.5 = "
                                            "all once plus a seeded half again) or thinned (0.5 = a seeded half, 0 = "
                                            "none); tasks not named keep weight 1, e.g. {interest: 2, summary: 0.5}")

    def check(self) -> None:
        from explainrec.config import ConfigError

        for task, weight in self.task_weights.items():
            if task not in TASKS:
                raise ConfigError(f"task_weights: unknown task {task!r}; tasks: {', '.join(TASKS)}")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight <= 100:
                raise ConfigError(f"task_weights.{task}: expected a number in 0 .. 100, got {weight!r}")


@dataclass
class WarmupSettings(Config):
    """A projector-only stage before the joint one, the LLM frozen (as vision-language models align a new
    modality): the projectors first learn to map the recommender's vectors where the frozen LLM can read them."""

    steps: int = option(0, "optimizer steps of the projector warm-up (0 = off: the joint stage starts from random "
                        "projectors, as the paper does)", min=0)
    lr: float = option(1e-3, "its learning rate (higher than the joint stage's: only the small projectors train, "
                       "as in LLaVA's 1e-3 feature-alignment stage)", above=0.0, max=1.0)
    tasks: tuple[str, ...] = option(lambda: ("item_title", "interest"),
                                    "the rows it trains on: Task 4 (item_title, item_profile, item_similar) and / or "
                                    "Task 3 (interest); rows with no <user>/<item> vector are left out",
                                    choices=WARMUP_TASKS)

    def check(self) -> None:
        from explainrec.config import ConfigError

        if self.steps and not self.tasks:
            raise ConfigError("tasks: the warm-up needs at least one task (or steps=0)")


@dataclass
class RecExplainerConfig(LLMTrainConfig):
    """An LLM aligned to the recommender of the ``recommender`` stage; the variant decides what it reads."""

    RESUMABLE = (*LLMTrainConfig.RESUMABLE, "curve_alignment_rows")

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
    curve_alignment_rows: int = option(0, "held-out rows per task scored at every validation into RUN/curve/"
                                       "alignment-stepNNNNNN.json: Task 3 accuracy, Task 1 HR@5 (5 beams), "
                                       "alignment NLL (0 = none; 32 costs about a minute on a CPU with the 135M)",
                                       min=0)
    recommender: RecommenderSettings = option(RecommenderSettings, "the recommender being explained")
    alignment: AlignmentSettings = option(AlignmentSettings, "the alignment data")
    warmup: WarmupSettings = option(WarmupSettings, "the projector warm-up before the joint stage")

    def recommender_config(self) -> RecommenderConfig:
        return RecommenderConfig.from_dict({**self.recommender.to_dict(), "seed": self.seed}, "recommender")

    def check(self) -> None:
        from explainrec.config import ConfigError

        if self.tuning == "lora" and self.lora.r == 0:
            raise ConfigError("tuning: 'lora' needs lora.r > 0 (or tuning=full / tuning=projectors)")
        if self.warmup.steps and self.variant == "behaviour":
            raise ConfigError("warmup.steps: the behaviour variant reads no vectors, so it has no projector to warm up "
                              "(set warmup.steps=0, or variant=hybrid / intention)")


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
