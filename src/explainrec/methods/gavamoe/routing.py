"""Scoped routing context: carries each sample's GMM cluster id to the MoE layers during one forward pass.

HF decoder layers call ``self.mlp(hidden_states)`` with that single argument, so the per-sample cluster ids cannot
travel as a call argument. The reference release kept a per-layer counter indexing a list aligned to dataset row
order, which forced batch size 1 and a sequential sampler. Here routing is data: the caller opens

    with routing(batch["cluster_ids"]) as ctx:      # (B,) LongTensor
        out = model(input_ids=..., attention_mask=...)
    aux = ctx.aux_parts()                            # {"load_balance": ..., "router_z": ...}, mean over layers

(``collect_aux=True`` and ``track_samples=True`` ask the layers to record aux losses and per-sample expert use.)

and every :class:`~explainrec.methods.gavamoe.moe_ffn.MultiGatedMoE` reads the ids from the innermost open context.
The state lives in a :class:`contextvars.ContextVar` (per thread / per asyncio task), is reset on exit even when the
forward raises, and nothing survives between batches. Call ``backward()`` inside the block when gradient
checkpointing re-runs the forward pass during backward.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

_ACTIVE: contextvars.ContextVar[RoutingState | None] = contextvars.ContextVar(
    "explainrec_gavamoe_routing", default=None
)


@dataclass
class RoutingState:
    """What one forward pass needs to route: cluster ids, an optional token mask, and the collected aux losses.

    Args:
        cluster_ids: ``(B,)`` long, the GMM cluster (= gate) of each sample, eq. 9.
        token_mask: optional ``(B, T)`` 1/0 mask (the attention mask); when a layer's input is ``(B, T')`` with
            ``T' <= T`` the aux losses and usage counts skip masked (padding) tokens, reading the mask's last ``T'``
            columns: a call that starts after cached positions (the prompt after a shared prefix) covers those.
            A cached decoding step reads the last prompt column (1 in left-padded batches), so counts every
            token; other shapes (expanded beams, uncached re-runs) count every token too.
        collect_aux: when True each MoE layer appends its auxiliary loss parts to ``aux``.
        track_samples: when True ``sample_usage`` ``(B, E)`` counts, per sample, the (token, layer) assignments
            to each expert over every forward run in the block (all decoding steps of a ``generate`` call; the
            rows of expanded beams are added to their sample).
    """

    cluster_ids: torch.Tensor
    token_mask: torch.Tensor | None = None
    collect_aux: bool = False
    track_samples: bool = False
    aux: list[dict[str, torch.Tensor]] = field(default_factory=list)
    sample_usage: torch.Tensor | None = None
    _checked_gates: set[int] = field(default_factory=set, repr=False)
    _sample_of_row: dict = field(default_factory=dict, repr=False)

    def ids_for(self, batch_size: int, n_gates: int, device: torch.device) -> torch.Tensor:
        """Cluster ids matching a layer input of ``batch_size`` rows, on ``device``.

        ``generate(num_beams=n)`` / ``num_return_sequences=n`` expand every sample ``n`` times with
        ``repeat_interleave`` (rows ``b*n .. b*n+n-1`` belong to sample ``b``), so the ids are expanded the same way.
        The range check runs once per context and gate count (it syncs on accelerators).
        """
        ids = self.cluster_ids
        n_samples = ids.shape[0]
        if batch_size != n_samples:
            if n_samples == 0 or batch_size % n_samples:
                raise ValueError(
                    f"MoE layer got a batch of {batch_size} rows but routing() holds {n_samples} cluster ids; "
                    "the batch must be the samples themselves or each sample repeated n times (beams)"
                )
            ids = ids.repeat_interleave(batch_size // n_samples)
        if n_gates not in self._checked_gates:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= n_gates:
                raise ValueError(f"cluster ids must lie in [0, {n_gates - 1}] (one gate per cluster); got [{lo}, {hi}]")
            self._checked_gates.add(n_gates)
        return ids.to(device)

    def mask_for(self, batch_size: int, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """``(B*T',)`` bool keep-mask for a ``(B, T')`` layer input: the last ``T'`` columns of ``token_mask``
        (all of it when ``T' == T``), or None (count all) when the mask does not cover the input."""
        mask = self.token_mask
        if mask is None or mask.shape[0] != batch_size or mask.shape[1] < seq_len:
            return None
        return mask[:, mask.shape[1] - seq_len:].reshape(-1).to(device=device, dtype=torch.bool)

    def add_sample_usage(self, topk_idx: torch.Tensor, n_experts: int, keep: torch.Tensor | None) -> None:
        """Add one layer's choices to ``sample_usage``.

        Args:
            topk_idx: ``(rows, T, k)`` experts chosen for each token; rows is B or B * beams.
            n_experts: E of the layer. keep: optional ``(rows * T,)`` bool, False for padding tokens.
        """
        rows, seq, k = topk_idx.shape
        n_samples = self.cluster_ids.shape[0]
        if self.sample_usage is None:
            self.sample_usage = torch.zeros(n_samples, n_experts, dtype=torch.long, device=topk_idx.device)
        elif self.sample_usage.shape[1] != n_experts:
            raise ValueError(f"MoE layers disagree on the expert count: {self.sample_usage.shape[1]} vs {n_experts}")
        key = (rows, topk_idx.device)
        if key not in self._sample_of_row:  # beams: rows b*n .. b*n+n-1 belong to sample b
            sample_of_row = torch.arange(rows, device=topk_idx.device) // (rows // n_samples)
            self._sample_of_row[key] = sample_of_row.view(rows, 1, 1)
        ones = keep.view(rows, seq, 1).long() if keep is not None else topk_idx.new_ones(())
        # one accumulating scatter per layer call (a decoding step makes one per layer)
        self.sample_usage.index_put_(
            (self._sample_of_row[key], topk_idx.to(self.sample_usage.device)), ones, accumulate=True
        )

    def aux_parts(self) -> dict[str, torch.Tensor]:
        """Mean of each named aux loss over the MoE layers that ran (empty dict when none collected)."""
        if not self.aux:
            return {}
        names = self.aux[0].keys()
        return {name: torch.stack([parts[name] for parts in self.aux]).mean() for name in names}


@contextlib.contextmanager
def routing(
    cluster_ids: torch.Tensor | list[int],
    *,
    token_mask: torch.Tensor | None = None,
    collect_aux: bool = False,
    track_samples: bool = False,
) -> Iterator[RoutingState]:
    """Make ``cluster_ids`` (one per sample) visible to every MoE layer run inside the block.

    Contexts nest (the innermost wins) and the previous state is restored on exit, also after an exception.
    """
    ids = torch.as_tensor(cluster_ids)
    if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"cluster_ids must be a 1-D integer tensor of shape (B,); got {tuple(ids.shape)} {ids.dtype}")
    if token_mask is not None and (token_mask.dim() != 2 or token_mask.shape[0] != ids.shape[0]):
        raise ValueError(f"token_mask must be (B, T) with B={ids.shape[0]}; got {tuple(token_mask.shape)}")
    state = RoutingState(
        cluster_ids=ids.long(), token_mask=token_mask, collect_aux=collect_aux, track_samples=track_samples
    )
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def current_routing() -> RoutingState | None:
    """The innermost open routing state, or None outside any ``routing()`` block."""
    return _ACTIVE.get()
