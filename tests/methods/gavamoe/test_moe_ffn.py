"""MultiGatedMoE and the routing context: equations 9-11, per-sample gates, batching, caching, aux losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from explainrec.methods.gavamoe.surgery import moe_upcycle
from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE, collect_expert_usage, upcycle_slices
from explainrec.methods.gavamoe.routing import current_routing, routing

H, I = 64, 128


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=H, intermediate_size=I, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def dense_mlp(seed: int = 0) -> LlamaMLP:
    torch.manual_seed(seed)
    mlp = LlamaMLP(tiny_config())
    for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        torch.nn.init.normal_(lin.weight, std=0.2)  # large enough that SiLU is far from linear
    return mlp


def tiny_moe_model(n_clusters: int = 3, **kw) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).eval()
    settings = dict(n_experts=4, top_k=2, granularity=4) | kw
    moe_upcycle(model, n_clusters=n_clusters, **settings)
    return model


def naive_moe(moe: MultiGatedMoE, x: torch.Tensor, cluster_ids: torch.Tensor) -> torch.Tensor:
    """Token-by-token transcription of eq. 9-11 with LLaMA's SwiGLU (SiLU on the gate projection only)."""
    out = torch.zeros_like(x)
    ex = moe.experts
    for b in range(x.shape[0]):
        router = moe.router.weight[int(cluster_ids[b])]  # (E, H): the gate of this sample's cluster
        for t in range(x.shape[1]):
            probs = torch.softmax(router @ x[b, t], dim=-1)
            top_w, top_i = probs.topk(moe.top_k)
            top_w = top_w / top_w.sum()
            for w, e in zip(top_w, top_i):
                hidden = F.silu(ex.gate_proj[e] @ x[b, t]) * (ex.up_proj[e] @ x[b, t])
                out[b, t] += moe.output_scale * w * (ex.down_proj[e] @ hidden)
    return out


@pytest.mark.parametrize("dispatch", ["loop", "grouped", "dense"])
def test_all_active_partitioned_experts_equal_dense_ffn(dispatch):
    mlp = dense_mlp()
    moe = MultiGatedMoE.from_dense(mlp, n_experts=4, top_k=4, n_gates=3, expert_size=I // 4, router_init_std=0.0,
                                   dispatch=dispatch)
    assert moe.output_scale == 4.0  # I / I_e
    x = torch.randn(3, 5, H)
    with routing(torch.tensor([0, 2, 1])):
        got = moe(x)
    torch.testing.assert_close(got, mlp(x), atol=1e-5, rtol=1e-5)


def test_coarse_upcycled_experts_equal_dense_for_any_routing():
    mlp = dense_mlp()
    moe = MultiGatedMoE.from_dense(mlp, n_experts=2, top_k=1, n_gates=2, expert_size=I, router_init_std=1.0)
    x = torch.randn(2, 7, H)
    with routing([1, 0]):
        got = moe(x)
    assert moe.output_scale == 1.0
    torch.testing.assert_close(got, mlp(x), atol=1e-5, rtol=1e-5)


