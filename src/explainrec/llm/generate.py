"""The one batched generation path every method uses: left-padded batches through ``model.generate``.

Prompts are sorted by token length so each batch holds similar lengths (less padding), generated with the KV
cache, and returned in the caller's order. Left padding + the attention mask is enough for correctness:
``generate`` derives position ids from the mask (cumsum - 1), so a padded prompt sees the same positions as it
would alone, and batched greedy decoding equals one-by-one greedy decoding (tested).

Shared-prefix reuse: every prompt of a method starts with the same chat-template head and system prompt (58 of
~156 tokens for zero-shot on XRec's google data). Its KV cache is computed once per call (once per *prefix group*
when the prefix's states depend on the sample, e.g. GaVaMoE's per-cluster gates) and each batch starts from it.
A batch is laid out as ``[prefix, left padding, suffix]``: the mask is 0 on the padding, position ids come from
the mask's cumsum, so every suffix token sees exactly the positions and keys it sees in the plain layout, and
greedy outputs are token-identical (tested on the tiny model; on SmolLM2 see benchmarks/bench_generation.py).

Reserved KV cache: ``generate`` gets a ``DynamicCache`` whose layers write into buffers sized for the prompt plus
``max_new_tokens`` instead of concatenating at every step (:func:`_reserved_layer_class`); same values, no
per-step copy of the whole cache.
"""
from __future__ import annotations

import functools
import inspect
import sys
import time
from dataclasses import asdict, dataclass
from contextlib import nullcontext

import torch

from explainrec.llm.hooks import NO_HOOKS, GenerationHooks

# A shared prefix shorter than this is not worth a separate forward pass and a cache copy per batch.
MIN_PREFIX_TOKENS = 4


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


@functools.cache
def _reserved_layer_class():
    """A ``DynamicLayer`` that writes into a buffer reserved for the whole generation instead of concatenating.

    Why: HF's ``DynamicLayer`` grows by ``torch.cat`` at every decoding step, copying the whole KV cache of every
    layer into fresh memory (at batch 32, ~260 MB per step for SmolLM2); with int8 weights that copy and its
    page faults took over half of a generation's time on a loaded CPU. Here ``keys``/``values`` are views of the
    valid part of the buffer; a call that replaced them (beam reordering, cropping) is detected and re-seeds it.
    """
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self, reserve: int):
            super().__init__()
            self.reserve = reserve
            self._buffers = None  # (keys, values) (B, h, capacity, d)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.keys = self.values = None
            length = 0 if self.keys is None else self.keys.shape[-2]
            need = length + key_states.shape[-2]
            bufs = self._buffers
            backed = bufs is not None and self.keys is not None and self.keys._base is bufs[0]
            if not backed or need > bufs[0].shape[-2] or bufs[0].shape[0] != key_states.shape[0]:
                capacity = max(need, self.reserve)
                shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
                bufs = (key_states.new_empty(shape), value_states.new_empty(shape))
                if length:
                    bufs[0][..., :length, :].copy_(self.keys)
                    bufs[1][..., :length, :].copy_(self.values)
                self._buffers = bufs
            bufs[0][..., length:need, :].copy_(key_states)
            bufs[1][..., length:need, :].copy_(value_states)
            self.keys, self.values = bufs[0][..., :need, :], bufs[1][..., :need, :]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return 0 if self.keys is None else self.keys.shape[-2]

    return ReservedLayer


