"""The hooks a caller plugs into :func:`explainrec.llm.generate.generate_texts`, gathered in one typed object.

A module of its own, without torch, so that the method contract (:mod:`explainrec.methods.base`) can name it
without loading torch (``explainrec methods`` stays fast).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager

if TYPE_CHECKING:
    import torch

EmbedFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
BatchContext = Callable[["torch.Tensor", "torch.Tensor"], ContextManager]
PrefixGroup = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class GenerationHooks:
    """What a caller plugs into :func:`generate_texts` besides the decoding settings, in one object: a method's
    explainer builds one per call (``Prepared.hooks``), the server adds its streamers. Every field is optional.

    * ``embed_fn(input_ids, index) -> inputs_embeds``: soft-prompt methods replace placeholder embeddings; it gets
      the padded ``(B, T)`` ids and the ``(B,)`` positions of the batch's prompts in ``prompts`` and returns
      ``(B, T, H)``.
    * ``batch_context(input_ids, index)``: a context manager around that batch's ``generate`` call (GaVaMoE opens
      its per-sample cluster routing there, XRec its injection).
    * ``streamer_for(index) -> streamer | None``: called once per generation batch with the ``(B,)`` positions of
      its prompts; a returned object goes to that batch's ``model.generate(streamer=...)`` (the server streams
      several requests' texts from one batch this way).
    * Shared-prefix reuse (module docstring) -- the prompts' longest common token prefix, cut before the first soft
      token placeholder (``<|user_emb|>``, ``<|item_emb|>``) or any id in ``prefix_stop_ids``, and before the first
      position where ``embed_fn`` changes an embedding:

      - ``prefix_reuse``: None (default) reuses it when there is no ``batch_context`` or a ``prefix_group`` is
        given; True also with a ``batch_context`` alone (the caller vouches that the context treats the prefix
        tokens of every sample alike, as XRec's injection does: it only touches placeholder positions); False never.
      - ``prefix_group(index) -> (B,) long``: for samples whose prefix states differ by group (GaVaMoE: the cluster
        ids, ``lambda index: clusters[index]``, since its MoE layers route by cluster). The prefix is run once per
        group, inside ``batch_context(prefix_ids, index)`` with ``index`` the first sample seen of each group;
        whatever the context records for those prefix tokens (GaVaMoE's expert usage) is recorded for that sample
        only.
      - ``prefix_context(prefix_ids, index)``: a context for that prefix run instead of ``batch_context``, e.g. to
        record the prefix's expert usage per group and add it to every sample of the group afterwards (the plain
        layout counts the prefix tokens once per sample).
      - With a prefix, ``embed_fn`` and ``batch_context`` get the ``(B, P + T)`` layout ``[prefix, left padding,
        suffix]`` (the ids ``generate`` is called with), the first ``P`` columns being the prefix.
    """

    embed_fn: EmbedFn | None = None
    batch_context: BatchContext | None = None
    streamer_for: Callable[[torch.Tensor], object] | None = None
    prefix_reuse: bool | None = None
    prefix_group: PrefixGroup | None = None
    prefix_context: BatchContext | None = None
    prefix_stop_ids: Collection[int] = ()


NO_HOOKS = GenerationHooks()