def test_doubly_covered_upcycling_starts_as_the_dense_ffn():
    """8 experts of I/4 neurons, top-4: each neuron is in experts j and j+4; the mirrored router picks one of each
    pair for every token, so the top-4 experts always cover the FFN once (the default SmolLM2 setting)."""
    mlp = dense_mlp()
    moe = MultiGatedMoE.from_dense(mlp, n_experts=8, top_k=4, n_gates=3, expert_size=I // 4)
    x = torch.randn(3, 5, H)
    with routing([0, 2, 1], track_samples=True) as ctx:
        got = moe(x)
    ids = torch.tensor([0, 2, 1]).repeat_interleave(5)
    logits = torch.einsum("nh,neh->ne", x.reshape(-1, H), moe.router.weight[ids])
    chosen = logits.topk(4, dim=-1).indices % 4  # expert j and j+4 hold the same neurons
    assert all(sorted(row.tolist()) == [0, 1, 2, 3] for row in chosen)
    # near-uniform weights at the small init: close to the dense FFN (exact in the limit of a zero router)
    assert (got - mlp(x)).norm() < 0.1 * mlp(x).norm()
    assert ctx.sample_usage.sum() == 3 * 5 * 4
    zero = MultiGatedMoE.from_dense(mlp, n_experts=8, top_k=4, n_gates=3, expert_size=I // 4, router_init_std=1.0)
    zero.router.weight.data[:, :4] = 1e-4 * torch.randn(3, 4, H)
    zero.router.weight.data[:, 4:] = -zero.router.weight.data[:, :4]
    with routing([0, 2, 1]):
        assert (zero(x) - mlp(x)).norm() < 1e-2 * mlp(x).norm()


def test_paired_router_keeps_one_expert_of_each_pair_after_training():
    """paired_router: rows only for experts 0..3, expert j+4 scores -logit_j; however far training moves the
    router, top-4 takes one copy of each neuron group (a free router drifts into taking both copies of a pair)."""
    mlp = dense_mlp()
    moe = MultiGatedMoE.from_dense(mlp, n_experts=8, top_k=4, n_gates=3, expert_size=I // 4, paired_router=True)
    assert tuple(moe.router.weight.shape) == (3, 4, H)
    x = torch.randn(3, 5, H)
    ids = torch.tensor([0, 2, 1])
    moe.router.weight.data = 1e-4 * torch.randn(3, 4, H)  # near-uniform weights: exactly dense in the limit
    with routing(ids):
        assert (moe(x) - mlp(x)).norm() < 1e-2 * mlp(x).norm()
    opt = torch.optim.Adam(moe.router.parameters(), lr=0.5)  # a big, noisy "training" of the routers
    for _ in range(3):
        with routing(ids):
            moe(torch.randn(3, 5, H)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    logits = moe.router(x, ids)  # (B, T, E)
    torch.testing.assert_close(logits[..., 4:], -logits[..., :4])
    chosen = logits.topk(4, dim=-1).indices % 4
    assert all(sorted(row.tolist()) == [0, 1, 2, 3] for row in chosen.reshape(-1, 4))
    with pytest.raises(ValueError, match="even number"):
        MultiGatedMoE(H, I // 4, 5, 2, 1, paired_router=True)


def test_upcycle_slices_partition_and_wrap():
    assert upcycle_slices(8, 2, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    wrapped = upcycle_slices(10, 3, 4)  # 12 > 10 neurons: the last expert wraps around to the start
    assert wrapped.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    with pytest.raises(ValueError):
        upcycle_slices(8, 0, 4)


def test_upcycled_expert_weights_are_the_dense_slices():
    mlp = dense_mlp()
    moe = MultiGatedMoE.from_dense(mlp, n_experts=3, top_k=2, expert_size=48)  # 144 > 128: wraps
    idx = upcycle_slices(I, 3, 48)
    for e in range(3):
        assert torch.equal(moe.experts.gate_proj[e], mlp.gate_proj.weight[idx[e]])
        assert torch.equal(moe.experts.up_proj[e], mlp.up_proj.weight[idx[e]])
        assert torch.equal(moe.experts.down_proj[e], mlp.down_proj.weight[:, idx[e]])
    random = MultiGatedMoE.from_dense(mlp, n_experts=3, top_k=2, expert_size=48, init="random")
    assert random.output_scale == 1.0
    assert not torch.equal(random.experts.gate_proj[0], mlp.gate_proj.weight[idx[0]])


def test_forward_matches_token_by_token_equations():
    torch.manual_seed(1)
    moe = MultiGatedMoE(H, 16, n_experts=6, top_k=2, n_gates=3, router_init_std=0.5, expert_init_std=0.3,
                        output_scale=1.7)
    x = torch.randn(3, 4, H)
    ids = torch.tensor([2, 0, 1])
    with routing(ids):
        got = moe(x)
    torch.testing.assert_close(got, naive_moe(moe, x, ids), atol=1e-5, rtol=1e-5)


def test_grouped_loop_and_dense_dispatch_agree_in_values_and_gradients():
    torch.manual_seed(2)
    moe = MultiGatedMoE(H, 16, n_experts=5, top_k=2, n_gates=2, router_init_std=0.3, expert_init_std=0.2)
    x = torch.randn(4, 6, H)
    results = []
    for mode in ("loop", "grouped", "dense"):
        moe.zero_grad()
        moe.dispatch = mode
        with routing([0, 1, 1, 0]):
            out = moe(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in moe.parameters()]))
    for other in results[1:]:
        torch.testing.assert_close(results[0][0], other[0], atol=1e-5, rtol=1e-4)
        for g_loop, g_other in zip(results[0][1], other[1]):
            torch.testing.assert_close(g_loop, g_other, atol=1e-5, rtol=1e-4)



@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="this torch has no grouped_mm")
def test_auto_dispatch_on_cpu_runs_decoding_steps_through_grouped_matmuls(monkeypatch):
    """A decoding step (one token per sample) must not run every expert: grouped_mm touches only the chosen ones."""
    torch.manual_seed(4)
    moe = MultiGatedMoE(H, 16, n_experts=8, top_k=2, n_gates=2, router_init_std=0.3, expert_init_std=0.2)
    x = torch.randn(3, 1, H)
    calls = []
    real = F.grouped_mm
    monkeypatch.setattr(F, "grouped_mm", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    with torch.no_grad(), routing([0, 1, 1]):
        auto = moe(x)
        moe.dispatch = "dense"
        dense = moe(x)
    assert len(calls) == 3  # gate, up and down projections, once each, for the auto call only
    torch.testing.assert_close(auto, dense, atol=1e-5, rtol=1e-4)

def test_each_sample_uses_its_own_gate():
    torch.manual_seed(3)
    moe = MultiGatedMoE(H, 16, n_experts=6, top_k=2, n_gates=3, router_init_std=0.5, expert_init_std=0.3)
    x = torch.randn(4, 5, H)
    ids = torch.tensor([0, 2, 1, 2])
    with routing(ids):
        mixed = moe(x)
    for b in range(4):
        with routing(ids[b : b + 1]):
            alone = moe(x[b : b + 1])
        torch.testing.assert_close(mixed[b : b + 1], alone, atol=1e-5, rtol=1e-5)
    changed = ids.clone()
    changed[1] = 0
    with routing(changed):
        other = moe(x)
    assert not torch.allclose(other[1], mixed[1])  # the gate matters ...
    keep = [0, 2, 3]
    torch.testing.assert_close(other[keep], mixed[keep])  # ... and only for its own sample


def test_top_k_is_respected_and_usage_is_counted_per_gate():
    torch.manual_seed(4)
    moe = MultiGatedMoE(H, 16, n_experts=6, top_k=2, n_gates=3, router_init_std=0.5, output_scale=3.0)
    seen = {}
    moe.experts.register_forward_hook(lambda mod, args, out: seen.update(idx=args[1], w=args[2]))
    x = torch.randn(2, 5, H)
    with routing([2, 0]):
        moe(x)
    idx, w = seen["idx"], seen["w"]
    assert idx.shape == (10, 2)
    assert all(len(set(row.tolist())) == 2 for row in idx)  # k distinct experts per token
    torch.testing.assert_close(w.sum(-1), torch.full((10,), 3.0))  # renormalised, times output_scale
    usage = moe.expert_usage
    assert usage.dtype == torch.long and usage.shape == (3, 6)
    assert usage[2].sum() == 5 * 2 and usage[0].sum() == 5 * 2 and usage[1].sum() == 0
    assert torch.equal(usage[2], torch.bincount(idx[:5].reshape(-1), minlength=6))
    with routing([2, 0], token_mask=torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])):
        moe(x)  # padding tokens are not counted
    assert usage[2].sum() == 10 + 3 * 2 and usage[0].sum() == 10 + 5 * 2
    moe.reset_usage()
    assert moe.expert_usage.sum() == 0


def test_per_sample_usage_is_tracked_and_beams_fold_back():
    torch.manual_seed(9)
    moe = MultiGatedMoE(H, 16, n_experts=6, top_k=2, n_gates=3, router_init_std=0.5)
    seen = []
    moe.experts.register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    x = torch.randn(2, 5, H)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    with routing([2, 0], token_mask=mask, track_samples=True) as ctx:
        moe(x)
        moe(x)
    idx = seen[0].view(2, 5, 2)
    expected = torch.stack([
        torch.bincount(idx[0, 1:].reshape(-1), minlength=6),
        torch.bincount(idx[1].reshape(-1), minlength=6),
    ])
    assert torch.equal(ctx.sample_usage, 2 * expected)  # two calls, padding skipped
    with routing([2, 0]) as ctx:
        moe(x)
    assert ctx.sample_usage is None  # not asked for
    beams = x.repeat_interleave(3, dim=0)  # (6, 5, H): 2 samples x 3 beams
    with routing([2, 0], track_samples=True) as ctx:
        moe(beams)
    idx = seen[-1].view(2, 3 * 5 * 2)
    assert torch.equal(ctx.sample_usage, torch.stack([torch.bincount(row, minlength=6) for row in idx]))


def test_missing_or_bad_cluster_ids_raise_clear_errors():
    moe = MultiGatedMoE(H, 16, n_experts=4, top_k=2, n_gates=3)
    x = torch.randn(2, 3, H)
    with pytest.raises(RuntimeError, match="routing"):
        moe(x)
    with routing([0, 3]), pytest.raises(ValueError, match=r"\[0, 2\]"):
        moe(x)
    with routing([0, 1, 2]), pytest.raises(ValueError, match="3 cluster ids"):
        moe(x)  # 2 rows are neither the 3 samples nor a repetition of them
    with pytest.raises(ValueError, match="1-D"):
        with routing(torch.zeros(2, 1, dtype=torch.long)):
            pass
    with pytest.raises(ValueError, match="top_k"):
        MultiGatedMoE(H, 16, n_experts=4, top_k=5)


def test_single_gate_needs_no_cluster_ids_and_ignores_them():
    torch.manual_seed(5)
    moe = MultiGatedMoE(H, 16, n_experts=4, top_k=2, n_gates=1)
    x = torch.randn(2, 3, H)
    plain = moe(x)
    with routing([0, 1]):
        torch.testing.assert_close(moe(x), plain)


def test_expanded_batch_repeats_cluster_ids_like_beam_search():
    torch.manual_seed(6)
    moe = MultiGatedMoE(H, 16, n_experts=4, top_k=2, n_gates=3, router_init_std=0.5)
    x = torch.randn(6, 1, H)  # 2 samples x 3 beams, one decoding step
    with routing([1, 2]):
        expanded = moe(x)
    with routing([1, 1, 1, 2, 2, 2]):
        explicit = moe(x)
    torch.testing.assert_close(expanded, explicit)


def test_aux_losses_are_named_finite_and_differentiable():
    torch.manual_seed(7)
    moe = MultiGatedMoE(H, 16, n_experts=4, top_k=2, n_gates=2, router_init_std=0.0)
    x = torch.randn(2, 5, H)
    with routing([0, 1], collect_aux=True) as ctx:
        moe(x)
        moe(x)
    parts = ctx.aux_parts()
    assert set(parts) == {"load_balance", "router_z"}
    # all-zero routers: uniform probabilities give a balance loss of exactly 1 and z-loss of log(E)^2
    torch.testing.assert_close(parts["load_balance"], torch.tensor(1.0))
    torch.testing.assert_close(parts["router_z"], torch.tensor(4.0).log().square())
    torch.nn.init.normal_(moe.router.weight, std=0.5)
    with routing([0, 1], collect_aux=True) as ctx:
        moe(x)
    total = sum(ctx.aux_parts().values())
    assert torch.isfinite(total)
    total.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    with routing([0, 1]) as ctx:  # not asked for: nothing collected
        moe(x)
    assert ctx.aux_parts() == {}


def test_routing_context_is_scoped():
    assert current_routing() is None
    with routing([1]) as outer:
        with routing([2]) as inner:
            assert current_routing() is inner
        assert current_routing() is outer
    assert current_routing() is None
    with pytest.raises(KeyError):
        with routing([0]):
            raise KeyError("boom")
    assert current_routing() is None


def test_lora_on_stacked_expert_weights():
    import peft
    torch.manual_seed(8)
    model = torch.nn.Sequential()
    model.add_module("mlp", MultiGatedMoE(H, 16, n_experts=4, top_k=2, n_gates=2, router_init_std=0.5))
    x = torch.randn(2, 3, H)
    with routing([0, 1]):
        before = model(x)
    config = peft.LoraConfig(r=2, target_modules=[], target_parameters=["experts.gate_proj", "experts.down_proj"],
                             modules_to_save=["router"])
    lora = peft.get_peft_model(model, config)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("router" in n for n in trainable)
    with routing([0, 1]):
        torch.testing.assert_close(lora(x), before)  # LoRA B starts at zero
        lora(x).sum().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_B" in n)


# --- through the full model ------------------------------------------------------------------------------------


def left_padded(seqs: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


SEQS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17, 18], [19, 20]]
CLUSTERS = torch.tensor([0, 2, 1, 2])


def test_model_padded_batch_equals_batch_of_one_and_shuffle_permutes():
    model = tiny_moe_model()
    ids, mask = left_padded(SEQS)
    with torch.no_grad(), routing(CLUSTERS, token_mask=mask):
        batch = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    for b, seq in enumerate(SEQS):
        with torch.no_grad(), routing(CLUSTERS[b : b + 1]):
            alone = model(input_ids=torch.tensor([seq])).logits[0]
        torch.testing.assert_close(batch[b, -len(seq) :], alone, atol=1e-5, rtol=1e-5)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad(), routing(CLUSTERS[perm]):
        shuffled = model(input_ids=ids[perm], attention_mask=mask[perm], position_ids=positions(mask)[perm]).logits
    torch.testing.assert_close(shuffled, batch[perm], atol=1e-5, rtol=1e-5)
    usage = collect_expert_usage(model, reset=True)
    assert len(usage) == 2 and all(u.shape == (3, 4) for u in usage.values())
    assert all(m.expert_usage.sum() == 0 for m in model.modules() if isinstance(m, MultiGatedMoE))


def test_cached_generation_equals_uncached_and_beams_expand_ids():
    model = tiny_moe_model()
    ids, mask = left_padded(SEQS)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad(), routing(CLUSTERS):
        cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **settings)
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    with torch.no_grad(), routing(CLUSTERS):
        beams = model.generate(input_ids=ids, attention_mask=mask, num_beams=2, num_return_sequences=2, **settings)
    assert beams.shape[0] == 2 * len(SEQS)
    for b in (1, 3):  # the beams of one sample do not depend on the rest of the batch
        one_ids, one_mask = left_padded([SEQS[b]])
        with torch.no_grad(), routing(CLUSTERS[b : b + 1]):
            alone = model.generate(input_ids=one_ids, attention_mask=one_mask, num_beams=2, num_return_sequences=2,
                                   **settings)
        assert torch.equal(beams[2 * b : 2 * b + 2, -6:], alone[:, -6:])


