"""A streamer for one batched ``model.generate`` call that hands every row's text to its own consumer.

Hugging Face's ``TextIteratorStreamer`` handles a batch of one; the server generates many requests in one batch,
so this streamer keeps each row's new token ids, decodes them whole after every step (a token's text can depend
on its neighbours, e.g. multi-byte characters split over tokens) and passes on only the new part.

What a consumer receives concatenates to exactly the text :func:`explainrec.llm.generate.generate_texts` returns
for that row (which strips outer whitespace): leading whitespace is never sent and trailing whitespace is held
back until more text follows it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

# Sent while a character is still incomplete (its remaining bytes are in the next token): hold the text back.
_INCOMPLETE = "\ufffd"


class BatchAbandoned(RuntimeError):
    """Every request of the running batch has gone (disconnected or timed out): stop generating for nobody."""


@dataclass
class RowCount:
    """What one row's generation took: the server's token usage, finish reason and time to first token.

    ``prompt_tokens`` counts the prompt ids that are not padding (None when padding cannot be told apart from the
    prompt: no pad token, or pad == eos); ``new_tokens`` counts generated tokens up to and including the eos;
    ``stopped`` is True when an eos ended the row (False: cut at ``max_new_tokens``).
    """

    counted: bool = False
    prompt_tokens: int | None = None
    new_tokens: int = 0
    stopped: bool = False
    first_token_at: float | None = None


class BatchStreamer:
    """``put``/``end`` as ``generate`` calls them; ``sinks[r](text)`` receives row ``r``'s new text (None: not
    streamed). ``abandoned()`` returning True makes the next ``put`` raise :class:`BatchAbandoned`, which ends
    ``generate`` early. ``counts[r]``, if given, receives row ``r``'s :class:`RowCount` (``pad_id``: the padding
    id, to count the prompt's own tokens)."""

    def __init__(self, tokenizer, sinks: Sequence[Callable[[str], None] | None], eos_ids: Collection[int],
                 abandoned: Callable[[], bool] | None = None, counts: Sequence[RowCount] | None = None,
                 pad_id: int | None = None):
        self.tokenizer = tokenizer
        self.sinks = list(sinks)
        self.eos_ids = {int(e) for e in eos_ids}
        self.abandoned = abandoned
        self.counts = list(counts) if counts is not None else None
        self.pad_id = pad_id if pad_id is not None and pad_id not in self.eos_ids else None
        self.tokens: list[list[int]] = [[] for _ in self.sinks]
        self.done = [False] * len(self.sinks)
        self.sent = [""] * len(self.sinks)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first put is the prompt ids (B, T)
            self.prompt_seen = True
            self._count_prompts(value)
            return
        if self.abandoned is not None and self.abandoned():
            raise BatchAbandoned("every request of this batch has gone")
        now = time.perf_counter()
        steps = value.reshape(len(self.sinks), -1).tolist()  # (B,) per step; (B, k) if several tokens at once
        for row, new in enumerate(steps):
            if self.done[row]:
                continue
            count = self.counts[row] if self.counts is not None else None
            for token in new:
                if count is not None:
                    count.new_tokens += 1
                    count.first_token_at = count.first_token_at or now
                if token in self.eos_ids:
                    self.done[row] = True
                    if count is not None:
                        count.stopped = True
                    break
                self.tokens[row].append(int(token))
            self._flush(row, final=False)

    def _count_prompts(self, ids: torch.Tensor) -> None:
        if self.counts is None:
            return
        ids = ids.reshape(len(self.sinks), -1)  # (B, T): left padding, then the prompt
        own = (ids != self.pad_id).sum(dim=1).tolist() if self.pad_id is not None else [None] * len(self.sinks)
        for count, n in zip(self.counts, own):
            count.counted, count.prompt_tokens = True, n

    def end(self) -> None:
        for row in range(len(self.sinks)):
            self._flush(row, final=True)

    def _flush(self, row: int, *, final: bool) -> None:
        sink = self.sinks[row]
        if sink is None:
            return
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).lstrip()
        text = text.rstrip() if final else _stable_part(text)
        if text.startswith(self.sent[row]) and len(text) > len(self.sent[row]):
            sink(text[len(self.sent[row]):])
            self.sent[row] = text


def _stable_part(text: str) -> str:
    """What of a partly generated text can be sent now: not an unfinished character, not trailing whitespace."""
    cut = text.find(_INCOMPLETE)
    if cut >= 0:
        text = text[:cut]
    return text.rstrip()
