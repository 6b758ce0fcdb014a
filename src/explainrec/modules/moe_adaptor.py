"""The collaborative adaptor: a dense mixture of "parametric whitening" experts with a noisy softmax gate (XRec's;
MMP-Refer's graph projector builds on it).

It bridges LightGCN's behaviour space (64 dims) and the LLM's token space (hidden size). For an input x (B, in):

    expert_e(x) = W_e (dropout(x) - b_e)                  parametric whitening layer (UniSRec), W_e: in -> out
    logits      = x G  (+ eps * (softplus(x G_noise) + 1e-2) in training only, eps ~ N(0, 1))
    gate        = softmax(logits) over the E experts      dense: every expert contributes, no top-k
    output      = sum_e gate_e * expert_e(x)              (B, out)

The experts are stored stacked -- biases ``(E, in)``, weights ``(E, in, out)`` -- and applied with one einsum, so
the cost does not grow with a Python loop over experts. Each expert draws its own dropout mask, as separate
modules would. Initialisation follows XRec's release: expert weights N(0, 0.02^2), biases and both gate matrices
zero (uniform gate at start, noise scale softplus(0) + 0.01).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MoEAdaptor(nn.Module):
    """Dense MoE of parametric-whitening experts, ``(..., in_dim) -> (..., out_dim)``.

    Args:
        in_dim: width of the collaborative embedding (64 for XRec's LightGCN).
        out_dim: the LLM hidden size.
        n_experts: E (XRec: 8).
        dropout: dropout on the input of every expert (XRec: 0.2).
        noisy_gating: add learned, input-dependent Gaussian noise to the gate logits while training.
        noise_epsilon: floor of the noise std (XRec: 0.01).
        init_std: std of the expert weights at initialisation (XRec: 0.02).
    """

    def __init__(self, in_dim: int, out_dim: int, n_experts: int = 8, dropout: float = 0.2, noisy_gating: bool = True,
                 *, noise_epsilon: float = 1e-2, init_std: float = 0.02) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or n_experts < 1:
            raise ValueError(f"need in_dim, out_dim, n_experts >= 1; got {in_dim=}, {out_dim=}, {n_experts=}")
        self.in_dim, self.out_dim, self.n_experts = in_dim, out_dim, n_experts
        self.noisy_gating, self.noise_epsilon = noisy_gating, noise_epsilon
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(n_experts, in_dim))  # (E, in): the learned "mean" each expert removes
        self.weight = nn.Parameter(torch.empty(n_experts, in_dim, out_dim))  # (E, in, out)
        nn.init.normal_(self.weight, std=init_std)
        self.w_gate = nn.Parameter(torch.zeros(in_dim, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, n_experts))

    def gates(self, x: Tensor) -> Tensor:
        """Mixture weights ``(..., E)``: softmax of the (noisy, in training) gate logits."""
        logits = x @ self.w_gate
        if self.noisy_gating and self.training:
            std = F.softplus(x @ self.w_noise) + self.noise_epsilon
            logits = logits + torch.randn_like(logits) * std
        return logits.softmax(dim=-1)

    def experts(self, x: Tensor) -> Tensor:
        """Every expert's output ``(..., E, out)``; dropout masks differ per expert."""
        xe = x.unsqueeze(-2).expand(*x.shape[:-1], self.n_experts, self.in_dim)  # (..., E, in)
        return torch.einsum("...ei,eio->...eo", self.dropout(xe) - self.bias, self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MoEAdaptor expects inputs of width {self.in_dim}; got shape {tuple(x.shape)}")
        x = x.to(self.weight.dtype)
        return torch.einsum("...e,...eo->...o", self.gates(x), self.experts(x))

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, out_dim={self.out_dim}, n_experts={self.n_experts}, "
                f"dropout={self.dropout.p}, noisy_gating={self.noisy_gating}")