def test_model_without_routing_context_fails_clearly():
    model = tiny_moe_model()
    with pytest.raises(RuntimeError, match="routing"):
        model(input_ids=torch.tensor([[5, 6, 7]]))


def test_gradient_checkpointing_needs_backward_inside_the_block():
    model = tiny_moe_model()
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()
    ids = torch.tensor([[5, 6, 7, 8]])
    with routing([2], collect_aux=True) as ctx:
        out = model(input_ids=ids, labels=ids, use_cache=False)
        (out.loss + 0.01 * sum(ctx.aux_parts().values())).backward()  # the recomputed forward sees the ids
    assert model.model.layers[0].mlp.router.weight.grad.abs().sum() > 0
    with routing([2]):
        out = model(input_ids=ids, labels=ids, use_cache=False)
    with pytest.raises(RuntimeError, match="backward"):
        out.loss.backward()


# ---------------------------------------------------------------------------------------------------- int8 (CPU)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dispatch", ["dense", "grouped", "loop", "auto"])
def test_int8_experts_equal_float_within_tolerance(dispatch, monkeypatch):
    from explainrec.llm import quantize
    from explainrec.methods.gavamoe import moe_ffn

    torch.manual_seed(3)
    moe = MultiGatedMoE.from_dense(dense_mlp(), n_experts=4, top_k=2, n_gates=3, expert_size=I // 2,
                                   router_init_std=0.5)
    x = torch.randn(3, 16, H)  # 48 tokens: above INT8_DENSE_MAX_TOKENS, so auto takes the grouped path
    assert x.shape[0] * x.shape[1] > moe_ffn.INT8_DENSE_MAX_TOKENS
    with routing([0, 2, 1]):
        ref = moe(x)
        moe.experts.quantize_int8()
        moe.dispatch = dispatch
        calls = []
        real = quantize.int8_matmul
        monkeypatch.setattr(quantize, "int8_matmul", lambda *a: calls.append(a[2].shape) or real(*a))
        got = moe(x)
        prefill_calls = len(calls)
        decode = moe(x[:, :1])  # 3 tokens, a decoding step
        step_calls = len(calls) - prefill_calls
        step_experts = len(set(moe.router(x[:, :1], torch.tensor([0, 2, 1])).topk(2).indices.reshape(-1).tolist()))
    assert moe.experts.int8 and moe.experts.n_experts == 4
    assert not any(isinstance(p, torch.nn.Parameter) and p.dim() == 3 for p in moe.experts.parameters())
    assert _rel(got, ref) < 0.03
    assert _rel(decode, ref[:, :1]) < 0.03
    # grouped (also "loop", and "auto" above the threshold): a gate/up and a down matmul per expert (48 tokens use
    # all 4); dense: two matmuls for all experts. A decoding step under "auto" is dense.
    assert prefill_calls == (2 if dispatch == "dense" else 2 * 4)
    assert step_calls == (2 if dispatch in ("dense", "auto") else 2 * step_experts)


