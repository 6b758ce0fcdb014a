"""Batched generation: batching never changes greedy output, order is kept, stats add up, RNG is contained."""
from __future__ import annotations

import pytest
import torch

from explainrec.data.prompts import render_prompt
from explainrec.llm.generate import GenerationStats, _count_new_tokens, _left_pad, generate_texts
from explainrec.llm.load import load_llm

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
    assert generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=8, progress=False, embed_fn=same) == plain
    assert sorted(seen) == list(range(len(prompts)))

    def shifted(ids, index):
        return model.get_input_embeddings()(ids) + 0.5

    assert generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=8, progress=False,
                          embed_fn=shifted) != plain


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
