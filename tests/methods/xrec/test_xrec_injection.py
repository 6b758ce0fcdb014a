"""The XRec injection on the tiny LLaMA: q/k/v receive the vectors at exactly the placeholder positions in every
layer, cached generation equals uncached, decoding steps are left alone, left padding is harmless."""
from __future__ import annotations

import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.data.prompts import render_prompt
from explainrec.llm.generate import _left_pad
from explainrec.llm.load import load_llm
from explainrec.methods.xrec.injection import XRecInjection, current_injection, find_decoder
from explainrec.methods.xrec.modeling import XRecModel
from explainrec.methods.xrec.prompting import xrec_prompt

N_USERS, N_ITEMS, DIM = 20, 15, 8


def build_model(llm, tokenizer, *, every_layer: bool = True, seed: int = 0) -> XRecModel:
    uid, iid = XRecModel.prepare_tokenizer(llm, tokenizer)
    gen = torch.Generator().manual_seed(seed)
    model = XRecModel(llm, torch.randn(N_USERS, DIM, generator=gen), torch.randn(N_ITEMS, DIM, generator=gen),
                      user_token_id=uid, item_token_id=iid, inject_every_layer=every_layer)
    with torch.no_grad():  # vectors at the scale of the hidden states, so their effect is plain to see
        for ad in (model.user_adaptor, model.item_adaptor):
            ad.weight.normal_(0.0, 0.3, generator=gen)
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    llm, tokenizer = load_llm("tiny", device="cpu")
    model = build_model(llm, tokenizer)
    data = make_synthetic(n_users=N_USERS, n_items=N_ITEMS, n_types=2, seed=1)
    # three prompts of different lengths (title / profiles present or not) -> real left padding
    examples = data.examples[:3]
    examples[1].user_profile = None
    examples[2].item_profile = None
    examples[2].title = None
    rows = [tokenizer(render_prompt(tokenizer, xrec_prompt(e)), add_special_tokens=False)["input_ids"] for e in examples]
    assert len({len(r) for r in rows}) == 3
    ids, mask = _left_pad(rows, tokenizer.pad_token_id)
    user = torch.tensor([e.user for e in examples])
    item = torch.tensor([e.item for e in examples])
    return model, tokenizer, rows, ids, mask, user, item


def placeholder_mask(model, ids):
    return (ids == model.user_token_id) | (ids == model.item_token_id)


