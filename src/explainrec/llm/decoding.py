"""Decoding settings shared by every method's explanations (CLI options, bench configs, server requests)."""
from __future__ import annotations

from dataclasses import dataclass

from explainrec.config import Config, option, seed_option


@dataclass
class GenerationConfig(Config):
    """How explanations are decoded. Greedy by default: deterministic, and what the papers report."""

    batch_size: int = option(32, "prompts generated together (sorted by length, left-padded, KV-cached)", min=1)
    max_new_tokens: int = option(60, "longest explanation, in tokens", min=1, max=4096)
    min_new_tokens: int = option(0, "shortest explanation (eos suppressed until then; 0 = off; for timing)", min=0)
    do_sample: bool = option(False, "sample (nucleus) instead of greedy decoding")
    temperature: float = option(1.0, "sampling temperature (with do_sample)", above=0.0, max=100.0)
    top_p: float = option(1.0, "nucleus sampling mass (with do_sample)", above=0.0, max=1.0)
    num_beams: int = option(1, "beam search width (1 = no beam search)", min=1, max=64)
    repetition_penalty: float = option(1.0, "penalty on tokens already generated (1 = none)", above=0.0, max=10.0)
    no_repeat_ngram_size: int = option(0, "forbid repeating any n-gram of this size (0 = off)", min=0, max=32)
    typical_p: float = option(1.0, "locally typical sampling mass (with do_sample; 1 = off)", above=0.0, max=1.0)
    candidates: int = option(1, "texts sampled per pair; the one closest in meaning to what the prompt says about "
                             "the pair is kept (needs do_sample; 1 = off)", min=1, max=64)
    seed: int = seed_option("random seed for sampling")

    def check(self) -> None:
        if self.candidates > 1 and not self.do_sample:
            from explainrec.config import ConfigError

            raise ConfigError(f"candidates: {self.candidates} texts per pair need do_sample=true (greedy decoding "
                              "writes one text)")

    def generate_kwargs(self) -> dict:
        """Keyword arguments of :func:`explainrec.llm.generate.generate_texts`; neutral settings left out
        (``candidates`` is the explainer's: :func:`explainrec.methods.rerank.explain_reranked`)."""
        out = dict(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                   temperature=self.temperature, top_p=self.top_p, num_beams=self.num_beams, seed=self.seed)
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.min_new_tokens:
            out["min_new_tokens"] = self.min_new_tokens
        if self.typical_p != 1.0:
            out["typical_p"] = self.typical_p
        return out
