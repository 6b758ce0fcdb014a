"""Int8 weights for CPU generation: dynamic int8 quantisation of every projection and of the output head.

Why: on a CPU, generating with a float32 SmolLM2 is compute-bound (~45 GFLOP per explanation) and runs near the
float32 roofline, so the only way to explain faster is to do less float32 work. Integer matmuls (``torch._int_mm``,
int8 x int8 -> int32, VNNI on x86) run ~6-8x faster than float32 ones at the shapes of SmolLM2-135M.

Scheme (dynamic, no calibration): weights int8, symmetric, one scale per output channel, quantised once here;
activations int8, symmetric, one scale per *token* (row), quantised at run time in every call. Per-token scales
keep a token with large activations from crushing the others (a per-tensor scale over a 3,000-token prefill does).

Outlier channels: SmolLM2's hidden states carry one or two "massive" channels (the same few channels on almost every
token, e.g. 507 or 247 of 576 in the middle layers, 8-20x the token's RMS), so a per-token scale spends most of the
int8 range on them. Given a calibration forward (:func:`outlier_channels`; :func:`~explainrec.methods.model_folder.
apply_precision` runs one short explanation), each Linear keeps its ``OUTLIER_CHANNELS`` input channels that most
often hold a token's maximum in float (a small ``(M, c) @ (c, N)`` matmul beside the int8 one); the int8 scale then
follows the other channels. On amazon Base (48 valid pairs) this cut int8's excess reference NLL by more than half
(docs/results.md has the figures).

Why not ``torch.ao.quantization.quantize_dynamic``: torch 2.13 deprecates ``torch.ao.quantization`` (its warning
points to torchao) and the quantized tensor types it builds on, and its activation scale is per tensor and 7-bit
(``reduce_range``): on 32 google test pairs it raised SmolLM2's reference NLL from 3.519 to 4.510 nats/token,
this scheme to 3.558, at the same end-to-end speed (0.32-0.36 vs 0.33-0.35 CPU s per explanation, batch 32).
torchao's int8 dynamic-activation path on CPU without ``torch.compile`` also ends in ``torch._int_mm``, so it would
add a dependency and a tensor subclass for no speed. ``torch._int_mm`` is a plain ATen op on dense int8 tensors.

    report = quantize_for_cpu(model, "int8")   # in place, after every resize / surgery / weight load
    print(report)

What changes: every ``nn.Linear`` inside the decoder layers (attention q/k/v/o, dense MLP gate/up/down) becomes
:class:`Int8Linear`; the output head becomes an :class:`Int8Linear` on a quantised *copy* of its weight, so a head
tied to the input embedding leaves the embedding float (soft tokens and ``inputs_embeds`` keep working); any
module with a ``quantize_int8()`` method (GaVaMoE's stacked experts) quantises itself. Hooks on the attention
modules (XRec's injection adds to the attention *input*) are untouched. PEFT LoRA layers are merged first.
The result is for inference only: int8 weights have no gradients.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

PRECISIONS = ("fp32", "int8")
OUTLIER_CHANNELS = 4  # input channels per Linear kept in float (from a calibration forward)
_EPS = 1e-12


def quantize_weight(weight: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``weight`` with one scale per slice along every dim but ``dim`` (the reduced one).

    For an ``(out, in)`` Linear weight and ``dim=-1`` that is one scale per output channel: ``(out,)``.
    Returns ``(int8 weight, float32 scale)`` with ``weight ~= q * scale.unsqueeze(dim)``.
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=dim).clamp(min=_EPS) / 127.0
    q = torch.round(w / scale.unsqueeze(dim)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) symmetric int8 of a 2-D float tensor: ``(int8 (M, K), scale (M, 1) float32)``.

    abs/amax/div/round is the fastest eager sequence measured here (``vector_norm(inf)`` and ``aminmax`` are
    several times slower on this CPU).
    """
    x = x.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=_EPS).div_(127.0)
    return torch.div(x, scale).round_().to(torch.int8), scale