def _reserved_cache(model, reserve: int, states=None):
    """A ``DynamicCache`` whose layers reserve ``reserve`` positions (optionally pre-filled with per-layer
    ``(keys, values)``), or None where the model's cache layers are not plain dynamic ones (sliding windows...)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=model.config)
        if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        layer_class = _reserved_layer_class()
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    cache.layers = [layer_class(reserve) for _ in cache.layers]
    for layer, (k, v) in zip(cache.layers, states or ()):
        layer.update(k, v)
    return cache


def _cache_allowed(model, num_beams: int, model_kwargs: dict) -> bool:
    """Whether this call may hand ``generate`` its own cache (reserved, maybe prefilled with the prefix): beams and
    several sequences per prompt expand the batch inside ``generate``, a cache given by the caller is theirs, and
    ``generate`` refuses a cache next to a ``cache_implementation`` (static, offloaded...)."""
    if num_beams > 1 or model_kwargs.get("num_return_sequences", 1) > 1 or model_kwargs.get("use_cache") is False:
        return False
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None):
        return False
    return not any(k in model_kwargs for k in ("cache", "past_key_values", "cache_implementation"))


def _prefix_allowed(model, model_kwargs: dict) -> bool:
    """``no_repeat_ngram_size`` reads n-grams across the prompt, whose order the prefix layout changes (padding
    moves between prefix and suffix). Order-free processors (repetition penalty) are fine."""
    ngram = model_kwargs.get("no_repeat_ngram_size", getattr(model.generation_config, "no_repeat_ngram_size", 0))
    return not ngram


def _forward_params(model) -> set[str]:
    """Keyword names of the model's forward, looking through wrappers whose forward takes ``**kwargs`` (PEFT)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return set(inspect.signature(base.forward).parameters)


def _cache_arg(model) -> str:
    """The forward's name for the KV cache: ``cache`` since transformers 5.x renamed ``past_key_values``."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _placeholder_ids(tokenizer) -> set[int]:
    """Ids of the toolkit's soft-token placeholders where the tokenizer has them: their embeddings differ per
    sample, so a shared prefix must end before them."""
    from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN

    added = tokenizer.get_added_vocab()
    return {added[t] for t in (USER_TOKEN, ITEM_TOKEN) if t in added}


def _common_prefix_length(rows: list[list[int]], stop: set[int]) -> int:
    """Longest common prefix of ``rows``, cut before any ``stop`` id, leaving every row at least one token."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and first[n] not in stop and all(r[n] == first[n] for r in rows):
        n += 1
    return n


class _SharedPrefix:
    """The prompts' shared prefix and its KV cache per prefix group, computed on first use and kept for the call."""

    def __init__(self, model, ids: list[int], batch_context, device):
        self.model, self.ids, self.batch_context, self.device = model, ids, batch_context, device
        self.states: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # group -> per layer (1, h, P, d) K, V
        self.cache_arg = _cache_arg(model)
        self.logits_arg = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}

    @classmethod
    def build(cls, model, encoded: list[list[int]], stop: set[int], batch_context, device) -> _SharedPrefix | None:
        length = _common_prefix_length(encoded, stop)
        return cls(model, encoded[0][:length], batch_context, device) if length >= MIN_PREFIX_TOKENS else None

    def __len__(self) -> int:
        return len(self.ids)

    def shorten(self, length: int) -> None:
        """Cut the prefix (an ``embed_fn`` changed an embedding inside it); cached states are dropped. Too short
        a prefix becomes none (length 0: the plain layout)."""
        self.ids, self.states = self.ids[:length] if length >= MIN_PREFIX_TOKENS else [], {}

    def cache(self, groups: torch.Tensor, index: torch.Tensor, reserve: int):
        """A fresh ``DynamicCache`` holding the prefix states of each row's group (computing missing groups), with
        room for ``reserve`` positions."""
        from transformers import DynamicCache

        keys = groups.tolist()
        missing = sorted({g for g in keys if g not in self.states})
        if missing:
            first = [keys.index(g) for g in missing]
            self._run(missing, index[first])
        if len(set(keys)) == 1:
            layers = [(k.expand(len(keys), -1, -1, -1), v.expand(len(keys), -1, -1, -1)) for k, v in self.states[keys[0]]]
        else:
            per_layer = zip(*(self.states[g] for g in keys))
            layers = [(torch.cat([k for k, _ in kv]), torch.cat([v for _, v in kv])) for kv in per_layer]
        cache = _reserved_cache(self.model, reserve, layers)
        return cache if cache is not None else DynamicCache(layers, config=self.model.config)

    def _run(self, groups: list[int], index: torch.Tensor) -> None:
        ids = torch.tensor([self.ids] * len(groups), dtype=torch.long, device=self.device)
        context = self.batch_context(ids, index) if self.batch_context is not None else nullcontext()
        with context:
            out = self.model(input_ids=ids, use_cache=True, **self.logits_arg)
        past = getattr(out, "cache", None)
        if past is None:  # transformers before the rename
            past = out.past_key_values
        layers = [(layer.keys, layer.values) for layer in past.layers]
        for row, g in enumerate(groups):
            self.states[g] = [(k[row: row + 1], v[row: row + 1]) for k, v in layers]


