"""MoEAdaptor: shapes, equality with a per-expert loop, gate noise only while training."""
from __future__ import annotations

import pytest
import torch

from explainrec.modules.moe_adaptor import MoEAdaptor


def make(seed: int = 0, **kwargs) -> MoEAdaptor:
    torch.manual_seed(seed)
    ad = MoEAdaptor(6, 10, **{"n_experts": 4, **kwargs})
    with torch.no_grad():  # non-trivial gates and biases (both start at zero)
        ad.w_gate.normal_(0, 1.0)
        ad.w_noise.normal_(0, 1.0)
        ad.bias.normal_(0, 0.5)
    return ad


def test_shapes_and_leading_dims():
    ad = make().eval()
    assert ad(torch.randn(3, 6)).shape == (3, 10)
    assert ad(torch.randn(2, 5, 6)).shape == (2, 5, 10)
    with pytest.raises(ValueError, match="width 6"):
        ad(torch.randn(3, 7))


def test_matches_per_expert_loop():
    ad = make().eval()
    x = torch.randn(5, 6)
    gates = torch.softmax(x @ ad.w_gate, dim=-1)  # (B, E)
    want = sum(gates[:, e: e + 1] * ((x - ad.bias[e]) @ ad.weight[e]) for e in range(ad.n_experts))
    assert torch.allclose(ad(x), want, atol=1e-6)
    assert torch.allclose(ad.gates(x).sum(-1), torch.ones(5))


def test_initial_gate_is_uniform():
    ad = MoEAdaptor(6, 10, n_experts=4).eval()
    assert torch.allclose(ad.gates(torch.randn(3, 6)), torch.full((3, 4), 0.25))


def test_noise_only_in_training():
    ad = make(dropout=0.0)
    x = torch.randn(4, 6)
    ad.eval()
    assert torch.equal(ad.gates(x), ad.gates(x))
    assert torch.equal(ad(x), ad(x))
    ad.train()
    g1, g2 = ad.gates(x), ad.gates(x)
    assert not torch.allclose(g1, g2)  # noisy gating draws fresh noise
    quiet = make(dropout=0.0, noisy_gating=False).train()
    assert torch.equal(quiet(x), quiet.eval()(x))  # no noise, no dropout: training == eval


def test_noise_scale_is_learned_and_dropout_differs_per_expert():
    ad = make(dropout=0.5).train()
    ad(torch.randn(8, 6)).pow(2).sum().backward()
    assert ad.w_noise.grad is not None and ad.w_noise.grad.abs().sum() > 0
    with torch.no_grad():  # identity experts without bias: expert outputs show each expert's dropout mask
        ad.weight.copy_(torch.eye(6, 10).expand(ad.n_experts, 6, 10))
        ad.bias.zero_()
    kept = ad.experts(torch.ones(1, 6))[0, :, :6] != 0  # (E, 6)
    assert not all(torch.equal(kept[0], kept[e]) for e in range(1, ad.n_experts))
