"""Token batches for supervised explanation training: loss only on the explanation tokens.

A training sequence is ``prompt tokens + explanation tokens + eos``; labels are -100 on the prompt and on padding, so
the NLL counts the explanation alone (GaVaMoE eq. 12, XRec's loss after ``<EXPLAIN_POS>``). Training batches are
right-padded; generation batches are left-padded by ``explainrec.llm.generate``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_pair(tokenizer, prompt: str, target: str, *, max_prompt_tokens: int = 384, max_target_tokens: int = 96) -> Encoded:
    """Tokenize one (rendered prompt, explanation) pair.

    The chat template already holds any BOS, so no special tokens are added here. A prompt longer than
    ``max_prompt_tokens`` loses its oldest tokens (the generation prompt at its end must stay); the explanation is cut
    at ``max_target_tokens`` and always ends with eos so the model learns to stop.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
    t = tokenizer(" " + target.strip() if not prompt.endswith((" ", "\n")) else target.strip(), add_special_tokens=False)["input_ids"]
    t = t[: max_target_tokens - 1] + [tokenizer.eos_token_id]
    return Encoded(input_ids=p + t, labels=[IGNORE_INDEX] * len(p) + t)


def collate(encoded: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded pairs into ``input_ids``, ``attention_mask`` and ``labels`` of shape ``(B, T)``."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_examples(examples, tokenizer, prompt_fn, *, max_prompt_tokens: int = 384, max_target_tokens: int = 96) -> list[dict]:
    """Examples -> rows of token ids (labels on the explanation only) plus each pair's user, item and rating.

    ``prompt_fn(example) -> chat messages`` is the method's prompt; it is rendered through the chat template.
    """
    from explainrec.data.prompts import render_prompt

    rows = []
    for ex in examples:
        enc = encode_pair(tokenizer, render_prompt(tokenizer, prompt_fn(ex)), ex.explanation,
                          max_prompt_tokens=max_prompt_tokens, max_target_tokens=max_target_tokens)
        rows.append({"enc": enc, "user": ex.user, "item": ex.item, "rating": float("nan") if ex.rating is None else ex.rating})
    return rows


def make_collate(pad_id: int):
    """Collate function for rows of :func:`encode_examples`: token tensors plus ``user``, ``item``, ``target``."""

    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([r["enc"] for r in rows], pad_id)
        batch["user"] = torch.tensor([r["user"] for r in rows], dtype=torch.long)
        batch["item"] = torch.tensor([r["item"] for r in rows], dtype=torch.long)
        batch["target"] = torch.tensor([r["rating"] for r in rows], dtype=torch.float32)
        return batch

    return fn
