"""GaVaMoE stage-2 block: K cluster gates over shared fine-grained SwiGLU experts (paper sec. 3.3, eq. 9-11).

It replaces a LLaMA-family feed-forward block ``down(silu(gate(x)) * up(x))`` (``layers[i].mlp``):

* **Multi-gating** (eq. 9-10): one linear router per GMM cluster, ``hidden -> n_experts``, no bias, stored as one
  ``(K, E, H)`` tensor. Each sample uses the router of its own cluster, gathered per sample (no loop over samples);
  the cluster ids arrive through :func:`~explainrec.methods.gavamoe.routing.routing` because HF decoder layers call
  ``mlp(hidden_states)`` with no other argument.
* **Fine-grained experts** (sec. 3.3.2): each expert is a SwiGLU FFN ``down(silu(gate(x)) * up(x))`` -- SiLU on the
  gate only, as in LLaMA -- whose intermediate size is ``1/r`` of the dense one; weights are stacked ``(E, out, in)``
  under the names ``gate_proj/up_proj/down_proj`` so weight copying and PEFT ``target_parameters`` LoRA work.
* **Top-k** (eq. 11): softmax over all experts, keep the k largest, renormalise them to sum to one, multiply by
  ``output_scale``.

Upcycling (``init="upcycle"``): expert ``j`` takes dense intermediate neurons ``(j*I_e + arange(I_e)) mod I``. When
``n_experts * I_e == I`` the experts partition the FFN, and since ``down_proj`` sums over neurons, the sum of all
experts with weight 1 *is* the dense FFN. When ``n_experts * I_e > I`` the slices wrap around and every neuron is
shared by ``n_experts * I_e / I`` experts (rounded up or down). With renormalised top-k weights ``w`` (sum 1) the
output is ``scale * sum_top-k w_i E_i(x)``; under uniform routing its expectation is ``scale * (I_e / I) * dense``, so
the default ``output_scale = I / I_e = r`` keeps the dense FFN's magnitude from step one, reproduces the dense FFN
exactly when all experts are active with uniform weights (partition case), and is 1 for coarse (full-size) experts,
which then equal the dense FFN for any routing (sparse upcycling). ``init="random"`` (the reference release) draws
experts from N(0, 0.02) and uses ``output_scale = 1`` (eq. 11 as printed).

Defaults for SmolLM2-135M (hidden 576, intermediate 1536, 30 layers) and the paper's LLaMA-3.1-8B: see
:func:`explainrec.methods.gavamoe.surgery.moe_upcycle`.

Shape letters: B batch, T tokens, H hidden, K gates (clusters), E experts, I expert intermediate size,
N = B*T tokens, k experts per token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from explainrec.methods.gavamoe.routing import RoutingState, current_routing

_DISPATCH_MODES = ("auto", "grouped", "loop", "dense")
# Off the CPU, at most this many tokens, "auto" runs every expert on every token ("dense"): a cached decoding step
# has one token per sample, and one large kernel beats a Python loop of small ones there. On the CPU grouped_mm is
# as fast or faster at every size (benchmarks/bench_gavamoe_step.py --dispatch): it reads only the experts chosen,
# which at batch 1 halves the weights a decoding step reads.
DENSE_DISPATCH_MAX_TOKENS = 64
# int8 experts (after ``quantize_int8``): at most this many tokens, "auto" runs all experts in two int8 matmuls
# (2x the arithmetic of top-4 of 8, but 2 kernel calls instead of 2 per expert); above, one int8 matmul pair per
# expert on its routed tokens. Measured on SmolLM2's 8 x 384 experts, one thread (benchmarks/bench_generation.py).
INT8_DENSE_MAX_TOKENS = 32


def upcycle_slices(dense_size: int, n_experts: int, expert_size: int) -> torch.Tensor:
    """``(E, I_e)`` dense-neuron indices of each expert: contiguous slices taken cyclically, ``(j*I_e + i) mod I``.

    Deterministic so that a run can be rebuilt; cyclic rather than random so that the partition case
    (``E * I_e == I``) is the plain split, and every neuron is reused as evenly as possible when ``E * I_e > I``.
    """
    if min(dense_size, n_experts, expert_size) < 1:
        raise ValueError(f"sizes must be positive: dense {dense_size}, experts {n_experts}, expert size {expert_size}")
    starts = torch.arange(n_experts).unsqueeze(1) * expert_size  # (E, 1)
    return (starts + torch.arange(expert_size)) % dense_size  # (E, I_e)


def router_aux_losses(
    logits: torch.Tensor, probs: torch.Tensor, topk_idx: torch.Tensor, keep: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Named auxiliary router losses over the (unmasked) tokens of one layer.

    * ``load_balance`` -- Switch Transformer eq. 4 (Fedus et al. 2022): ``E * sum_e f_e * P_e`` with ``f_e`` the
      fraction of the ``N*k`` (token, expert) assignments sent to expert ``e`` (not differentiable) and ``P_e`` the
      mean router probability of ``e``; equals 1 under perfectly uniform routing. Computed over all tokens of the
      layer whatever their gate, so clusters may specialise on different experts while every expert stays in use.
    * ``router_z`` -- ST-MoE eq. 5 (Zoph et al. 2022): mean squared ``logsumexp`` of the router logits, which keeps
      logits small and the softmax numerically stable.

    Args:
        logits: ``(N, E)`` router logits; probs: ``(N, E)`` softmax of them; topk_idx: ``(N, k)`` chosen experts;
        keep: optional ``(N,)`` bool, False for padding tokens.
    """
    n_experts = logits.shape[-1]
    if keep is not None:
        logits, probs, topk_idx = logits[keep], probs[keep], topk_idx[keep]
    n_tokens = max(logits.shape[0], 1)
    counts = torch.bincount(topk_idx.reshape(-1), minlength=n_experts).to(probs.dtype)  # (E,)
    frac_assigned = counts / (n_tokens * topk_idx.shape[-1])
    mean_prob = probs.sum(0) / n_tokens  # (E,)
    load_balance = n_experts * (frac_assigned * mean_prob).sum()
    router_z = torch.logsumexp(logits, dim=-1).square().sum() / n_tokens
    return {"load_balance": load_balance, "router_z": router_z}


