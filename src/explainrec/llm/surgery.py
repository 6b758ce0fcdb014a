"""Model surgery: swap the feed-forward block (``layers[i].mlp``) of a LLaMA-family HF model, and say what changed.

HF decoder layers call ``self.mlp(hidden_states)``; replacing that one attribute is the only seam we touch, so the
attention, caches and ``generate`` of the wrapped model keep working across transformers versions.

    report = replace_mlps(model, lambda i, old: MyBlock.from_dense(old))
    print(report)   # layers changed, parameter counts before/after

(GaVaMoE's upcycling surgery is built on it in :mod:`explainrec.methods.gavamoe.surgery`.)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurgeryReport:
    """Which decoder layers got a new MLP and how the parameter counts moved."""

    layers_changed: list[int]
    old_mlp: str
    new_mlp: str
    params_before: int
    params_after: int
    mlp_params_before: int
    mlp_params_after: int
    details: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        layers = self.layers_changed
        span = f"{layers[0]}..{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)
        extra = "".join(f", {k}={v}" for k, v in self.details.items())
        return (
            f"replaced {self.old_mlp} -> {self.new_mlp} in {len(layers)} layers ({span}){extra}; "
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"(MLPs {self.mlp_params_before:,} -> {self.mlp_params_after:,})"
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a LLaMA-family model: ``model.model.layers`` (ForCausalLM), ``model.layers`` (base
    model), or through ``get_decoder()`` for wrapped models (e.g. PEFT)."""
    for candidate in (getattr(getattr(model, "model", None), "layers", None), getattr(model, "layers", None)):
        if isinstance(candidate, nn.ModuleList):
            return candidate
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is not None and decoder is not model and isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder.layers
    raise TypeError(
        f"cannot find decoder layers in {type(model).__name__}: expected model.model.layers or model.layers"
    )


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _select(n_layers: int, layers: Sequence[int] | None) -> list[int]:
    """Sorted, de-duplicated layer indices (negative ones count from the end); all layers when None."""
    if layers is None:
        return list(range(n_layers))
    if any(not -n_layers <= i < n_layers for i in layers):
        raise IndexError(f"layer indices {list(layers)} out of range for {n_layers} decoder layers")
    if not layers:
        raise ValueError("no decoder layer selected")
    return sorted({i % n_layers for i in layers})


def replace_mlps(
    model: nn.Module,
    factory: Callable[[int, nn.Module], nn.Module],
    layers: Sequence[int] | None = None,
    details: dict[str, object] | None = None,
) -> SurgeryReport:
    """Replace ``layers[i].mlp`` by ``factory(i, old_mlp)`` for the chosen layers (all by default), in place.

    Args:
        model: a LLaMA-family HF model (``LlamaForCausalLM``, ``LlamaModel``...).
        factory: builds the new block from the layer index and the old MLP (to copy its weights); it must keep the
            ``(B, T, H) -> (B, T, H)`` contract and put its parameters on the device/dtype it wants.
        layers: indices of the decoder layers to change; negative indices count from the end.
        details: extra key/values shown in the report (e.g. the MoE settings).

    Returns:
        A :class:`SurgeryReport`; it is also logged at INFO level.
    """
    blocks = decoder_layers(model)
    chosen = _select(len(blocks), layers)
    params_before = _n_params(model)
    old_types, new_types, mlp_before, mlp_after = set(), set(), 0, 0
    for i in chosen:
        old = blocks[i].mlp
        new = factory(i, old)
        if not isinstance(new, nn.Module):
            raise TypeError(f"factory returned {type(new).__name__} for layer {i}; expected an nn.Module")
        old_types.add(type(old).__name__)
        new_types.add(type(new).__name__)
        mlp_before += _n_params(old)
        mlp_after += _n_params(new)
        blocks[i].mlp = new
    report = SurgeryReport(
        layers_changed=chosen,
        old_mlp="/".join(sorted(old_types)),
        new_mlp="/".join(sorted(new_types)),
        params_before=params_before,
        params_after=_n_params(model),
        mlp_params_before=mlp_before,
        mlp_params_after=mlp_after,
        details=dict(details or {}),
    )
    log.info("%s", report)
    return report
