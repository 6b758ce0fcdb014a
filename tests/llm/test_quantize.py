"""Int8 CPU quantisation: what gets replaced, how close int8 stays to float32, and that tied embeddings, shared
input quantisation, LoRA merging and XRec's attention-input injection keep working."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from explainrec.data.prompts import render_prompt
from explainrec.llm import quantize as q
from explainrec.llm.generate import generate_texts
from explainrec.llm.load import load_llm
from explainrec.llm.quantize import Int8Linear, quantize_for_cpu, quantize_rows, quantize_weight

QUESTIONS = [
    "why would the user enjoy this book ?",
    "the user likes coffee , music and long stories about history ; would they enjoy this small cozy place ?",
    "a fantasy series with many characters and a slow plot , loved by fans of classic adventure novels",
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture()
def pair():
    """A fresh tiny model and its int8 copy (tests may change them)."""
    model, tok = load_llm("tiny", device="cpu")
    quantized = copy.deepcopy(model)
    report = quantize_for_cpu(quantized, "int8")
    return model, quantized, tok, report


def test_weight_and_row_quantisation_round_trip():
    w = torch.randn(7, 5) * torch.arange(1, 8).unsqueeze(1)  # rows of very different scale
    qw, scale = quantize_weight(w)
    assert qw.dtype == torch.int8 and scale.shape == (7,)
    assert qw.abs().amax(1).eq(127).all()  # every row uses its full range
    torch.testing.assert_close(qw.float() * scale.unsqueeze(1), w, atol=float(scale.max()) / 2 + 1e-6, rtol=0)
    x = torch.randn(4, 6)
    x[0] *= 1000  # one loud token does not crush the others: scales are per row
    xq, xs = quantize_rows(x)
    assert xs.shape == (4, 1)
    assert rel_err(xq.float() * xs, x) < 0.01
    assert rel_err((xq.float() * xs)[1:], x[1:]) < 0.01


def test_int8_linear_matches_float_within_one_percent():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(2, 9, 64)
    got = Int8Linear.from_linear(lin)(x)
    assert got.shape == (2, 9, 48)
    assert rel_err(got, lin(x)) < 0.01
    integer = nn.Linear(4, 2, bias=False)  # weights and inputs on the int8 grid: exact
    with torch.no_grad():
        integer.weight.copy_(torch.tensor([[127.0, -3.0, 5.0, 0.0], [1.0, 2.0, -127.0, 4.0]]))
    xi = torch.tensor([[127.0, 1.0, -2.0, 3.0]])
    assert torch.equal(Int8Linear.from_linear(integer)(xi), integer(xi))


def test_every_projection_and_the_head_are_int8_and_the_embedding_stays_float(pair):
    model, quantized, _, report = pair
    n_layers = model.config.num_hidden_layers
    assert len(report.linears) == 7 * n_layers  # q, k, v, o, gate, up, down
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    assert isinstance(quantized.get_output_embeddings(), Int8Linear) and report.head == "int8"
    emb = quantized.get_input_embeddings()
    assert emb.weight.dtype == torch.float32
    assert torch.equal(emb.weight, model.get_input_embeddings().weight)  # tied head quantised as a copy
    head = quantized.get_output_embeddings()
    dequant = head.weight_int8.float() * head.weight_scale.unsqueeze(1)
    assert rel_err(dequant, emb.weight) < 0.01
    assert report.bytes_after < report.bytes_before
    assert "int8" in str(report)
    again = quantize_for_cpu(quantized, "int8")  # idempotent: nothing float is left to quantise
    assert again.linears == [] and again.head is None and again.bytes_after == report.bytes_after


def test_int8_logits_stay_close_and_greedy_tokens_match_where_float_is_sure(pair):
    model, quantized, tok, _ = pair
    ids = tok([render_prompt(tok, [{"role": "user", "content": x}]) for x in QUESTIONS], add_special_tokens=False,
              padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        ref = model(**ids).logits
        got = quantized(**ids).logits
        embeds = quantized(inputs_embeds=model.get_input_embeddings()(ids["input_ids"]),
                           attention_mask=ids["attention_mask"]).logits
    assert rel_err(got, ref) < 0.1  # the tiny model's wide random init (std 0.3) is harder on int8 than SmolLM2
    assert torch.equal(embeds, got)  # input embeddings (soft-prompt path) still float and tied
    top2 = ref.topk(2, dim=-1).values
    sure = (top2[..., 0] - top2[..., 1]) > 0.5  # positions where float32's choice is clear
    assert sure.sum() > 10
    assert torch.equal(got.argmax(-1)[sure], ref.argmax(-1)[sure])


def test_fp32_leaves_the_model_alone_and_bad_precision_raises():
    model, _ = load_llm("tiny", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = quantize_for_cpu(model, "fp32")
    assert report.linears == [] and str(report) == "precision fp32: model unchanged"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="precision"):
        quantize_for_cpu(model, "int4")


def test_head_can_stay_float():
    model, _ = load_llm("tiny", device="cpu")
    report = quantize_for_cpu(model, "int8", head=False)
    assert report.head is None and isinstance(model.get_output_embeddings(), nn.Linear)


def test_qkv_and_gate_up_quantise_their_shared_input_once(pair, monkeypatch):
    model, quantized, tok, _ = pair
    calls = []
    real = q.quantize_rows
    monkeypatch.setattr(q, "quantize_rows", lambda x: calls.append(x.shape) or real(x))
    ids = tok(QUESTIONS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        shared = quantized(ids).logits
    per_layer = 4  # attention input (q/k/v), attention output (o), MLP input (gate/up), MLP hidden (down)
    assert len(calls) == per_layer * model.config.num_hidden_layers + 1  # + the head
    for module in quantized.modules():
        if isinstance(module, Int8Linear):
            module.shared = None
    with torch.no_grad():
        alone = quantized(ids).logits
    assert len(calls) == 2 * (per_layer * model.config.num_hidden_layers + 1) + 3 * model.config.num_hidden_layers
    assert torch.equal(shared, alone)


def test_shared_input_slot_never_reuses_a_changed_tensor():
    torch.manual_seed(0)
    slot = q.SharedInput()
    a, b = Int8Linear.from_linear(nn.Linear(8, 4)), Int8Linear.from_linear(nn.Linear(8, 4))
    a.shared = b.shared = slot
    x = torch.randn(3, 8)
    a(x)
    x.mul_(2)  # in place: the version counter moves
    fresh = Int8Linear(b.weight_int8, b.weight_scale, b.bias)
    assert torch.equal(b(x), fresh(x))
    assert copy.deepcopy(a).shared is not slot


def test_quantised_model_generates_and_deep_copies(pair):
    _, quantized, tok, _ = pair
    prompts = [render_prompt(tok, [{"role": "user", "content": x}]) for x in QUESTIONS]
    out = generate_texts(quantized, tok, prompts, batch_size=2, max_new_tokens=6, progress=False)
    assert len(out) == 3 and all(out)
    assert generate_texts(copy.deepcopy(quantized), tok, prompts, batch_size=2, max_new_tokens=6,
                          progress=False) == out


def test_lora_layers_are_merged_before_quantising():
    import peft
    model, tok = load_llm("tiny", device="cpu")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.5)  # B starts at zero; make the adapters matter
    lora.eval()
    ids = tok(QUESTIONS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = lora(input_ids=ids).logits
        base = lora.get_base_model()
        with lora.disable_adapter():
            no_adapter = lora(input_ids=ids).logits
    report = quantize_for_cpu(lora, "int8")
    assert report.merged_lora == 2 * model.config.num_hidden_layers
    with torch.no_grad():
        got = base(input_ids=ids).logits
    assert rel_err(got, ref) < 0.1
    assert rel_err(no_adapter, ref) > 2 * rel_err(got, ref)  # unmerged adapters would fail the check above


def test_xrec_injection_still_reaches_int8_projections(tiny_xrec):
    from explainrec.methods.xrec.prompting import xrec_prompt

    model, tok, examples = tiny_xrec
    examples = examples[:3]
    batch = tok([render_prompt(tok, xrec_prompt(e)) for e in examples], add_special_tokens=False, padding=True,
                padding_side="left", return_tensors="pt")
    user = torch.tensor([e.user for e in examples])
    item = torch.tensor([e.item for e in examples])
    with torch.no_grad():
        ref = model(batch["input_ids"], batch["attention_mask"], user=user, item=item).logits
        quantize_for_cpu(model, "int8")  # the wrapper's .llm is found
        got = model(batch["input_ids"], batch["attention_mask"], user=user, item=item).logits
        embeds = model.embed(batch["input_ids"], user, item)
        input_only = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert isinstance(model.llm.model.layers[0].self_attn.q_proj, Int8Linear)
    assert rel_err(got, ref) < 0.1
    assert rel_err(input_only, got) > 2 * rel_err(got, ref)  # the per-layer injection still acts on int8


def test_outlier_channels_stay_float_and_keep_the_rest_precise():
    """A token with one massive channel: int8 alone loses the small channels, the float outlier split does not;
    an input that lives only on the outlier channels is computed exactly in float."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(5, 64)
    x[:, 7] = 300.0  # the same channel is huge on every token, as in SmolLM2's hidden states
    plain, split = Int8Linear.from_linear(lin), Int8Linear.from_linear(lin, outliers=torch.tensor([7]))
    small = lin(x) - x[:, 7:8] * lin.weight[:, 7]  # the part the other 63 channels carry
    err_plain = rel_err(plain(x) - x[:, 7:8] * lin.weight[:, 7], small.detach())
    err_split = rel_err(split(x) - x[:, 7:8] * lin.weight[:, 7], small.detach())
    assert err_split < 0.02 < err_plain
    only = torch.zeros(3, 64)
    only[:, 7] = torch.tensor([1.5, -2.0, 40.0])
    torch.testing.assert_close(split(only), lin(only).detach(), atol=1e-5, rtol=1e-5)
    assert "1 input channels float" in repr(split)