def test_quantize_for_cpu_finds_the_moe_experts_and_routing_still_works():
    from explainrec.llm.quantize import Int8Linear, quantize_for_cpu

    model = tiny_moe_model(n_clusters=3, router_init_std=1.0)
    ids = torch.randint(3, 100, (3, 7))
    clusters = torch.tensor([2, 0, 1])
    with torch.no_grad(), routing(clusters):
        ref = model(input_ids=ids).logits
    report = quantize_for_cpu(model, "int8")
    assert len(report.self_quantized) == 2 and all(n.endswith("mlp.experts") for n in report.self_quantized)
    assert quantize_for_cpu(model, "int8").self_quantized == []  # already int8: a second call changes nothing
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8Linear)
    collect_expert_usage(model, reset=True)
    with torch.no_grad(), routing(clusters, track_samples=True) as state:
        got = model(input_ids=ids).logits
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                             pad_token_id=0)
    assert _rel(got, ref) < 0.05
    assert out.shape == (3, 11)
    usage = collect_expert_usage(model)
    assert all(int(u.sum()) > 0 for u in usage.values()) and state.sample_usage.sum() > 0
    with torch.no_grad(), routing(torch.tensor([0, 0, 0])):
        assert _rel(model(input_ids=ids).logits, got) > 0.05  # gates still matter after quantisation
