"""The per-batch streamer hook of generate_texts and the batch-aware streamer: each row's pieces add up to exactly
that row's returned text; the hook is called once per generation batch with the prompts' positions; a batch whose
requests have all gone stops early; each row's tokens, finish reason and first-token time are counted."""
from __future__ import annotations

import pytest
import torch

from explainrec.data.prompts import build_messages, render_prompt
from explainrec.data.schema import Pair
from explainrec.llm.generate import generate_texts
from explainrec.llm.hooks import GenerationHooks
from explainrec.serve.streamer import BatchAbandoned, BatchStreamer, RowCount


def _prompts(tokenizer, n: int) -> list[str]:
    pairs = [Pair(user=f"u{k}", item=f"i{k}", title=f"Item number {k} " + "with a longer title " * (k % 3))
             for k in range(n)]
    return [render_prompt(tokenizer, build_messages(p)) for p in pairs]


def _eos(model, tokenizer) -> set[int]:
    value = model.generation_config.eos_token_id
    ids = {value} if isinstance(value, int) else set(value or ())
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def test_hook_is_called_per_batch_and_rows_stream_their_own_text(tiny_llm):
    model, tokenizer = tiny_llm
    prompts = _prompts(tokenizer, 5)
    pieces: dict[int, list[str]] = {i: [] for i in range(5)}
    seen: list[list[int]] = []

    def streamer_for(index: torch.Tensor):
        rows = index.tolist()
        seen.append(rows)
        sinks = [(lambda text, i=i: pieces[i].append(text)) for i in rows]
        return BatchStreamer(tokenizer, sinks, _eos(model, tokenizer))

    texts = generate_texts(model, tokenizer, prompts, batch_size=2, max_new_tokens=10, progress=False,
                           hooks=GenerationHooks(streamer_for=streamer_for))
    assert [len(b) for b in seen] == [2, 2, 1] and sorted(i for b in seen for i in b) == list(range(5))
    assert texts == generate_texts(model, tokenizer, prompts, batch_size=2, max_new_tokens=10, progress=False)
    for i, text in enumerate(texts):
        assert "".join(pieces[i]) == text, i
        assert len(pieces[i]) > 1  # in pieces, as it was generated
        assert not pieces[i][0][:1].isspace()


def test_rows_without_a_consumer_and_a_hook_returning_none(tiny_llm):
    model, tokenizer = tiny_llm
    prompts = _prompts(tokenizer, 3)
    got: list[str] = []
    streamer = lambda index: BatchStreamer(tokenizer, [None, got.append, None], _eos(model, tokenizer))
    texts = generate_texts(model, tokenizer, prompts, batch_size=3, max_new_tokens=8, progress=False,
                           hooks=GenerationHooks(prefix_reuse=False, streamer_for=streamer))
    plain = generate_texts(model, tokenizer, prompts, batch_size=3, max_new_tokens=8, progress=False,
                           hooks=GenerationHooks(prefix_reuse=False, streamer_for=lambda index: None))
    assert texts == plain
    sorted_rows = sorted(range(3), key=lambda i: -len(tokenizer(prompts[i], add_special_tokens=False)["input_ids"]))
    assert "".join(got) == texts[sorted_rows[1]]  # the batch's second row, in generate's (length) order


def test_an_abandoned_batch_stops_generating(tiny_llm):
    model, tokenizer = tiny_llm
    steps = []

    def streamer_for(index):
        def gone():
            steps.append(1)
            return len(steps) >= 3
        return BatchStreamer(tokenizer, [None] * len(index), _eos(model, tokenizer), abandoned=gone)

    with pytest.raises(BatchAbandoned):
        generate_texts(model, tokenizer, _prompts(tokenizer, 2), max_new_tokens=40, progress=False,
                       hooks=GenerationHooks(streamer_for=streamer_for))
    assert len(steps) == 3 and not model.training


class _Chars:
    """A tokenizer whose tokens are bytes: a character may take two tokens (as with byte-level BPE)."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_unfinished_characters_and_outer_spaces_are_held_back():
    got: list[str] = []
    streamer = BatchStreamer(_Chars(), [got.append], eos_ids={0})
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: ignored
    for b in b"  caf\xc3\xa9 au lait  ":
        streamer.put(torch.tensor([b]))
        assert "\ufffd" not in "".join(got) and not "".join(got).endswith(" ")
    streamer.put(torch.tensor([0]))  # eos: what follows is padding
    streamer.put(torch.tensor([ord("x")]))
    streamer.end()
    assert "".join(got) == "café au lait"


def test_each_row_counts_its_prompt_its_tokens_and_why_it_ended():
    counts = [RowCount(), RowCount()]
    streamer = BatchStreamer(_Chars(), [None, None], eos_ids={0}, counts=counts, pad_id=9)
    streamer.put(torch.tensor([[9, 9, 5, 6], [4, 5, 6, 7]]))  # the prompts, left-padded with 9
    for step in ([ord("a"), ord("b")], [0, ord("c")], [9, ord("d")]):  # row 0 ends (eos 0), then padding
        streamer.put(torch.tensor(step))
    streamer.end()
    assert [c.prompt_tokens for c in counts] == [2, 4]
    assert [c.new_tokens for c in counts] == [2, 3]  # the eos counts; padding after it does not
    assert [c.stopped for c in counts] == [True, False]  # row 1 was cut at the step limit
    assert all(c.counted and c.first_token_at is not None for c in counts)
    unknown = [RowCount()]
    BatchStreamer(_Chars(), [None], eos_ids={0}, counts=unknown, pad_id=0).put(torch.tensor([[0, 1]]))
    assert unknown[0].counted and unknown[0].prompt_tokens is None  # pad == eos: the prompt cannot be told apart