def test_qkv_receive_the_vectors_at_exactly_the_placeholders_in_every_layer(setup):
    model, _, _, ids, mask, user, item = setup
    decoder = find_decoder(model.llm)
    before, seen, handles = {}, {}, []
    for layer, block in enumerate(decoder.layers):
        def pre(mod, args, kwargs, layer=layer):
            before[layer] = kwargs["hidden_states"].detach().clone()
        handles.append(block.self_attn.register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
        for name in ("q_proj", "k_proj", "v_proj"):
            def post(mod, args, out, key=(layer, name)):
                seen[key] = (args[0].detach().clone(), out.detach().clone())
            handles.append(getattr(block.self_attn, name).register_forward_hook(post))
    try:
        with torch.no_grad():
            u, i = model.soft_vectors(user, item)
            model(ids, mask, user=user, item=item)
    finally:
        for h in handles:
            h.remove()

    where = placeholder_mask(model, ids)  # (B, T)
    assert int(where.sum()) == 2 * ids.shape[0]
    expected = torch.zeros(*ids.shape, u.shape[1])
    expected[ids == model.user_token_id] = u
    expected[ids == model.item_token_id] = i
    for layer, block in enumerate(decoder.layers):
        h = before[layer]
        for name in ("q_proj", "k_proj", "v_proj"):
            x, y = seen[(layer, name)]
            added = x - h
            assert torch.equal(added.abs().sum(-1) > 0, where), (layer, name)  # exactly the placeholder positions
            assert torch.allclose(added, expected, atol=1e-6)
            proj = getattr(block.self_attn, name)
            clean = proj(h)  # (B, T, out): what the projection gives without the addition
            assert torch.equal(y[~where], clean[~where]), (layer, name)
            assert torch.allclose(y[where], clean[where] + expected[where] @ proj.weight.T, atol=1e-5)
    # grouped-query attention: k/v are narrower than the vector, and still receive it through their own weights
    assert seen[(0, "k_proj")][1].shape[-1] < seen[(0, "q_proj")][1].shape[-1]


def test_hidden_states_with_and_without_layer_injection(setup):
    model, _, _, ids, mask, user, item = setup
    with torch.no_grad():
        u, i = model.soft_vectors(user, item)
        embeds = model._splice(ids, u, i)
        plain = model.llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states
        with model.injected(ids, u, i):
            injected = model.llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states
    where = placeholder_mask(model, ids)
    first = where.int().argmax(dim=1)  # first placeholder of each row
    assert torch.equal(plain[0], injected[0])  # same (spliced) input embeddings
    for layer in range(1, len(plain)):
        for b in range(ids.shape[0]):
            n = int(first[b])
            assert torch.equal(plain[layer][b, :n], injected[layer][b, :n]), (layer, b)
            diff = (plain[layer][b] - injected[layer][b]).abs().sum(-1)  # (T,)
            assert (diff[where[b]] > 1e-4).all(), (layer, b)


def test_input_ids_path_equals_inputs_embeds_path(setup):
    model, _, _, ids, mask, user, item = setup
    with torch.no_grad():
        u, i = model.soft_vectors(user, item)
        with model.injected(ids, u, i):
            from_ids = model.llm(input_ids=ids, attention_mask=mask).logits
            from_embeds = model.llm(inputs_embeds=model._splice(ids, u, i), attention_mask=mask).logits
        outside = model.llm(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(from_ids, from_embeds)
    assert not torch.allclose(from_ids, outside)  # outside the scope the hooks do nothing


def test_cached_greedy_generation_equals_uncached(setup):
    model, tokenizer, _, ids, mask, user, item = setup
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    cached = model.generate(ids, mask, user=user, item=item, use_cache=True, **kw)
    uncached = model.generate(ids, mask, user=user, item=item, use_cache=False, **kw)
    assert cached.shape == (3, ids.shape[1] + 10)
    assert torch.equal(cached, uncached)


def test_decoding_steps_are_not_injected(setup):
    model, tokenizer, _, ids, mask, user, item = setup
    block = find_decoder(model.llm).layers[-1].self_attn
    calls = []
    h1 = block.register_forward_pre_hook(lambda m, a, k: calls.append([k["hidden_states"].clone()]), with_kwargs=True,
                                         prepend=True)
    h2 = block.register_forward_pre_hook(lambda m, a, k: calls[-1].append(k["hidden_states"].clone()), with_kwargs=True)
    try:
        model.generate(ids, mask, user=user, item=item, max_new_tokens=4, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
    finally:
        h1.remove()
        h2.remove()
    assert len(calls) == 4  # one prefill + three cached steps
    prefill_before, prefill_after = calls[0]
    assert prefill_before.shape[1] == ids.shape[1]
    assert torch.equal((prefill_after - prefill_before).abs().sum(-1) > 0, placeholder_mask(model, ids))
    for before, after in calls[1:]:
        assert before.shape[1] == 1 and torch.equal(before, after)


def test_left_padded_batch_equals_single_samples(setup):
    model, tokenizer, rows, ids, mask, user, item = setup
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        batch_logits = model(ids, mask, user=user, item=item).logits
        batch_gen = model.generate(ids, mask, user=user, item=item, **kw)[:, ids.shape[1]:]
        for b, row in enumerate(rows):
            one = torch.tensor([row])
            single = model(one, torch.ones_like(one), user=user[b: b + 1], item=item[b: b + 1]).logits[0]
            assert torch.allclose(batch_logits[b, -len(row):], single, atol=1e-4), b
            gen = model.generate(one, torch.ones_like(one), user=user[b: b + 1], item=item[b: b + 1], **kw)
            assert torch.equal(gen[0, len(row):], batch_gen[b]), b


def test_layer_injection_changes_the_prediction(setup):
    model, tokenizer, _, ids, mask, user, item = setup
    input_only = XRecModel(model.llm, model.user_table[:-1], model.item_table[:-1], user_token_id=model.user_token_id,
                           item_token_id=model.item_token_id, inject_every_layer=False).eval()
    try:
        input_only.load_state_dict(model.state_dict())
        with torch.no_grad():
            full = model(ids, mask, user=user, item=item).logits[:, -1]
            only = input_only(ids, mask, user=user, item=item).logits[:, -1]
        assert input_only.injection.layers == ()
        assert not torch.allclose(full, only, atol=1e-3)
    finally:
        input_only.injection.remove()


def test_beam_search_expands_the_vectors(setup):
    """Each sample's beams carry that sample's vectors: the batch gives what every prompt gives alone (were the
    vectors repeated batch-wise instead of per sample, the beams of one pair would read another pair's vectors)."""
    model, tokenizer, rows, ids, mask, user, item = setup
    kw = dict(max_new_tokens=4, num_beams=2, num_return_sequences=2, do_sample=False,
              pad_token_id=tokenizer.pad_token_id)
    out = model.generate(ids, mask, user=user, item=item, **kw)
    assert out.shape[0] == 6
    for b, row in enumerate(rows):
        one = torch.tensor([row])
        alone = model.generate(one, torch.ones_like(one), user=user[b:b + 1], item=item[b:b + 1], **kw)
        assert torch.equal(out[2 * b:2 * b + 2, -4:], alone[:, -4:]), f"sample {b}"
    other = model.generate(ids, mask, user=user.roll(1), item=item.roll(1), **kw)
    assert not torch.equal(other[:, -4:], out[:, -4:])  # the vectors matter to the beams at all


def test_mismatched_prompt_and_scope_errors(setup):
    model, _, _, ids, mask, user, item = setup
    u, i = model.soft_vectors(user, item)
    shifted = torch.roll(ids, 1, dims=1)
    with torch.no_grad(), model.injected(ids, u, i):
        with pytest.raises(ValueError, match="placeholder positions"):
            model.llm(input_ids=shifted, attention_mask=mask)
        with pytest.raises(ValueError, match="batch 2"):
            model.llm(input_ids=ids[:2], attention_mask=mask[:2])
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        with model.injected(ids, u[:, :3], i):
            pass
    with pytest.raises(RuntimeError):
        with model.injected(ids, u, i):
            raise RuntimeError("boom")
    assert current_injection() is None


def test_layer_subset_only_touches_the_chosen_layers(setup):
    model, _, _, ids, mask, user, item = setup
    decoder = find_decoder(model.llm)
    subset = XRecInjection(model.llm, layers=[1])
    changed = {}
    handles = []
    for layer, block in enumerate(decoder.layers):
        def pre(mod, args, kwargs, layer=layer):
            changed[layer] = [kwargs["hidden_states"].clone()]
        def post(mod, args, kwargs, layer=layer):
            changed[layer] = bool((kwargs["hidden_states"] != changed[layer][0]).any())
        handles += [block.self_attn.register_forward_pre_hook(pre, with_kwargs=True, prepend=True),
                    block.self_attn.register_forward_pre_hook(post, with_kwargs=True)]
    try:
        with torch.no_grad():
            u, i = model.soft_vectors(user, item)
            with subset.inject(ids, {model.user_token_id: u, model.item_token_id: i}):
                model.llm(input_ids=ids, attention_mask=mask)
    finally:
        subset.remove()
        for h in handles:
            h.remove()
    assert changed == {0: False, 1: True}
    with pytest.raises(ValueError, match="layers must lie"):
        XRecInjection(model.llm, layers=[5])


def test_find_decoder_rejects_non_decoders():
    with pytest.raises(ValueError, match="LLaMA-family"):
        XRecInjection(torch.nn.Linear(3, 3))
