"""The explanation NLL with the output head on the labelled positions only equals transformers' full-head loss,
in value and in every gradient (plain and LoRA-wrapped LLM)."""
from __future__ import annotations

import pytest
import torch

from explainrec.llm.load import load_llm
from explainrec.llm.loss import causal_lm_nll


def _batch(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = ids.clone()
    labels[:, :7] = -100  # the prompt
    labels[mask == 0] = -100
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    return embeds, mask, labels


@pytest.mark.parametrize("lora", [False, True])
def test_targets_only_equals_the_full_head_loss_and_gradients(lora):
    torch.manual_seed(0)
    model, _ = load_llm("tiny", device="cpu")
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.train()
    results = []
    for targets_only in (False, True):
        model.zero_grad(set_to_none=True)
        embeds, mask, labels = _batch(model)
        loss = causal_lm_nll(model, inputs_embeds=embeds, attention_mask=mask, labels=labels, targets_only=targets_only)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), embeds.grad.clone(), grads))
    (full, g_in_full, g_full), (fast, g_in_fast, g_fast) = results
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_in_fast, g_in_full, rtol=1e-4, atol=1e-6)
    assert g_full.keys() == g_fast.keys() and g_full
    for name in g_full:
        torch.testing.assert_close(g_fast[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_only_labelled_positions_reach_the_head():
    model, _ = load_llm("tiny", device="cpu")
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    embeds, mask, labels = _batch(model)
    causal_lm_nll(model, inputs_embeds=embeds, attention_mask=mask, labels=labels)
    hook.remove()
    assert seen == [torch.Size([int((labels[:, 1:] != -100).sum()), model.config.hidden_size])]