def int8_matmul(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """``(xq * x_scale) @ (wq * w_scale).T`` as float32: ``xq (M, K) int8``, ``x_scale (M, 1)``, ``wq (N, K) int8``,
    ``w_scale (N,)``. The int32 accumulation is exact; only the two roundings to int8 lose precision."""
    return torch._int_mm(xq, wq.t()).float().mul_(x_scale).mul_(w_scale)


class SharedInput:
    """The last input quantised by any :class:`Int8Linear` of one model, so that siblings fed the *same* tensor
    (q/k/v, gate/up) quantise it once. Matched by identity (a weak reference) and in-place version, so a different
    or modified input is always quantised afresh; one slot per model, so at most one quantised input stays alive.
    The entry is a single tuple, replaced in one assignment, so concurrent callers never read a mixed entry.
    """

    def __init__(self) -> None:
        self._entry: tuple | None = None  # (weakref to x, x._version, key, (xq, x_scale))

    def get(self, x: torch.Tensor, key=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``key``: what else the quantised value depends on (the float outlier channels left out of it)."""
        entry = self._entry
        if entry is not None and entry[0]() is x and entry[1] == x._version and entry[2] == key:
            return entry[3]
        return None

    def put(self, x: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor], key=None) -> None:
        self._entry = (weakref.ref(x), x._version, key, value)

    def __deepcopy__(self, memo) -> SharedInput:  # weak references do not copy; a fresh, empty slot is right
        return SharedInput()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class Int8Linear(nn.Module):
    """A Linear with an int8 weight (per-output-channel scales) whose input is quantised per token at run time.

    Output dtype follows the input (float32 on CPU). Buffers, not parameters: nothing here trains.
    ``shared`` (a :class:`SharedInput`) lets siblings that read the same input skip its quantisation.
    """

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                 shared: SharedInput | None = None, outliers: torch.Tensor | None = None,
                 outlier_weight: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        # input channels computed in float: their indices (c,) and float weight columns (N, c)
        self.register_buffer("outliers", outliers)
        self.register_buffer("outlier_weight", outlier_weight)
        self._key = None if outliers is None else tuple(outliers.tolist())
        self.shared = shared

    @classmethod
    def from_linear(cls, linear: nn.Module, weight: torch.Tensor | None = None,
                    outliers: torch.Tensor | None = None) -> Int8Linear:
        """Quantise ``linear`` (or an explicit ``(out, in)`` ``weight``, e.g. a tied head's); ``outliers``: input
        channels kept in float (their weight columns are copied, the rest is int8 only)."""
        w = (linear.weight if weight is None else weight).detach().float()
        if outliers is not None and len(outliers):
            outliers = torch.as_tensor(outliers, dtype=torch.long).sort().values
            kept = w[:, outliers].clone()
            w = w.index_fill(1, outliers, 0.0)  # their part is computed in float: keep it out of the int8 scales
        else:
            outliers, kept = None, None
        q, scale = quantize_weight(w)
        return cls(q, scale, getattr(linear, "bias", None), outliers=outliers, outlier_weight=kept)

    def extra_repr(self) -> str:
        float_part = f", {len(self._key)} input channels float" if self._key else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int8{float_part}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        quantized = self.shared.get(x, self._key) if self.shared is not None else None
        if quantized is None:
            rows = x.reshape(-1, self.in_features)
            if self.outliers is not None:
                rows = rows.float().index_fill(1, self.outliers, 0.0)
            quantized = quantize_rows(rows)
            if self.shared is not None:
                self.shared.put(x, quantized, self._key)
        xq, xs = quantized
        y = int8_matmul(xq, xs, self.weight_int8, self.weight_scale)
        if self.outliers is not None:
            y.addmm_(x.reshape(-1, self.in_features).float()[:, self.outliers], self.outlier_weight.t())
        if self.bias is not None:
            y.add_(self.bias)
        return y.view(*lead, self.out_features).to(x.dtype)


@dataclass
class QuantReport:
    """What :func:`quantize_for_cpu` changed."""

    precision: str
    linears: list[str] = field(default_factory=list)
    head: str | None = None
    self_quantized: list[str] = field(default_factory=list)
    merged_lora: int = 0
    float_channels: int = 0  # input channels kept in float, summed over the quantised Linears
    bytes_before: int = 0
    bytes_after: int = 0

    def __str__(self) -> str:
        if self.precision == "fp32":
            return "precision fp32: model unchanged"
        return (
            f"precision {self.precision}: {len(self.linears)} linears, head {'int8' if self.head else 'float'}, "
            f"{len(self.self_quantized)} expert blocks"
            + (f", {self.merged_lora} LoRA layers merged" if self.merged_lora else "")
            + (f", {self.float_channels} outlier input channels float" if self.float_channels else "")
            + f"; weights {self.bytes_before / 2**20:.0f} MiB -> {self.bytes_after / 2**20:.0f} MiB"
        )


def _tensor_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _merge_lora(model: nn.Module) -> int:
    """Merge PEFT LoRA layers into their base layers and put the base layers in their place (inference only)."""
    merged = 0
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and callable(getattr(module, "merge", None)) and hasattr(module, "lora_A"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged


def _llm_of(model: nn.Module) -> nn.Module:
    """The causal LM inside a method wrapper (GaVaMoE / XRec keep it as ``.llm``), else ``model`` itself."""
    inner = getattr(model, "llm", None)
    return inner if isinstance(inner, nn.Module) else model


def outlier_channels(model: nn.Module, calibrate, k: int = OUTLIER_CHANNELS) -> dict[nn.Module, torch.Tensor]:
    """Per float Linear that :func:`quantize_for_cpu` would quantise: the ``k`` input channels that most often hold
    a token's largest ``|x|`` while ``calibrate()`` runs the model (e.g. one short explanation)."""
    from explainrec.llm.surgery import decoder_layers

    llm = _llm_of(model)
    targets = [m for layer in decoder_layers(llm) for m in layer.modules() if type(m) is nn.Linear]
    head = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    targets += [head] if type(head) is nn.Linear else []
    counts: dict[nn.Module, torch.Tensor] = {}

    def count(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        hits = torch.bincount(x.abs().argmax(1).cpu(), minlength=x.shape[-1])
        counts[module] = counts[module] + hits if module in counts else hits

    handles = [m.register_forward_pre_hook(count) for m in targets]
    try:
        with torch.no_grad():
            calibrate()
    finally:
        for h in handles:
            h.remove()
    return {m: c.topk(min(k, len(c))).indices for m, c in counts.items() if k > 0}


def quantize_for_cpu(model: nn.Module, precision: str = "int8", *, head: bool = True,
                     outliers: dict[nn.Module, torch.Tensor] | None = None) -> QuantReport:
    """Quantise ``model`` (a causal LM, or a GaVaMoE / XRec wrapper holding one as ``.llm``) in place.

    ``precision="fp32"`` changes nothing (so callers can pass their ``--precision`` flag straight through);
    ``"int8"``: see the module docstring. ``head=False`` keeps the output head float. ``outliers``: from
    :func:`outlier_channels`, the input channels each Linear keeps in float (none without it). Call it last, after
    placeholder tokens were added, surgery was done and weights were loaded; the model must be on the CPU.
    """
    outliers = outliers or {}
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    report = QuantReport(precision=precision)
    if precision == "fp32":
        return report
    from explainrec.llm.surgery import decoder_layers

    llm = _llm_of(model)
    devices = {p.device.type for p in llm.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"quantize_for_cpu needs a CPU model; this one is on {sorted(devices)}")
    report.bytes_before = _tensor_bytes(llm)
    report.merged_lora = _merge_lora(llm)
    layers = decoder_layers(llm)
    shared = SharedInput()
    for i, layer in enumerate(layers):
        for name, module in list(layer.named_modules()):
            if callable(getattr(module, "quantize_int8", None)) and not getattr(module, "int8", False):
                module.quantize_int8()
                report.self_quantized.append(f"layers.{i}.{name}")
        for name, module in list(layer.named_modules()):
            if type(module) is nn.Linear:
                parent_name, _, child = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                qlinear = Int8Linear.from_linear(module, outliers=outliers.get(module))
                qlinear.shared = shared
                report.float_channels += len(qlinear._key or ())
                setattr(parent, child, qlinear)
                report.linears.append(f"layers.{i}.{name}")
    out = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    if head and isinstance(out, nn.Linear):
        # a quantised copy: the (tied) input embedding keeps its float weight
        qhead = Int8Linear.from_linear(out, outliers=outliers.get(out))
        report.float_channels += len(qhead._key or ())
        llm.set_output_embeddings(qhead)
        report.head = "int8"
    report.bytes_after = _tensor_bytes(llm)
    return report
