"""The one batched generation path every method uses: left-padded batches through ``model.generate``.

Prompts are sorted by token length so each batch holds similar lengths (less padding), generated with the KV
cache, and returned in the caller's order. Left padding + the attention mask is enough for correctness:
``generate`` derives position ids from the mask (cumsum - 1), so a padded prompt sees the same positions as it
would alone, and batched greedy decoding equals one-by-one greedy decoding (tested).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BatchContext = Callable[[torch.Tensor, torch.Tensor], ContextManager]


@dataclass
class GenerationStats:
    """Throughput of one or more :func:`generate_texts` calls (pass the same object to accumulate).

    ``new_tokens`` counts generated tokens up to and including the first eos, not the padding after it;
    ``seconds`` is wall time including tokenization and decoding.
    """

    explanations: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def explanations_per_s(self) -> float:
        return self.explanations / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "explanations_per_s": self.explanations_per_s, "tokens_per_s": self.tokens_per_s}


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _count_new_tokens(new: torch.Tensor, eos_ids: set[int]) -> int:
    """Generated tokens per row up to and including the first eos; ``new`` is ``(B, N)``."""
    if new.numel() == 0:
        return 0
    is_eos = torch.zeros_like(new, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= new == e
    width = new.shape[1]
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, torch.full_like(new[:, 0], width))
    return int(first.sum())


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(B, T)``, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r):] = 1
    return ids, mask


def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 60,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_beams: int = 1,
    seed: int = 0,
    progress: bool = True,
    stats: GenerationStats | None = None,
    add_special_tokens: bool = False,
    embed_fn: EmbedFn | None = None,
    batch_context: BatchContext | None = None,
    **model_kwargs,
) -> list[str]:
    """Continue every prompt; return the generated texts (prompt, special tokens and outer whitespace stripped).

    Greedy by default. ``prompts`` are rendered strings (:func:`explainrec.data.prompts.render_prompt`), which
    already hold their BOS, hence ``add_special_tokens=False``. Sampling is seeded with ``seed`` inside a forked
    RNG, so the caller's global RNG is untouched. ``stats``, if given, is increased by this call's counts.

    ``embed_fn(input_ids, index) -> inputs_embeds`` lets soft-prompt methods replace placeholder embeddings:
    it gets the padded ``(B, T)`` ids and the ``(B,)`` positions of the batch's prompts in ``prompts`` and
    returns ``(B, T, H)``. ``batch_context(input_ids, index)`` returns a context manager that wraps that batch's
    ``generate`` call (GaVaMoE opens its per-sample cluster routing there). Other ``model_kwargs`` go unchanged to
    every ``model.generate`` call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    from tqdm.auto import tqdm

    start = time.perf_counter()
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # padded positions are masked out, so eos can stand in
        if not eos_ids:
            raise ValueError("tokenizer has neither a pad nor an eos token; call explainrec.llm.load.ensure_pad_token")
        pad_id = min(eos_ids)
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # longest first: memory peaks early
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=num_beams,
                   pad_token_id=pad_id, eos_token_id=sorted(eos_ids) or None)
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    options.update(model_kwargs)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout (e.g. LoRA's) must not make generation random mid-training
    texts: list[str] = [""] * len(prompts)
    new_tokens = 0
    interactive = sys.stderr.isatty()  # off a terminal: one progress line a minute, not one per batch
    bar = tqdm(total=len(prompts), desc="generate", unit="expl", disable=not progress,
               mininterval=0.1 if interactive else 60.0)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(seed)
            for lo in range(0, len(order), batch_size):
                batch = order[lo: lo + batch_size]
                ids, mask = _left_pad([encoded[i] for i in batch], pad_id)
                ids, mask = ids.to(device), mask.to(device)
                extra = {}
                index = torch.tensor(batch, device=device)
                if embed_fn is not None:
                    extra["inputs_embeds"] = embed_fn(ids, index)
                with batch_context(ids, index) if batch_context is not None else nullcontext():
                    out = model.generate(input_ids=ids, attention_mask=mask, **extra, **options)
                new = out[:, ids.shape[1]:]  # (B, <= max_new_tokens); generate returns prompt + continuation
                new_tokens += _count_new_tokens(new, eos_ids)
                for i, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
                    texts[i] = text.strip()
                bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    if stats is not None:
        stats.explanations += len(prompts)
        stats.new_tokens += new_tokens
        stats.seconds += time.perf_counter() - start
    return texts
