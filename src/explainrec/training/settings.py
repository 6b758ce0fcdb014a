"""Settings every LLM method's training shares: the loop (budget, batches, checkpoints) and LoRA.

A method's config extends :class:`LLMTrainConfig` with its own fields and may change these defaults; the keys are
the same for every method, so ``max_steps=32`` or ``lora.r=8`` mean one thing everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

from explainrec.config import Config, ConfigError, option, seed_option


@dataclass
class LoraConfig(Config):
    """LoRA through peft; ``r = 0`` leaves the LLM's own weights as the method sets them (no adapters)."""

    r: int = option(0, "LoRA rank (0 = no LoRA)", min=0)
    alpha: float = option(0.0, "LoRA scaling alpha (0 = 2 * r)", min=0.0)
    dropout: float = option(0.0, "dropout on the LoRA input", min=0.0, max=0.9)
    targets: tuple[str, ...] = option(lambda: ("q_proj", "k_proj", "v_proj", "o_proj"),
                                      "module names that get adapters (comma list)")

    def check(self) -> None:
        if self.r > 0 and not self.targets:
            raise ConfigError("targets: LoRA needs at least one target module name")


@dataclass
class LLMTrainConfig(Config):
    """The supervised explanation-training loop (explainrec.training.loop) and the LLM it trains."""

    RESUMABLE = ("max_minutes", "max_steps", "epochs", "curve_pairs", "curve_batch_size", "curve_max_new_tokens")

    model: str = option("smollm2-135m", "base LLM: smollm2-135m (embedded), tiny (tests), an HF id or a local folder")
    lr: float = option(1e-4, "AdamW learning rate", above=0.0, max=1.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    epochs: int = option(1, "passes over the training explanations", min=1)
    batch_size: int = option(8, "pairs per forward pass", min=1)
    grad_accum: int = option(1, "forward passes per optimizer step", min=1)
    clip: float = option(1.0, "gradient-norm clipping (0 = off)", min=0.0)
    max_minutes: float | None = option(None, "wall-clock budget; saves and stops when reached (null = none)", above=0.0)
    max_steps: int | None = option(None, "stop after this many optimizer steps (null = none)", min=1)
    max_valid_pairs: int | None = option(None, "validate on the first N valid pairs (null = all)", min=1)
    max_prompt_tokens: int = option(384, "prompt tokens kept (the oldest are cut)", min=8)
    max_target_tokens: int = option(96, "explanation tokens trained on", min=2)
    length_buckets: int = option(8, "sort each window of N batches by length before batching, so batches hold "
                                 "little padding (0 = a plain shuffle)", min=0)
    target_logits_only: bool = option(True, "apply the output head to the explanation tokens only (same loss, "
                                      "less work; false = the transformers path)")
    fused_adamw: bool = option(True, "one fused AdamW kernel for all weights (same update; on CPU ~6x faster than "
                               "the per-tensor loop, which is what false selects)")
    checkpoint_every: int = option(100, "optimizer steps between checkpoints (one is also written at every stop)", min=1)
    valid_every: int = option(0, "optimizer steps between validations, for a learning curve (0 = at the end of "
                              "each epoch and at a budget stop only)", min=0)
    curve_pairs: int = option(0, "valid pairs explained (greedy) at every validation, written to RUN/curve/: "
                              "overlap and specificity against training steps (0 = none)", min=0)
    curve_batch_size: int = option(16, "prompts generated together for the curve explanations", min=1)
    curve_max_new_tokens: int = option(80, "longest curve explanation, in tokens", min=1)
    log_every: int = option(10, "optimizer steps between log lines", min=1)
    seed: int = seed_option("random seed (data order, initialisation, sampling)")
    lora: LoraConfig = option(LoraConfig, "LoRA adapters")


def apply_lora(llm, lora: LoraConfig):
    """Wrap ``llm`` with peft LoRA adapters when ``lora.r > 0`` (else return it unchanged)."""
    if lora.r <= 0:
        return llm
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    found = {name.rsplit(".", 1)[-1] for name, _ in llm.named_modules()}
    missing = [t for t in lora.targets if t not in found]
    if missing:
        raise ConfigError(f"lora.targets: no module named {missing} in {type(llm).__name__} "
                          f"(LLaMA-family names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
    return get_peft_model(llm, PeftLora(r=lora.r, lora_alpha=lora.alpha or 2 * lora.r, lora_dropout=lora.dropout,
                                         target_modules=list(lora.targets)))


def merge_lora(llm):
    """The plain model with LoRA adapters merged into its weights (unchanged when it has none)."""
    return llm.merge_and_unload() if hasattr(llm, "merge_and_unload") else llm
