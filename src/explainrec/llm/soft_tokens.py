"""Soft user/item tokens: placeholder tokens whose input embeddings are replaced by projected vectors.

GaVaMoE, XRec and MMP-Refer all put collaborative vectors into the prompt this way: add special tokens to the
tokenizer, resize the embedding table, then overwrite ``inputs_embeds`` at the placeholder positions. Token ids are
always looked up from the tokenizer, never hard-coded. Placeholders are named ``<|NAME_emb|>``; generation never
emits them (:func:`never_generated`).
"""
from __future__ import annotations

import torch

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN


def add_placeholder_tokens(model, tokenizer, tokens: tuple[str, ...] = (USER_TOKEN, ITEM_TOKEN)) -> dict[str, int]:
    """Register ``tokens`` as special tokens (once) and resize the model's embeddings; return their ids."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    from explainrec.llm.load import grow_embeddings

    # new rows = the mean of the old ones, never a random draw: a model rebuilt to load saved weights that leave the
    # frozen LLM out must get exactly the rows it was trained with
    grow_embeddings(model, len(tokenizer))
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def never_generated(tokenizer) -> list[int]:
    """Ids a model must not write: the placeholders (``<|NAME_emb|>``) and a pad token that is not also eos (their
    output-embedding rows were never trained)."""
    ids = [i for tok, i in tokenizer.get_vocab().items() if tok.startswith("<|") and tok.endswith("_emb|>")]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        ids.append(pad)
    return sorted(set(ids))


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