def test_calibration_finds_the_massive_channel_and_siblings_do_not_share_across_outlier_sets():
    model, tok = load_llm("tiny", device="cpu")
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 3] = 80.0  # channel 3 of the residual stream dominates every token
    ids = tok(QUESTIONS[1], return_tensors="pt")["input_ids"]
    found = q.outlier_channels(model, lambda: model(ids), k=2)
    first = model.model.layers[0]
    assert 3 in found[first.self_attn.q_proj].tolist() and 3 in found[first.mlp.gate_proj].tolist()
    assert torch.equal(found[first.self_attn.q_proj], found[first.self_attn.k_proj])  # same input, same channels
    reference = copy.deepcopy(model)
    plain = copy.deepcopy(model)
    quantize_for_cpu(plain, "int8")
    quantize_for_cpu(model, "int8", outliers=found)
    assert model.model.layers[0].self_attn.q_proj.outliers is not None
    with torch.no_grad():
        want = reference(ids).logits
        assert rel_err(model(ids).logits, want) < rel_err(plain(ids).logits, want)
    slot = q.SharedInput()
    a = Int8Linear.from_linear(nn.Linear(8, 4), outliers=torch.tensor([1]))
    b = Int8Linear.from_linear(nn.Linear(8, 4))
    a.shared = b.shared = slot
    x = torch.randn(3, 8)
    a(x)
    fresh = Int8Linear(b.weight_int8, b.weight_scale, b.bias)
    assert torch.equal(b(x), fresh(x))  # b must not reuse a's input, quantised without channel 1
