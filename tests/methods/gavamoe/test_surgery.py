"""replace_mlps / moe_upcycle: which layers change, parameter counts, and that upcycled models keep the dense output."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from explainrec.llm.surgery import SurgeryReport, decoder_layers, replace_mlps
from explainrec.methods.gavamoe.surgery import moe_upcycle
from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE
from explainrec.methods.gavamoe.routing import routing

H, I, LAYERS = 64, 128, 2
DENSE_MLP = 3 * H * I


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Doubler(nn.Module):
    """A stand-in block with a known parameter count (one H x H matrix)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(H, H, bias=False)

    def forward(self, x):
        return self.proj(x)


def test_replace_mlps_reports_layers_and_parameter_counts(caplog):
    model = tiny_model()
    before = n_params(model)
    seen = []

    def factory(i, old):
        seen.append((i, type(old).__name__))
        return Doubler()

    with caplog.at_level(logging.INFO, logger="explainrec.llm.surgery"):
        report = replace_mlps(model, factory, layers=[-1])
    assert seen == [(1, "LlamaMLP")]
    assert isinstance(report, SurgeryReport)
    assert report.layers_changed == [1]
    assert (report.old_mlp, report.new_mlp) == ("LlamaMLP", "Doubler")
    assert report.mlp_params_before == DENSE_MLP and report.mlp_params_after == H * H
    assert report.params_before == before
    assert report.params_after == n_params(model) == before - DENSE_MLP + H * H
    assert isinstance(model.model.layers[1].mlp, Doubler) and not isinstance(model.model.layers[0].mlp, Doubler)
    assert "LlamaMLP -> Doubler in 1 layers" in caplog.text


def test_replace_mlps_rejects_bad_layers_and_models():
    with pytest.raises(IndexError):
        replace_mlps(tiny_model(), lambda i, old: Doubler(), layers=[LAYERS])
    with pytest.raises(TypeError, match="decoder layers"):
        replace_mlps(nn.Linear(2, 2), lambda i, old: Doubler())
    with pytest.raises(TypeError, match="nn.Module"):
        replace_mlps(tiny_model(), lambda i, old: None)


def test_decoder_layers_found_on_causal_lm_and_base_model():
    model = tiny_model()
    assert decoder_layers(model) is model.model.layers
    assert decoder_layers(model.model) is model.model.layers


def test_moe_upcycle_counts_and_settings():
    model = tiny_model()
    before = n_params(model)
    report = moe_upcycle(model, n_clusters=3, n_experts=8, top_k=2, granularity=4)  # 8 x 32 = 2x the dense FFN
    expert_size = I // 4
    moe_params = 8 * 3 * H * expert_size + 3 * 8 * H
    assert report.layers_changed == [0, 1]
    assert report.new_mlp == "MultiGatedMoE"
    assert report.mlp_params_before == LAYERS * DENSE_MLP
    assert report.mlp_params_after == LAYERS * moe_params
    assert report.params_after == n_params(model) == before + LAYERS * (moe_params - DENSE_MLP)
    assert report.details == {"gates": 3, "experts": 8, "top_k": 2, "expert_size": 32, "init": "upcycle", "router": "free"}
    moe = model.model.layers[0].mlp
    assert isinstance(moe, MultiGatedMoE) and moe.output_scale == 4.0
    assert "gates=3" in str(report) and "(0..1)" in str(report)


def test_moe_upcycle_argument_checks():
    with pytest.raises(ValueError, match="exactly one"):
        moe_upcycle(tiny_model(), 2, 4, 2)
    with pytest.raises(ValueError, match="exactly one"):
        moe_upcycle(tiny_model(), 2, 4, 2, expert_size=32, granularity=4)
    with pytest.raises(ValueError, match="divide"):
        moe_upcycle(tiny_model(), 2, 4, 2, granularity=3)
    with pytest.raises(ValueError, match="init"):
        moe_upcycle(tiny_model(), 2, 4, 2, granularity=4, init="zeros")


@pytest.mark.parametrize(
    "settings",
    [
        dict(n_experts=4, top_k=4, granularity=4, router_init_std=0.0),  # every partition active, uniform weights
        dict(n_experts=2, top_k=1, granularity=1),  # "w/o fine-grained experts": full FFN copies, any routing
    ],
)
def test_upcycled_model_keeps_the_dense_logits(settings):
    dense = tiny_model()
    ids = torch.tensor([[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]])
    with torch.no_grad():
        expected = dense(input_ids=ids).logits
    moe_upcycle(dense, n_clusters=2, **settings)
    with torch.no_grad(), routing([1, 0]):
        got = dense(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_random_init_and_shared_gate_ablation():
    model = tiny_model()
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    moe_upcycle(model, n_clusters=1, n_experts=2, top_k=1, granularity=1, init="random")
    with torch.no_grad():
        got = model(input_ids=ids).logits  # one shared gate: no routing context needed
    assert not torch.allclose(got, expected, atol=1e-3)


def test_moe_upcycle_on_chosen_layers_only_and_not_twice():
    model = tiny_model()
    report = moe_upcycle(model, n_clusters=2, n_experts=4, top_k=2, granularity=4, layers=[1])
    assert report.layers_changed == [1]
    assert not isinstance(model.model.layers[0].mlp, MultiGatedMoE)
    with pytest.raises(TypeError, match="dense LLaMA MLP"):
        moe_upcycle(model, n_clusters=2, n_experts=4, top_k=2, granularity=4)


def test_state_dict_round_trip_restores_upcycled_model_and_its_scale():
    trained = tiny_model(seed=0)
    moe_upcycle(trained, n_clusters=2, n_experts=8, top_k=2, granularity=4)  # output scale 4
    rebuilt = tiny_model(seed=1)
    moe_upcycle(rebuilt, n_clusters=2, n_experts=8, top_k=2, granularity=4, init="random")  # scale 1 until loaded
    state = trained.state_dict()
    assert not any("expert_usage" in key for key in state)  # run statistics stay out of checkpoints
    rebuilt.load_state_dict(state)
    assert float(rebuilt.model.layers[0].mlp.output_scale) == 4.0
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad(), routing([1]):
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, trained(input_ids=ids).logits)
