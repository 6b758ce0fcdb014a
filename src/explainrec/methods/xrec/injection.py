"""XRec's embedding injection into any LLaMA-family Hugging Face model, done with hooks (no copied model code).

XRec puts the adapted user/item vectors into the LLM twice (paper sec. 3.2, "collaborative information
injection"):

1. *input*: they replace the input embeddings of the ``<|user_emb|>``/``<|item_emb|>`` placeholder tokens;
2. *every layer*: they are added to the attention's query, key and value states at those positions, so the
   signal is not diluted with depth.

Design. Two kinds of forward pre-hooks are installed once by :class:`XRecInjection`:

* on the decoder (the module holding ``.layers``): replaces the input embeddings at the placeholder positions
  (building ``inputs_embeds`` from ``input_ids`` when needed), so the splice also happens on every step of
  uncached generation, where Hugging Face re-embeds the whole sequence from ids;
* on every layer's ``self_attn``: adds the vector ``e`` to the attention's *input* at the placeholder positions.
  Each projection then computes ``proj(h + e) = proj(h) + W_proj e``: query, key and value all receive the vector
  through that layer's own weights. This is our choice where XRec's release adds ``e`` itself to the projection
  outputs (LLaMA-2-7B, where q/k/v all have the hidden width): with grouped-query attention (SmolLM2, LLaMA-3, the
  tiny test model) k/v are narrower than ``e``, so the raw addition is not defined; adding before the projection
  fits every head layout, fused qkv projections, biases, LoRA-wrapped or quantized projections alike. The residual
  stream is untouched (the layer reads its residual before the attention input is formed).

The vectors travel in a scoped context (:mod:`contextvars`), never in module state:

    inj = XRecInjection(llm)                                  # once
    with inj.inject(input_ids, {user_tok: u, item_tok: i}):   # u, i: (B, H)
        out = llm(input_ids=input_ids, attention_mask=mask)   # or llm.generate(...)

Outside a block the hooks do nothing. Positions come from the ``input_ids`` given to :meth:`inject` -- the
prompt as fed to the first forward call, left padding included. Every hook finds which prompt positions the
current call covers from the KV cache: a call that starts ``P`` tokens after the cache start covers prompt
positions ``P..P+T'-1``. So training and the prefill step (``P = 0``) are injected at the placeholders, cached
decoding steps (``P >= prompt length``) are left alone, and uncached generation (``P = 0``, growing ``T'``)
is injected at the same prompt positions on every step -- cached and uncached decoding therefore agree.
``generate(num_beams=n)`` expands each sample ``n`` times and the vectors follow.

Limits: gradient checkpointing re-runs layers during backward, outside the block, and would drop the
injection (XRecModel refuses it); a forward call inside the block that is not the injected prompt is
detected when it passes ``input_ids`` (mismatching placeholders raise), not when it passes only embeddings.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class InjectionState:
    """What one injected forward pass needs, in prompt coordinates.

    Args:
        owner: the :class:`XRecInjection` whose hooks may use this state (another model's hooks ignore it).
        token_ids: the placeholder token ids, for checking the ids of each forward call.
        mask: ``(B, T)`` bool, True at placeholder positions.
        values: ``(B, T, H)`` the vector of each placeholder at its position, zero elsewhere.
    """

    owner: "XRecInjection"
    token_ids: tuple[int, ...]
    mask: Tensor
    values: Tensor

    @property
    def prompt_length(self) -> int:
        return int(self.mask.shape[1])

    def window(self, batch: int, seq_len: int, offset: int) -> tuple[int, Tensor, Tensor] | None:
        """``(n, mask (B', n), values (B', n, H))`` for a call whose ``seq_len`` tokens start at prompt position
        ``offset``; None when the call covers no prompt position (cached decoding)."""
        n = min(self.prompt_length - offset, seq_len)
        if n <= 0:
            return None
        mask, values = self.mask[:, offset: offset + n], self.values[:, offset: offset + n]
        n_samples = mask.shape[0]
        if batch != n_samples:
            if n_samples == 0 or batch % n_samples:
                raise ValueError(
                    f"XRec injection: a forward call has batch {batch} but inject() got {n_samples} prompts; the batch "
                    "must be the prompts themselves or each prompt repeated n times (beams / num_return_sequences)"
                )
            rep = batch // n_samples
            mask, values = mask.repeat_interleave(rep, 0), values.repeat_interleave(rep, 0)
        return n, mask, values


_ACTIVE: contextvars.ContextVar[InjectionState | None] = contextvars.ContextVar("explainrec_xrec_injection", default=None)


def find_decoder(llm: nn.Module) -> nn.Module:
    """The module that holds the decoder layers (``.layers``, each with ``.self_attn``) -- e.g. ``LlamaModel``.

    Searched by structure, so wrappers (``*ForCausalLM``, peft) and any LLaMA-family architecture work.
    """
    for module in llm.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and all(hasattr(layer, "self_attn") for layer in layers):
            return module
    raise ValueError(f"{type(llm).__name__}: no decoder with `.layers[i].self_attn` found; XRec's injection needs a "
                     "LLaMA-family decoder-only model")


def _cache_of(kwargs: dict):
    """The KV cache a forward call got: ``cache`` since transformers 5.x renamed it, else the older names (reading
    only the old name made every call look uncached, so a call starting after a cached prefix was mis-placed)."""
    for name in ("cache", "past_key_values", "past_key_value"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _cache_length(past, layer_idx: int) -> int:
    """Tokens already in the KV cache of layer ``layer_idx`` (0 without a cache)."""
    if past is None:
        return 0
    try:
        return int(past.get_seq_length(layer_idx))
    except TypeError:
        return int(past.get_seq_length())


class XRecInjection:
    """Hooks that carry XRec's adapted vectors into an LLM: input splice + per-layer q/k/v addition.

    Args:
        llm: a LLaMA-family causal LM (or its decoder).
        every_layer: False keeps only the input splice (ablation: input-only vs every-layer injection).
        layers: indices of the decoder layers that receive the addition (default: all).

    Call :meth:`remove` to take the hooks off again.
    """

    def __init__(self, llm: nn.Module, *, every_layer: bool = True, layers: Sequence[int] | None = None) -> None:
        decoder = find_decoder(llm)
        self.hidden_size = int(decoder.get_input_embeddings().weight.shape[1])
        n_layers = len(decoder.layers)
        chosen = list(range(n_layers)) if layers is None else sorted(set(int(i) for i in layers))
        if any(not 0 <= i < n_layers for i in chosen):
            raise ValueError(f"layers must lie in [0, {n_layers - 1}]; got {list(layers or [])}")
        self.layers = tuple(chosen) if every_layer else ()
        self._handles = [decoder.register_forward_pre_hook(self._input_hook, with_kwargs=True)]
        for idx in self.layers:
            attn = decoder.layers[idx].self_attn
            layer_idx = getattr(attn, "layer_idx", idx)
            hook = self._make_attention_hook(layer_idx)
            self._handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ scope

    @contextlib.contextmanager
    def inject(self, input_ids: Tensor, vectors: Mapping[int, Tensor]) -> Iterator[InjectionState]:
        """Open the scope: every forward call of the hooked model inside it is injected.

        Args:
            input_ids: ``(B, T)`` the prompt ids exactly as the first forward call receives them (padding included).
            vectors: ``{placeholder_token_id: (B, H) vectors}``; row b goes to every occurrence of that token in
                row b. Differentiable: gradients reach whatever produced the vectors.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T); got {tuple(input_ids.shape)}")
        batch, seq_len = input_ids.shape
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        values = None
        for token_id, vec in vectors.items():
            if vec.shape != (batch, self.hidden_size):
                raise ValueError(f"vectors for token {token_id} must be (B, H) = {(batch, self.hidden_size)}; "
                                 f"got {tuple(vec.shape)}")
            hit = input_ids == token_id  # (B, T)
            if values is None:
                values = vec.new_zeros(batch, seq_len, self.hidden_size)
            values = torch.where(hit.unsqueeze(-1), vec.unsqueeze(1), values)  # (B, T, H)
            mask |= hit
        if values is None:
            values = torch.zeros(batch, seq_len, self.hidden_size, device=input_ids.device)
        state = InjectionState(owner=self, token_ids=tuple(int(t) for t in vectors), mask=mask, values=values)
        token = _ACTIVE.set(state)
        try:
            yield state
        finally:
            _ACTIVE.reset(token)

    def _state(self) -> InjectionState | None:
        state = _ACTIVE.get()
        return state if state is not None and state.owner is self else None

    # ------------------------------------------------------------------ hooks

    def _input_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        """Decoder pre-hook: replace the input embeddings at the placeholder positions of this call's window."""
        state = self._state()
        if state is None:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        offset = _cache_length(_cache_of(kwargs), 0)
        shape = (embeds if embeds is not None else input_ids).shape
        win = state.window(shape[0], shape[1], offset)
        if win is None:
            return None
        n, mask, values = win
        if input_ids is not None:
            self._check_ids(state, input_ids[:, :n], mask)
            if embeds is None:
                embeds = module.get_input_embeddings()(input_ids)
        head = torch.where(mask.unsqueeze(-1).to(embeds.device), values.to(embeds), embeds[:, :n])  # (B', n, H)
        kwargs["inputs_embeds"] = head if n == embeds.shape[1] else torch.cat([head, embeds[:, n:]], dim=1)
        kwargs["input_ids"] = None
        if args:
            args = (None, *args[1:])
        return args, kwargs

    @staticmethod
    def _check_ids(state: InjectionState, ids: Tensor, mask: Tensor) -> None:
        hit = torch.zeros_like(ids, dtype=torch.bool)
        for token_id in state.token_ids:
            hit |= ids == token_id
        if not torch.equal(hit, mask.to(hit.device)):
            raise ValueError("XRec injection: the placeholder positions of this forward call differ from the "
                             "input_ids given to inject(); pass the same (padded) prompt ids to both")

    def _make_attention_hook(self, layer_idx: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            """self_attn pre-hook: attention input += vector at the placeholder positions (q/k/v all see it)."""
            state = self._state()
            if state is None:
                return None
            positional = "hidden_states" not in kwargs
            hidden = args[0] if positional else kwargs["hidden_states"]  # (B', T', H)
            past = _cache_of(kwargs)
            win = state.window(hidden.shape[0], hidden.shape[1], _cache_length(past, layer_idx))
            if win is None:
                return None
            n, _, values = win
            values = values.to(hidden)  # zero away from placeholders: adding it leaves those positions bit-identical
            out = hidden + values if n == hidden.shape[1] else torch.cat([hidden[:, :n] + values, hidden[:, n:]], dim=1)
            if positional:
                return (out, *args[1:]), kwargs
            kwargs["hidden_states"] = out
            return args, kwargs

        return hook


def current_injection() -> InjectionState | None:
    """The innermost open injection state (any model's), or None outside every ``inject()`` block."""
    return _ACTIVE.get()