class MultiGateRouter(nn.Module):
    """K linear routers ``hidden -> n_experts`` without bias; sample ``b`` uses router ``cluster_ids[b]`` (eq. 10).

    A module of its own so that PEFT can keep it trainable (``modules_to_save=["router"]``).
    """

    def __init__(self, n_gates: int, n_experts: int, hidden_size: int, init_std: float = 0.02, paired: bool = False):
        super().__init__()
        if paired and n_experts % 2:
            raise ValueError(f"a paired router needs an even number of experts; got {n_experts}")
        self.n_experts, self.paired = n_experts, paired
        # paired: only experts 0..E/2-1 have rows; expert j + E/2 scores -logit_j, so top-E/2 takes one of each pair
        self.weight = nn.Parameter(torch.empty(n_gates, n_experts // 2 if paired else n_experts, hidden_size))
        # std 0.02 (LLaMA's initializer_range): small logits, so routing starts near uniform, yet ties in top-k
        # are broken per token instead of sending every token to experts 0..k-1 as an all-zero router would.
        if init_std > 0:
            nn.init.normal_(self.weight, std=init_std)
        else:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor, gate_ids: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, H)``, gate_ids ``(B,)`` -> logits ``(B, T, E)``."""
        n_gates, n_rows, hidden = self.weight.shape
        # all K gates in one matmul, then each sample keeps its own: cheaper than gathering (B, E, H) router copies
        logits = (x @ self.weight.view(n_gates * n_rows, hidden).t()).unflatten(-1, (n_gates, n_rows))  # (B, T, K, R)
        pick = gate_ids.view(-1, 1, 1, 1).expand(-1, x.shape[1], 1, n_rows)  # (B, T, 1, R)
        logits = logits.gather(2, pick).squeeze(2)  # (B, T, R)
        return torch.cat([logits, -logits], dim=-1) if self.paired else logits  # (B, T, E)


class StackedSwiGLUExperts(nn.Module):
    """E SwiGLU FFNs ``down(act(gate(x)) * up(x))`` with weights stacked ``(E, out_features, in_features)``.

    Stacking lets one grouped matmul (or one matmul per expert) serve every token routed to that expert; the
    ``(E, out, in)`` order is what PEFT's ``target_parameters`` LoRA expects for expert tensors.
    """

    def __init__(
        self,
        n_experts: int,
        hidden_size: int,
        expert_size: int,
        act_fn: nn.Module | None = None,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(n_experts, expert_size, hidden_size))
        self.up_proj = nn.Parameter(torch.empty(n_experts, expert_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(n_experts, hidden_size, expert_size))
        self.act_fn = act_fn if act_fn is not None else nn.SiLU()
        for weight in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(weight, std=init_std)

    @property
    def n_experts(self) -> int:
        return self._n_experts if self.int8 else self.gate_proj.shape[0]

    @property
    def int8(self) -> bool:
        """True after :meth:`quantize_int8`: the float weights are gone and every dispatch runs int8 matmuls."""
        return "gate_up_int8" in self._buffers

    @torch.no_grad()
    def quantize_int8(self) -> None:
        """Replace the float expert weights by int8 ones for CPU inference (called by
        :func:`explainrec.llm.quantize.quantize_for_cpu`); irreversible, and nothing trains afterwards.

        Layout, chosen so both int8 dispatches read the same tensors: ``gate_up_int8 (E*2I, H)`` holds expert e's
        gate rows then its up rows at ``[e*2I, (e+1)*2I)`` (one matmul gives both), one scale per row;
        ``down_int8 (H, E*I)`` holds expert e's down weight in columns ``[e*I, (e+1)*I)`` with one scale per output
        row shared by all experts, so the dense dispatch is a single matmul over the concatenated hidden states
        (upcycled experts are column slices of one dense down matrix, so a shared row scale costs no precision).
        """
        if self.int8:
            return
        from explainrec.llm.quantize import quantize_weight

        n_experts, expert_size, hidden = self.gate_proj.shape
        gate_up = torch.cat([self.gate_proj, self.up_proj], dim=1).reshape(n_experts * 2 * expert_size, hidden)
        down = self.down_proj.permute(1, 0, 2).reshape(hidden, n_experts * expert_size)  # (H, E*I)
        gu_q, gu_s = quantize_weight(gate_up)
        down_q, down_s = quantize_weight(down)
        for name in ("gate_proj", "up_proj", "down_proj"):
            delattr(self, name)
        self._n_experts, self._expert_size = n_experts, expert_size
        self.register_buffer("gate_up_int8", gu_q)
        self.register_buffer("gate_up_scale", gu_s)
        self.register_buffer("down_int8", down_q)
        self.register_buffer("down_scale", down_s)

    def forward(
        self, x: torch.Tensor, topk_idx: torch.Tensor, weights: torch.Tensor, dispatch: str = "auto"
    ) -> torch.Tensor:
        """Weighted sum of the chosen experts for every token.

        Args:
            x: ``(N, H)`` tokens. topk_idx: ``(N, k)`` expert of each assignment. weights: ``(N, k)`` its weight.
            dispatch: ``grouped`` (``torch.nn.functional.grouped_mm``, fastest on CPU), ``loop`` (one matmul per
                expert, any device and torch version), ``dense`` (all experts, weighted; for a few tokens) or
                ``auto`` (grouped on CPU when available; elsewhere dense up to ``DENSE_DISPATCH_MAX_TOKENS`` tokens,
                else loop).

        Returns:
            ``(N, H)``.
        """
        if self.int8:
            return self._int8(x, topk_idx, weights, dispatch)
        if dispatch == "auto":
            if x.device.type == "cpu" and hasattr(F, "grouped_mm"):
                dispatch = "grouped"
            else:
                dispatch = "dense" if x.shape[0] <= DENSE_DISPATCH_MAX_TOKENS else "loop"
        if dispatch == "dense":
            return self._dense(x, topk_idx, weights)
        k = topk_idx.shape[1]
        flat = topk_idx.reshape(-1)  # (N*k,)
        order = flat.argsort(stable=True)  # assignments grouped by expert
        token_of = order // k  # (N*k,) source token of each sorted assignment
        counts = torch.bincount(flat, minlength=self.n_experts)  # (E,)
        xs = x[token_of]  # (N*k, H)
        if dispatch == "grouped":
            offs = counts.cumsum(0).to(torch.int32)
            hidden = self.act_fn(F.grouped_mm(xs, self.gate_proj.transpose(1, 2), offs=offs))
            hidden = hidden * F.grouped_mm(xs, self.up_proj.transpose(1, 2), offs=offs)  # (N*k, I)
            ys = F.grouped_mm(hidden, self.down_proj.transpose(1, 2), offs=offs)  # (N*k, H)
        elif dispatch == "loop":
            gate_w, up_w, down_w = self.gate_proj, self.up_proj, self.down_proj  # read once (PEFT may parametrize)
            outs = []
            for e, chunk in enumerate(xs.split(counts.tolist())):
                if chunk.shape[0]:
                    outs.append(F.linear(self.act_fn(F.linear(chunk, gate_w[e])) * F.linear(chunk, up_w[e]), down_w[e]))
            ys = torch.cat(outs) if outs else xs[:0]
        else:
            raise ValueError(f"dispatch must be one of {_DISPATCH_MODES}; got {dispatch!r}")
        ys = ys * weights.reshape(-1)[order].unsqueeze(1).to(ys.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, ys)


    def _int8(self, x: torch.Tensor, topk_idx: torch.Tensor, weights: torch.Tensor, dispatch: str) -> torch.Tensor:
        """The int8 dispatches: ``dense`` (all experts, two matmuls; decoding steps) or ``grouped`` (two matmuls per
        expert on its routed tokens; prefill). ``loop`` means grouped here; ``auto`` picks by token count."""
        from explainrec.llm.quantize import int8_matmul, quantize_rows

        if dispatch not in _DISPATCH_MODES:
            raise ValueError(f"dispatch must be one of {_DISPATCH_MODES}; got {dispatch!r}")
        if dispatch == "auto":
            dispatch = "dense" if x.shape[0] <= INT8_DENSE_MAX_TOKENS else "grouped"
        n_tokens, n_experts, size = x.shape[0], self._n_experts, self._expert_size
        xq, xs = quantize_rows(x)  # each token quantised once, whatever number of experts it visits
        if dispatch == "dense":
            gate_up = int8_matmul(xq, xs, self.gate_up_int8, self.gate_up_scale).view(n_tokens, n_experts, 2 * size)
            w = torch.zeros(n_tokens, n_experts, dtype=torch.float32, device=x.device)
            w.scatter_(1, topk_idx, weights.float())
            hidden = self.act_fn(gate_up[..., :size]) * gate_up[..., size:] * w.unsqueeze(-1)  # (N, E, I), 0 if unused
            hq, hs = quantize_rows(hidden.view(n_tokens, n_experts * size))
            return int8_matmul(hq, hs, self.down_int8, self.down_scale).to(x.dtype)
        k = topk_idx.shape[1]
        flat = topk_idx.reshape(-1)
        order = flat.argsort(stable=True)  # assignments grouped by expert
        token_of = order // k
        counts = torch.bincount(flat, minlength=n_experts).tolist()
        xq, xs = xq[token_of], xs[token_of]  # (N*k, H), (N*k, 1)
        hidden = torch.empty(n_tokens * k, size, dtype=torch.float32, device=x.device)
        spans, lo = [], 0
        for e, n in enumerate(counts):
            if n:
                gate_up = int8_matmul(xq[lo: lo + n], xs[lo: lo + n], self.gate_up_int8[e * 2 * size: (e + 1) * 2 * size],
                                      self.gate_up_scale[e * 2 * size: (e + 1) * 2 * size])
                torch.mul(self.act_fn(gate_up[:, :size]), gate_up[:, size:], out=hidden[lo: lo + n])
                spans.append((e, lo, n))
            lo += n
        hq, hs = quantize_rows(hidden)
        ys = torch.empty(n_tokens * k, self.down_int8.shape[0], dtype=torch.float32, device=x.device)
        for e, lo, n in spans:
            ys[lo: lo + n] = int8_matmul(hq[lo: lo + n], hs[lo: lo + n], self.down_int8[:, e * size: (e + 1) * size],
                                         self.down_scale)
        ys.mul_(weights.reshape(-1)[order].unsqueeze(1).float())
        return torch.zeros(n_tokens, ys.shape[1], dtype=torch.float32, device=x.device).index_add_(0, token_of, ys).to(x.dtype)

    def _dense(self, x: torch.Tensor, topk_idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, then the top-k weights (zeros elsewhere): same result, fewer ops."""
        n, e, i = x.shape[0], self.n_experts, self.gate_proj.shape[1]
        w = torch.zeros(n, e, dtype=x.dtype, device=x.device).scatter_(1, topk_idx, weights.to(x.dtype))  # (N, E)
        gate = x @ self.gate_proj.reshape(e * i, -1).t()  # (N, E*I)
        up = x @ self.up_proj.reshape(e * i, -1).t()  # (N, E*I)
        hidden = (self.act_fn(gate) * up).view(n, e, i) * w.unsqueeze(-1)  # (N, E, I)
        return torch.bmm(hidden.transpose(0, 1), self.down_proj.transpose(1, 2)).sum(0)  # (E, N, H) -> (N, H)


class MultiGatedMoE(nn.Module):
    """Drop-in replacement of a LLaMA MLP: K cluster gates over E shared fine-grained SwiGLU experts, top-k.

    Args:
        hidden_size: model width H.
        expert_size: intermediate size of one expert, ``dense_intermediate / r``.
        n_experts: number of experts E (``r * N`` for N coarse experts).
        top_k: experts per token k.
        n_gates: gates K, one per GMM cluster; 1 is the "w/o multi-gating" ablation and then needs no cluster ids.
        act_fn: activation on the gate projection (the dense MLP's ``act_fn``; SiLU by default).
        output_scale: multiplies the combined output; see the module docstring (``r`` for upcycled experts). Kept
            as a buffer in the state dict, so loading a checkpoint restores it.
        normalize_weights: renormalise the top-k probabilities to sum to one (eq. 11 followed by Mixtral's
            renormalisation); False keeps the raw softmax values.
        router_init_std: std of the normal router init; 0 gives all-zero routers (uniform softmax).
        expert_init_std: std of the normal expert init (overwritten by upcycling).
        paired_router: score expert ``j + E/2`` as ``-logit_j`` for good (rows stored for the first half only), so
            top-``E/2`` always takes exactly one expert of each pair. With doubly covered upcycled experts (the
            SmolLM2 default) every token then keeps the whole FFN and routing picks which copy of each neuron group
            it uses; the free mirrored init drifts, and a token that takes both copies of a pair loses another.
        dispatch: ``auto`` | ``grouped`` | ``loop`` | ``dense``, see :class:`StackedSwiGLUExperts`.

    Forward: ``(B, T, H) -> (B, T, H)``, inside ``routing(cluster_ids)`` whenever ``n_gates > 1``.
    ``expert_usage`` ``(K, E)`` counts the (non-padding) tokens each gate sent to each expert since the last
    :meth:`reset_usage`.
    """

    def __init__(
        self,
        hidden_size: int,
        expert_size: int,
        n_experts: int,
        top_k: int,
        n_gates: int = 1,
        *,
        act_fn: nn.Module | None = None,
        output_scale: float = 1.0,
        normalize_weights: bool = True,
        router_init_std: float = 0.02,
        expert_init_std: float = 0.02,
        paired_router: bool = False,
        dispatch: str = "auto",
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must lie in [1, n_experts={n_experts}]; got {top_k}")
        if n_gates < 1:
            raise ValueError(f"n_gates must be >= 1; got {n_gates}")
        if dispatch not in _DISPATCH_MODES:
            raise ValueError(f"dispatch must be one of {_DISPATCH_MODES}; got {dispatch!r}")
        self.hidden_size, self.expert_size = hidden_size, expert_size
        self.n_experts, self.top_k, self.n_gates = n_experts, top_k, n_gates
        self.normalize_weights, self.dispatch = normalize_weights, dispatch
        self.router = MultiGateRouter(n_gates, n_experts, hidden_size, init_std=router_init_std, paired=paired_router)
        self.experts = StackedSwiGLUExperts(n_experts, hidden_size, expert_size, act_fn, init_std=expert_init_std)
        # saved with the weights: a model rebuilt with init="random" and then loaded gets the trained scale back
        self.register_buffer("output_scale", torch.tensor(float(output_scale)))
        # run statistics, not model state: kept out of checkpoints
        self.register_buffer("expert_usage", torch.zeros(n_gates, n_experts, dtype=torch.long), persistent=False)

    @classmethod
    def from_dense(
        cls,
        mlp: nn.Module,
        n_experts: int,
        top_k: int,
        n_gates: int = 1,
        *,
        expert_size: int,
        init: str = "upcycle",
        output_scale: float | None = None,
        **kwargs,
    ) -> MultiGatedMoE:
        """Build the MoE for a dense LLaMA-style MLP (``gate_proj/up_proj/down_proj`` Linears, no bias), on its device
        and dtype. ``init="upcycle"`` copies neuron slices (:func:`upcycle_slices`); ``"random"`` keeps the random
        experts of the reference release. ``output_scale=None`` picks ``I / I_e`` for upcycling and 1 for random.
        """
        for name in ("gate_proj", "up_proj", "down_proj"):
            proj = getattr(mlp, name, None)
            if not isinstance(proj, nn.Linear):
                raise TypeError(f"{type(mlp).__name__} has no nn.Linear {name!r}; expected a LLaMA-style MLP")
            if proj.bias is not None:
                raise NotImplementedError("MLPs with biases (mlp_bias=True) are not supported")
        dense_size, hidden_size = mlp.gate_proj.weight.shape
        if init not in ("upcycle", "random"):
            raise ValueError(f"init must be 'upcycle' or 'random'; got {init!r}")
        if output_scale is None:
            output_scale = dense_size / expert_size if init == "upcycle" else 1.0
        ref = mlp.gate_proj.weight
        act_fn = getattr(mlp, "act_fn", None)
        with torch.device(ref.device):
            moe = cls(
                hidden_size, expert_size, n_experts, top_k, n_gates, act_fn=act_fn, output_scale=output_scale, **kwargs
            )
        moe.to(dtype=ref.dtype)
        if init == "upcycle":
            idx = upcycle_slices(dense_size, n_experts, expert_size).to(ref.device)  # (E, I_e)
            with torch.no_grad():
                moe.experts.gate_proj.copy_(mlp.gate_proj.weight[idx])  # (E, I_e, H)
                moe.experts.up_proj.copy_(mlp.up_proj.weight[idx])  # (E, I_e, H)
                moe.experts.down_proj.copy_(mlp.down_proj.weight[:, idx].permute(1, 0, 2))  # (H, E, I_e) -> (E, H, I_e)
                if n_experts * expert_size == 2 * dense_size and 2 * top_k == n_experts and not moe.router.paired:
                    # Every neuron sits in two experts, j and j + E/2 (identical at init). Mirrored router rows
                    # (w_{j+E/2} = -w_j) make top-k pick exactly one expert of each pair for every token, with
                    # near-uniform weights at the small init: the MoE starts as the dense FFN, not a random half
                    # of its neurons counted twice (SmolLM2 explanation NLL at init 3.74 instead of 7.3).
                    half = n_experts // 2
                    moe.router.weight[:, half:].copy_(-moe.router.weight[:, :half])
        return moe

    def extra_repr(self) -> str:
        return (
            f"gates={self.n_gates}, experts={self.n_experts}, top_k={self.top_k}, hidden={self.hidden_size}, "
            f"expert_size={self.expert_size}, output_scale={float(self.output_scale):g}, "
            f"normalize={self.normalize_weights}"
        )

    def reset_usage(self) -> None:
        self.expert_usage.zero_()

    def _gate_ids(self, state: RoutingState | None, batch_size: int, device: torch.device) -> torch.Tensor:
        if self.n_gates == 1:  # "w/o multi-gating": one shared router, cluster ids (if any) are ignored
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        if state is None:
            raise RuntimeError(
                f"MultiGatedMoE has {self.n_gates} cluster gates but no cluster ids are set: run the model inside "
                "`with routing(cluster_ids): ...` (explainrec.methods.gavamoe.routing); with gradient "
                "checkpointing, call backward() inside that block too"
            )
        return state.ids_for(batch_size, self.n_gates, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, H)`` -> ``(B, T, H)``; records usage and, when the routing context asks, aux losses."""
        batch, seq, hidden = x.shape
        state = current_routing()
        gate_ids = self._gate_ids(state, batch, x.device)  # (B,)

        logits = self.router(x, gate_ids).reshape(batch * seq, self.n_experts)  # (N, E)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # eq. 10, float32 for a stable softmax
        top_w, top_idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.normalize_weights:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        out = self.experts(
            x.reshape(batch * seq, hidden), top_idx, (top_w * self.output_scale).to(x.dtype), self.dispatch
        )  # eq. 11, (N, H)

        keep = state.mask_for(batch, seq, x.device) if state is not None else None  # (N,) or None
        # one accumulating scatter (padding adds 0): a decoding step runs this in every layer, so it stays one op
        top_idx_3d = top_idx.detach().view(batch, seq, self.top_k)
        ones = keep.view(batch, seq, 1).long() if keep is not None else top_idx.new_ones(())
        self.expert_usage.index_put_((gate_ids.view(batch, 1, 1), top_idx_3d), ones, accumulate=True)
        if state is not None and state.collect_aux:
            state.aux.append(router_aux_losses(logits.float(), probs, top_idx, keep))
        if state is not None and state.track_samples:
            state.add_sample_usage(top_idx_3d, self.n_experts, keep)
        return out.view(batch, seq, hidden)


def collect_expert_usage(model: nn.Module, reset: bool = False) -> dict[str, torch.Tensor]:
    """``{module name: (K, E) usage counts}`` for every :class:`MultiGatedMoE` in ``model``; optionally reset them."""
    usage = {}
    for name, module in model.named_modules():
        if isinstance(module, MultiGatedMoE):
            usage[name] = module.expert_usage.clone()
            if reset:
                module.reset_usage()
    return usage
