"""Sentence embeddings for the specificity metrics: mean-pooled, L2-normalised, the embedded MiniLM by default.

all-MiniLM-L6-v2 was trained as a sentence encoder with mean pooling over its last layer, so the mean of the token
states (padding left out) is its sentence vector; cosine similarity is then a dot product of unit vectors.
"""
from __future__ import annotations

from typing import Sequence

import torch

from explainrec.llm.load import DEFAULT_ENCODER


class SentenceEncoder:
    """A loaded encoder that turns texts into unit vectors. Build once, reuse for every file of a comparison."""

    def __init__(self, model: str = DEFAULT_ENCODER, *, device: str = "cpu", batch_size: int = 64,
                 max_length: int = 256) -> None:
        from transformers.utils import logging as hf_logging

        from explainrec.llm.load import load_encoder

        self.name, self.batch_size, self.max_length = model, batch_size, max_length
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar inside a metrics run
        try:
            self.tokenizer, self.model = load_encoder(model, device=device)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(n, d)`` float32 unit vectors, one per text, in order (an empty text gets the zero vector)."""
        out = []
        for lo in range(0, len(texts), self.batch_size):
            chunk = [str(t) for t in texts[lo: lo + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.model.device)
            states = self.model(**enc).last_hidden_state  # (B, T, d)
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, T, 1)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, d)
            vectors = torch.nn.functional.normalize(mean.float(), dim=-1)
            blank = torch.tensor([not t.strip() for t in chunk], device=vectors.device)
            out.append(vectors.masked_fill(blank.unsqueeze(-1), 0.0).cpu())
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(out)

    @property
    def description(self) -> str:
        shown = "all-MiniLM-L6-v2 (embedded)" if self.name == DEFAULT_ENCODER else self.name
        return f"{shown}, mean pooling over the last layer, cosine similarity"
