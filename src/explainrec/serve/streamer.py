"""A streamer for one batched ``model.generate`` call that hands every row's text to its own consumer.

Hugging Face's ``TextIteratorStreamer`` handles a batch of one; the server generates many requests in one batch,
so this streamer keeps each row's new token ids, decodes them whole after every step (a token's text can depend
on its neighbours, e.g. multi-byte characters split over tokens) and passes on only the new part.

What a consumer receives concatenates to exactly the text :func:`explainrec.llm.generate.generate_texts` returns
for that row (which strips outer whitespace): leading whitespace is never sent and trailing whitespace is held
back until more text follows it.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch

# Sent while a character is still incomplete (its remaining bytes are in the next token): hold the text back.
_INCOMPLETE = "\ufffd"


class BatchAbandoned(RuntimeError):
    """Every request of the running batch has gone (disconnected or timed out): stop generating for nobody."""


class BatchStreamer:
    """``put``/``end`` as ``generate`` calls them; ``sinks[r](text)`` receives row ``r``'s new text (None: not
    streamed). ``abandoned()`` returning True makes the next ``put`` raise :class:`BatchAbandoned`, which ends
    ``generate`` early."""

    def __init__(self, tokenizer, sinks: Sequence[Callable[[str], None] | None], eos_ids: Collection[int],
                 abandoned: Callable[[], bool] | None = None):
        self.tokenizer = tokenizer
        self.sinks = list(sinks)
        self.eos_ids = {int(e) for e in eos_ids}
        self.abandoned = abandoned
        self.tokens: list[list[int]] = [[] for _ in self.sinks]
        self.done = [False] * len(self.sinks)
        self.sent = [""] * len(self.sinks)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first put is the prompt ids (B, T)
            self.prompt_seen = True
            return
        if self.abandoned is not None and self.abandoned():
            raise BatchAbandoned("every request of this batch has gone")
        steps = value.reshape(len(self.sinks), -1).tolist()  # (B,) per step; (B, k) if several tokens at once
        for row, new in enumerate(steps):
            if self.done[row]:
                continue
            for token in new:
                if token in self.eos_ids:
                    self.done[row] = True
                    break
                self.tokens[row].append(int(token))
            self._flush(row, final=False)

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
