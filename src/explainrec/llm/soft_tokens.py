"""Soft user/item tokens: placeholder tokens whose input embeddings are replaced by projected vectors.

GaVaMoE, XRec and MMP-Refer all put collaborative vectors into the prompt this way: add special tokens to the
tokenizer, resize the embedding table, then overwrite ``inputs_embeds`` at the placeholder positions. Token ids are
always looked up from the tokenizer, never hard-coded.
"""
from __future__ import annotations

import torch

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN


def add_placeholder_tokens(model, tokenizer, tokens: tuple[str, ...] = (USER_TOKEN, ITEM_TOKEN)) -> dict[str, int]:
    """Register ``tokens`` as special tokens (once) and resize the model's embeddings; return their ids."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def splice(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, vectors: torch.Tensor
) -> torch.Tensor:
    """Replace the embedding at every occurrence of ``token_id`` in row b by ``vectors[b]``.

    Args:
        inputs_embeds: ``(B, T, H)`` token embeddings.
        input_ids: ``(B, T)`` token ids.
        token_id: the placeholder's id.
        vectors: ``(B, H)`` one vector per sample.
    Returns a new ``(B, T, H)`` tensor (differentiable in ``vectors``).
    """
    mask = (input_ids == token_id).unsqueeze(-1)  # (B, T, 1)
    return torch.where(mask, vectors.to(inputs_embeds.dtype).unsqueeze(1), inputs_embeds)
