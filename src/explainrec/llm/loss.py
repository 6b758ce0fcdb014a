"""The explanation NLL of a causal LM, with the output head applied only where a label asks for it.

Why: in a training sequence ``prompt + explanation`` only the explanation tokens carry labels, yet a plain
``llm(..., labels=...)`` applies the output head (SmolLM2: 49k words x 576, about a fifth of a forward pass) to every
position and keeps a ``(B, T, V)`` logits tensor for the backward pass. Running the decoder, then the head on the
labelled positions only, gives the same loss (the mean token NLL, as transformers computes it) for less work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _base(llm):
    """The ``*ForCausalLM`` under a peft wrapper (its LoRA layers stay in place)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def causal_lm_nll(llm, *, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                  position_ids: torch.Tensor | None = None, targets_only: bool = True) -> torch.Tensor:
    """Mean NLL of the labelled tokens (labels ``(B, T)``, -100 elsewhere; label t is predicted at position t-1).

    ``targets_only=False`` is the plain transformers path (head on every position), kept for comparison.
    """
    if not targets_only:
        return llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                   labels=labels, use_cache=False).loss
    base = _base(llm)
    hidden = base.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False).last_hidden_state  # (B, T, H)
    target = labels[:, 1:]  # (B, T-1)
    keep = target != IGNORE_INDEX
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V): the labelled positions only
    return F.cross_entropy(logits.float(), target[keep])


def soft_prompt_forward(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                        labels: torch.Tensor | None, *, targets_only: bool = True):
    """``(loss, logits)`` of a soft-prompt model's LLM pass: the loss when ``labels`` are given (no logits kept),
    else the logits. Positions come from the mask, as ``generate`` computes them, so left- and right-padded
    batches give the same outputs."""
    position_ids = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if labels is not None:
        return causal_lm_nll(llm, inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                             position_ids=position_ids, targets_only=targets_only), None
    return None, llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).logits