def _batch_inputs(batch, index, encoded, pad_id, device, embed_fn, prefix, prefix_group, reserve):
    """``(input_ids, attention_mask, extra generate kwargs)`` of one batch, in the prefix layout when there is one.

    ``reserve`` is None (HF's own cache) or ``(model, cache argument name, new tokens)``: a cache that reserves the
    prompt plus the new tokens up front (:func:`_reserved_layer_class`).
    """
    while True:
        n = len(prefix) if prefix is not None else 0
        ids, mask = _left_pad([encoded[i][n:] for i in batch], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        if n:
            head = torch.tensor(prefix.ids, dtype=torch.long, device=device).expand(len(batch), n)
            ids, mask = torch.cat([head, ids], dim=1), torch.cat([torch.ones_like(head), mask], dim=1)
        extra = {}
        if embed_fn is not None:
            extra["inputs_embeds"] = embeds = embed_fn(ids, index)
            if n:
                plain = prefix.model.get_input_embeddings()(ids[:1, :n])
                same = (embeds[:, :n] == plain).all(dim=-1).all(dim=0)  # (n,) positions every row left alone
                if not bool(same.all()):
                    prefix.shorten(int((~same).int().argmax()))  # then lay the batch out again
                    continue
        if n:
            groups = prefix_group(index) if prefix_group is not None else torch.zeros_like(index)
            room = ids.shape[1] + (reserve[2] if reserve is not None else 0)
            extra[prefix.cache_arg] = prefix.cache(torch.as_tensor(groups).reshape(-1).long(), index, room)
        elif reserve is not None:
            model, cache_arg, new_tokens = reserve
            cache = _reserved_cache(model, ids.shape[1] + new_tokens)
            if cache is not None:
                extra[cache_arg] = cache
        return ids, mask, extra


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
    hooks: GenerationHooks = NO_HOOKS,
    **model_kwargs,
) -> list[str]:
    """Continue every prompt; return the generated texts (prompt, special tokens and outer whitespace stripped).

    Greedy by default. ``prompts`` are rendered strings (:func:`explainrec.data.prompts.render_prompt`), which
    already hold their BOS, hence ``add_special_tokens=False``. Sampling is seeded with ``seed`` inside a forked
    RNG, so the caller's global RNG is untouched. ``stats``, if given, is increased by this call's counts.

    ``hooks`` (:class:`GenerationHooks`): soft-token embeddings, a per-batch context, streamers and the
    shared-prefix reuse a method vouches for. Other ``model_kwargs`` go unchanged to every ``model.generate`` call.

    The shared prefix (module docstring) is not used with beam search, ``num_return_sequences``,
    ``no_repeat_ngram_size``, ``use_cache=False`` or a caller-given cache.
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
    from explainrec.llm.soft_tokens import never_generated

    never = [i for i in never_generated(tokenizer) if i not in eos_ids]
    if never:
        options["suppress_tokens"] = never
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
    embed_fn, batch_context, prefix_group = hooks.embed_fn, hooks.batch_context, hooks.prefix_group
    prefix_reuse = hooks.prefix_reuse
    if prefix_reuse is None:
        prefix_reuse = batch_context is None or prefix_group is not None
    prefix = reserve = None
    if _cache_allowed(model, num_beams, model_kwargs):
        reserve = (model, _cache_arg(model), max_new_tokens)
        if prefix_reuse and _prefix_allowed(model, model_kwargs):
            stop = set(hooks.prefix_stop_ids) | _placeholder_ids(tokenizer)
            prefix = _SharedPrefix.build(model, encoded, stop, hooks.prefix_context or batch_context, device)
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(seed)
            for lo in range(0, len(order), batch_size):
                batch = order[lo: lo + batch_size]
                index = torch.tensor(batch, device=device)
                ids, mask, extra = _batch_inputs(batch, index, encoded, pad_id, device, embed_fn, prefix, prefix_group,
                                                 reserve)
                streamer = hooks.streamer_for(index) if hooks.streamer_for is not None else None
                if streamer is not None:
                    extra["streamer"] = streamer
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
