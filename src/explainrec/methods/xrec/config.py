"""XRec's settings: the LightGCN stage (collaborative embeddings) and the adaptors on a frozen LLM. Defaults are
the CPU setting for SmolLM2-135M; the paper's LLaMA-2-7B values are in ``configs/paper.yaml``."""
from __future__ import annotations

from dataclasses import dataclass

from explainrec.config import Config, option, seed_option
from explainrec.training.settings import LLMTrainConfig, LoraConfig


@dataclass
class LightGCNSettings(Config):
    """LightGCN + BPR on the train graph (XRec's collaborative tokenizer); the seed comes from the run."""

    RESUMABLE = ("epochs", "max_seconds")

    dim: int = option(64, "embedding size (XRec: 64)", min=1)
    layers: int = option(2, "propagation depth L", min=0)
    epochs: int = option(30, "passes over the train edges", min=1)
    batch_size: int = option(8192, "edges per BPR step (each step propagates the whole graph)", min=1)
    lr: float = option(1e-2, "Adam learning rate", above=0.0, max=1.0)
    reg: float = option(1e-4, "L2 weight on the batch's ego embeddings", min=0.0)
    eval_every: int = option(0, "validation Recall/NDCG every N epochs in the history (0 = never)", min=0)
    eval_k: int = option(20, "k of Recall@k / NDCG@k", min=1)
    max_seconds: float | None = option(None, "wall-clock budget (stops after the current epoch)", above=0.0)


@dataclass
class LightGCNConfig(LightGCNSettings):
    """LightGCN on its own (``explainrec train lightgcn``)."""

    seed: int = seed_option("random seed")


@dataclass
class XRecConfig(LLMTrainConfig):
    """The MoE adaptors (and optional LoRA) on a frozen LLM, plus the LightGCN stage they read."""

    lr: float = option(1e-3, "AdamW learning rate (only the adaptors train: a larger step than fine-tuning)",
                       above=0.0, max=1.0)
    lightgcn: LightGCNSettings = option(LightGCNSettings, "the LightGCN stage")
    n_experts: int = option(8, "experts of each MoE adaptor (paper: 8)", min=1)
    dropout: float = option(0.2, "adaptor dropout (paper: 0.2)", min=0.0, max=0.9)
    lora: LoraConfig = option(lambda: LoraConfig(targets=("q_proj", "v_proj")),
                              "LoRA on the LLM (r = 0: the LLM stays frozen, as XRec)")

    def lightgcn_config(self) -> LightGCNConfig:
        return LightGCNConfig.from_dict({**self.lightgcn.to_dict(), "seed": self.seed}, "lightgcn")
