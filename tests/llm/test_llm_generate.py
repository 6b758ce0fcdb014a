"""Batched generation: batching never changes greedy output, order is kept, stats add up, RNG is contained."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from explainrec.data.prompts import render_prompt
from explainrec.llm.generate import MIN_PREFIX_TOKENS as MIN_PREFIX
from explainrec.llm.generate import GenerationStats, _count_new_tokens, _left_pad, generate_texts
from explainrec.llm.hooks import GenerationHooks
from explainrec.llm.load import load_llm

NO_PREFIX = GenerationHooks(prefix_reuse=False)

QUESTIONS = [
    "why would the user enjoy this book ?",
    "tacos",
    "the user likes coffee , music and long stories about history ; would they enjoy this small cozy place near the park ?",
    "great service",
    "a fantasy series with many characters and a slow plot , loved by fans of classic adventure novels",
]


@pytest.fixture(scope="module")
def prompts(tiny_llm):
    _, tok = tiny_llm
    return [render_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_batched_greedy_equals_one_by_one(tiny_llm, prompts):
    model, tok = tiny_llm
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) == len(prompts)  # every batch really needs padding
    single = [generate_texts(model, tok, [p], max_new_tokens=12, progress=False)[0] for p in prompts]
    assert len(set(single)) == len(single)  # the model tells the prompts apart, so the check below can fail
    assert generate_texts(model, tok, prompts, batch_size=len(prompts), max_new_tokens=12, progress=False) == single
    assert generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=12, progress=False) == single


def test_output_order_follows_input(tiny_llm, prompts):
    model, tok = tiny_llm
    forward = generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=6, progress=False)
    backward = generate_texts(model, tok, prompts[::-1], batch_size=2, max_new_tokens=6, progress=False)
    assert backward == forward[::-1]


def test_outputs_hold_no_prompt_or_special_tokens(tiny_llm, prompts):
    model, tok = tiny_llm
    for text in generate_texts(model, tok, prompts, batch_size=3, max_new_tokens=10, progress=False):
        assert text == text.strip() and text
        assert "<|" not in text and "assistant" not in text.split()[:1]


def test_stats_accumulate(tiny_llm, prompts):
    model, tok = tiny_llm
    stats = GenerationStats()
    generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=5, progress=False, stats=stats)
    assert stats.explanations == len(prompts)
    assert 0 < stats.new_tokens <= 5 * len(prompts) and stats.seconds > 0
    first = stats.new_tokens
    generate_texts(model, tok, prompts[:2], max_new_tokens=5, progress=False, stats=stats)
    assert stats.explanations == len(prompts) + 2 and stats.new_tokens > first
    d = stats.as_dict()
    assert d["tokens_per_s"] == pytest.approx(stats.new_tokens / stats.seconds)
    assert d["explanations_per_s"] == pytest.approx(stats.explanations / stats.seconds)


def test_sampling_is_seeded_and_leaves_global_rng(tiny_llm, prompts):
    model, tok = tiny_llm
    state = torch.get_rng_state()
    kw = dict(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=10, progress=False)
    a = generate_texts(model, tok, prompts, seed=1, **kw)
    assert torch.equal(state, torch.get_rng_state())
    assert generate_texts(model, tok, prompts, seed=1, **kw) == a
    assert generate_texts(model, tok, prompts, seed=2, **kw) != a


def test_beam_search_runs(tiny_llm, prompts):
    model, tok = tiny_llm
    out = generate_texts(model, tok, prompts[:3], num_beams=2, max_new_tokens=4, progress=False)
    assert len(out) == 3 and all(out)


def test_training_mode_is_restored():
    model, tok = load_llm("tiny", device="cpu")
    model.train()
    generate_texts(model, tok, ["hello"], max_new_tokens=2, progress=False)
    assert model.training


def test_embed_fn_gets_original_indices_and_replaces_embeddings(tiny_llm, prompts):
    model, tok = tiny_llm
    seen = []

    def same(ids, index):
        seen.extend(index.tolist())
        return model.get_input_embeddings()(ids)

    plain = generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=8, progress=False)
    assert generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=8, progress=False,
                          hooks=GenerationHooks(embed_fn=same)) == plain
    assert sorted(seen) == list(range(len(prompts)))

    def shifted(ids, index):
        return model.get_input_embeddings()(ids) + 0.5

    assert generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=8, progress=False,
                          hooks=GenerationHooks(embed_fn=shifted)) != plain


def test_empty_and_bad_batch_size(tiny_llm):
    model, tok = tiny_llm
    assert generate_texts(model, tok, [], progress=False) == []
    with pytest.raises(ValueError, match="batch_size"):
        generate_texts(model, tok, ["x"], batch_size=0)


def test_left_pad_and_token_count():
    ids, mask = _left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    new = torch.tensor([[4, 9, 2, 0], [4, 4, 4, 4], [2, 0, 0, 0]])  # eos = 2, pad = 0
    assert _count_new_tokens(new, {2}) == 3 + 4 + 1


# ---------------------------------------------------------------------------------------------------- shared prefix

SYSTEM = ("you explain recommendations . given what is known about a user and an item , write one or two sentences "
          "about why the user would enjoy the item .")
USER_TURNS = [
    "item : a small cozy coffee place near the park",
    "item : tacos",
    "item : a long fantasy series with many characters , loved by fans of classic adventure",
    "item : great service and fresh food , cheap prices",
    "item : a history museum with a theater",
    "item : the best pizza in town",
]


def chat_prompts(tok, turns=USER_TURNS, prefix_text=""):
    return [render_prompt(tok, [{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": prefix_text + t}]) for t in turns]


class ForwardSpy:
    """Records ``(rows, tokens)`` of every decoder forward call (input_ids or inputs_embeds) while active."""

    def __init__(self, model):
        self.calls, self.model = [], model

    def __enter__(self):
        def hook(module, args, kwargs):
            x = kwargs.get("inputs_embeds")
            x = kwargs.get("input_ids") if x is None else x
            self.calls.append(tuple(x.shape[:2]))
        self.handle = self.model.model.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def shared_prefix_length(tok, prompts):
    from explainrec.llm.generate import _common_prefix_length, _placeholder_ids

    rows = tok(prompts, add_special_tokens=False)["input_ids"]
    return _common_prefix_length(rows, _placeholder_ids(tok))


def test_prefix_reuse_is_token_identical_and_runs_the_prefix_once(tiny_llm):
    model, tok = tiny_llm
    prompts = chat_prompts(tok)
    n = shared_prefix_length(tok, prompts)
    assert n >= 20  # the chat head and the system prompt
    kw = dict(batch_size=4, max_new_tokens=12, progress=False)
    plain = generate_texts(model, tok, prompts, hooks=NO_PREFIX, **kw)
    assert len(set(plain)) == len(plain)
    with ForwardSpy(model) as spy:
        reused = generate_texts(model, tok, prompts, **kw)  # on by default without a batch_context
    assert reused == plain
    assert spy.calls.count((1, n)) == 1  # the prefix ran once for the whole call (two batches)
    prefills = [c for c in spy.calls if c[1] > 1 and c != (1, n)]
    lengths = sorted(len(r) for r in tok(prompts, add_special_tokens=False)["input_ids"])
    assert len(prefills) == 2 and all(t <= lengths[-1] - n for _, t in prefills)  # batches skip the prefix


def test_prefix_reuse_restores_order_after_length_sorting(tiny_llm):
    model, tok = tiny_llm
    prompts = chat_prompts(tok)
    kw = dict(batch_size=2, max_new_tokens=6, progress=False, hooks=GenerationHooks(prefix_reuse=True))
    forward = generate_texts(model, tok, prompts, **kw)
    backward = generate_texts(model, tok, prompts[::-1], **kw)
    assert backward == forward[::-1]
    assert forward == generate_texts(model, tok, prompts, batch_size=1, max_new_tokens=6, progress=False,
                                     hooks=NO_PREFIX)


def test_prefix_stops_where_embed_fn_changes_an_embedding(tiny_llm):
    model, tok = tiny_llm
    prompts = chat_prompts(tok)
    n = shared_prefix_length(tok, prompts)
    row = tok(prompts[0], add_special_tokens=False)["input_ids"]
    token = row[n // 2]  # a token inside the shared prefix; the prefix must end at its first occurrence
    cut = row.index(token)
    assert cut >= MIN_PREFIX

    def bump(ids, index):  # a per-sample change of that token's embedding, wherever it sits
        emb = model.get_input_embeddings()(ids)
        hit = (ids == token).unsqueeze(-1)
        return torch.where(hit, emb + 0.3 * (index.float() + 1).view(-1, 1, 1), emb)

    kw = dict(batch_size=3, max_new_tokens=8, progress=False)
    plain = generate_texts(model, tok, prompts, hooks=GenerationHooks(embed_fn=bump, prefix_reuse=False), **kw)
    with ForwardSpy(model) as spy:
        assert generate_texts(model, tok, prompts, hooks=GenerationHooks(embed_fn=bump), **kw) == plain
    assert (1, cut) in spy.calls  # the prefix was cut at the changed position, not dropped


def test_prefix_is_off_for_beams_and_no_repeat_ngrams(tiny_llm):
    model, tok = tiny_llm
    prompts = chat_prompts(tok)[:3]
    n = shared_prefix_length(tok, prompts)
    for kw in (dict(num_beams=2), dict(no_repeat_ngram_size=2)):
        with ForwardSpy(model) as spy:
            generate_texts(model, tok, prompts, max_new_tokens=4, progress=False, **kw)
        assert all(t != n for _, t in spy.calls), kw


def _gavamoe_like(tok_model_seed=0, n_clusters=3):
    """Tiny LLaMA with multi-gated MoE MLPs (strong routers, so gates matter) and soft-token placeholders."""
    from explainrec.llm.soft_tokens import add_placeholder_tokens
    from explainrec.methods.gavamoe.surgery import moe_upcycle

    model, tok = load_llm("tiny", device="cpu")
    ids = add_placeholder_tokens(model, tok)
    torch.manual_seed(tok_model_seed)
    moe_upcycle(model, n_clusters=n_clusters, n_experts=4, top_k=2, granularity=4, router_init_std=1.0)
    return model.eval(), tok, ids


def test_prefix_reuse_with_per_sample_cluster_gates_and_soft_tokens():
    from contextlib import contextmanager

    from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
    from explainrec.methods.gavamoe.routing import routing

    model, tok, placeholder = _gavamoe_like()
    prompts = chat_prompts(tok, prefix_text=f"user : {USER_TOKEN} item : {ITEM_TOKEN} ")
    n = shared_prefix_length(tok, prompts)
    assert 20 <= n < len(tok(prompts[0], add_special_tokens=False)["input_ids"])
    clusters = torch.tensor([0, 1, 2, 1, 0, 2])  # mixed gates in every batch of 3
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(len(prompts), 2, model.config.hidden_size, generator=gen)

    def embed_fn(ids, index):
        emb = model.get_input_embeddings()(ids)
        for slot, token in enumerate((USER_TOKEN, ITEM_TOKEN)):
            hit = (ids == placeholder[token]).unsqueeze(-1)
            emb = torch.where(hit, vectors[index, slot].unsqueeze(1), emb)
        return emb

    @contextmanager
    def batch_context(ids, index):
        with routing(clusters[index]):
            yield

    kw = dict(batch_size=3, max_new_tokens=10, progress=False)
    hooks = GenerationHooks(embed_fn=embed_fn, batch_context=batch_context)
    plain = generate_texts(model, tok, prompts, hooks=hooks, **kw)  # a batch_context alone: no prefix reuse by default
    with ForwardSpy(model) as spy:
        grouped = generate_texts(model, tok, prompts, hooks=replace(hooks, prefix_group=lambda index: clusters[index]),
                                 **kw)
    assert grouped == plain
    assert sum(rows for rows, t in spy.calls if t == n) == 3  # one prefix row per cluster for the whole call
    # one shared prefix for all clusters would be wrong: the gates route the prefix tokens differently
    assert generate_texts(model, tok, prompts, hooks=replace(hooks, prefix_reuse=True), **kw) != plain


def test_prefix_reuse_with_xrec_injection(tiny_xrec):
    from explainrec.methods.xrec.prompting import xrec_prompt

    model, tok, examples = tiny_xrec
    llm, examples = model.llm, examples[:5]
    examples[1].user_profile = None
    examples[3].title = None
    prompts = [render_prompt(tok, xrec_prompt(e)) for e in examples]
    user = torch.tensor([e.user for e in examples])
    item = torch.tensor([e.item for e in examples])
    n = shared_prefix_length(tok, prompts)
    assert n >= MIN_PREFIX
    kw = dict(batch_size=2, max_new_tokens=10, progress=False)
    inject = GenerationHooks(batch_context=lambda ids, idx: model.generation_context(ids, user[idx], item[idx]))
    plain = generate_texts(llm, tok, prompts, hooks=inject, **kw)
    with ForwardSpy(llm) as spy:
        reused = generate_texts(llm, tok, prompts, hooks=replace(inject, prefix_reuse=True), **kw)
    assert reused == plain
    assert (1, n) in spy.calls
    assert generate_texts(llm, tok, prompts, hooks=NO_PREFIX, batch_size=2, max_new_tokens=10,
                          progress=False) != plain  # the injection matters, so the check above can fail


# ---------------------------------------------------------------------------------------------------- reserved KV cache


def test_reserved_cache_layer_behaves_like_concatenation():
    from explainrec.llm.generate import _reserved_layer_class

    layer = _reserved_layer_class()(reserve=5)
    plain_k = torch.empty(2, 3, 0, 4)
    for n in (3, 1, 1, 2, 1):  # prefill, steps, then past the reserve (the buffer grows)
        k, v = torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)
        plain_k = torch.cat([plain_k, k], dim=2)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, plain_k) and torch.equal(got_v[..., -n:, :], v)
        assert layer.get_seq_length() == plain_k.shape[2]
    layer.crop(-2)
    plain_k = plain_k[..., :-2, :]
    k = torch.randn(2, 3, 1, 4)
    assert torch.equal(layer.update(k, k)[0], torch.cat([plain_k, k], dim=2))
    plain_k = torch.cat([plain_k, k], dim=2)
    layer.reorder_cache(torch.tensor([1, 0]))  # replaces keys by a reordered copy: the next update re-seeds
    plain_k = plain_k[[1, 0]]
    k = torch.randn(2, 3, 1, 4)
    assert torch.equal(layer.update(k, k)[0], torch.cat([plain_k, k], dim=2))
    plain_k = torch.cat([plain_k, k], dim=2)[1:]
    layer.batch_select_indices(torch.tensor([1]))
    k = torch.randn(1, 3, 1, 4)
    assert torch.equal(layer.update(k, k)[0], torch.cat([plain_k, k], dim=2))


def test_generate_texts_hands_generate_a_reserved_cache_and_matches_hf_cache(tiny_llm, prompts):
    model, tok = tiny_llm
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, k: seen.append(type(k.get("cache")).__name__ + ":" + (
        type(k["cache"].layers[0]).__name__ if k.get("cache") is not None else "")), with_kwargs=True)
    try:
        texts = generate_texts(model, tok, prompts, batch_size=3, max_new_tokens=12, progress=False,
                               hooks=NO_PREFIX)
    finally:
        hook.remove()
    assert seen and all(s == "DynamicCache:ReservedLayer" for s in seen)
    rows = tok(prompts, add_special_tokens=False)["input_ids"]
    for row, text in zip(rows, texts):  # HF's own DynamicCache, one prompt at a time
        ids = torch.tensor([row])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert tok.decode(out[0, len(row):], skip_special_tokens=True).strip() == text


def test_prefix_context_lets_gavamoe_count_each_samples_prefix_experts():
    """GaVaMoE reports each pair's most used experts; with a shared prefix, a ``prefix_context`` that records the
    prefix's usage per gate, added to every sample of that gate, gives the plain layout's counts back."""
    from contextlib import contextmanager

    from explainrec.methods.gavamoe.routing import routing

    model, tok, _ = _gavamoe_like()
    prompts = chat_prompts(tok)
    clusters = torch.tensor([2, 0, 1, 2, 1, 0])
    pad = tok.pad_token_id

    def counted(prefix: bool):
        usage = torch.zeros(len(prompts), 4, dtype=torch.long)
        per_gate = {}

        @contextmanager
        def batch_context(ids, index):  # padding left out: its routing depends on where the layout puts it
            with routing(clusters[index], token_mask=(ids != pad).long(), track_samples=True) as state:
                yield
            usage[index] += state.sample_usage

        @contextmanager
        def prefix_context(ids, index):
            with routing(clusters[index], track_samples=True) as state:
                yield
            for row, gate in enumerate(clusters[index].tolist()):
                per_gate[gate] = state.sample_usage[row]

        hooks = GenerationHooks(batch_context=batch_context, prefix_group=lambda index: clusters[index],
                                prefix_context=prefix_context) if prefix else \
            GenerationHooks(batch_context=batch_context, prefix_reuse=False)
        with ForwardSpy(model) as spy:
            texts = generate_texts(model, tok, prompts, batch_size=3, max_new_tokens=6, progress=False, hooks=hooks)
        for i, gate in enumerate(clusters.tolist()):
            usage[i] += per_gate.get(gate, 0)
        return texts, usage, spy.calls

    plain_texts, plain_usage, _ = counted(prefix=False)
    texts, usage, calls = counted(prefix=True)
    n = shared_prefix_length(tok, prompts)
    assert sum(rows for rows, t in calls if t == n) == 3  # the prefix really was shared, once per gate
    assert texts == plain_texts
    assert torch.equal(usage, plain_usage)


def test_a_model_with_its_own_cache_implementation_keeps_it(prompts):
    model, tok = load_llm("tiny", device="cpu")
    plain = generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=6, progress=False, hooks=NO_PREFIX)
    model.generation_config.cache_implementation = "static"  # generate refuses a second, caller-given cache
    assert generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=6, progress=False) == plain


def test_placeholders_and_pad_are_never_generated(prompts):
    """Their output rows were never trained: even when they win the logits, the next real token is taken."""
    from explainrec.llm.soft_tokens import add_placeholder_tokens, never_generated

    model, tok = load_llm("tiny", device="cpu")
    add_placeholder_tokens(model, tok)
    plain = generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=6, progress=False)
    banned = never_generated(tok)
    assert len(banned) == 3 and tok.pad_token_id in banned

    def boost(_module, _args, logits):
        logits[..., banned] += 1e4
        return logits

    handle = model.get_output_embeddings().register_forward_hook(boost)
    try:
        boosted = generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=6, progress=False)
    finally:
        handle.remove()
    assert boosted == plain and all(boosted)
