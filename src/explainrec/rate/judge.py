"""An LLM judge on the human rubric: the same criteria (Table 6) in the prompt, the score read from the model's
next-token probabilities over the digits "1".."5" (the expected value, so a judge torn between 3 and 4 says 3.5
rather than flipping a coin), one explanation and one dimension per prompt.

Its scores go into the study's ratings file as a rater named ``judge:MODEL``, so the report treats it like any
rater (its own table, and its agreement with the people). Unlike a person it sees one explanation at a time, so
the order of a pair's explanations cannot sway it.

Speed: every prompt of a dimension starts with the same system text and criterion; that shared token prefix is run
once and its KV cache reused, and the rest is right-padded (a real token never attends to the padding after it),
so the score is read at each row's own last token.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from explainrec.rate.rubric import DIMENSIONS, GUIDANCE, LEVELS, NAMES

DEFAULT_JUDGE = "smollm2-135m"
DIGITS = ("1", "2", "3", "4", "5")
PROMPT_VERSION = 1
SYSTEM = ("You rate explanations that a recommender system wrote to tell a user why they would like an item. You "
          "rate one criterion at a time, from 1 (worst) to 5 (best), and answer with the digit only.")
# the judge sees the pair's context for the dimensions that are about the user; text quality is about the text
WITH_CONTEXT = {"P": True, "Q": False, "U": True}


def judge_name(model: str) -> str:
    """The judge's rater name: ``judge:`` and the model id (a local folder or file: its name)."""
    path = Path(model).expanduser()
    return "judge:" + (path.name if path.exists() else str(model))


def messages(dimension: str, context: dict, text: str) -> list[dict]:
    """The chat for one explanation and one dimension: criterion first (shared by every prompt of the
    dimension), then the pair, the explanation and the question."""
    lines = [f"Criterion: {NAMES[dimension]}. {GUIDANCE[dimension]}"]
    lines += [f"{s}: {LEVELS[dimension][s]}" for s in (5, 4, 3, 2, 1)]
    lines.append("")
    if WITH_CONTEXT[dimension]:
        if context.get("user_profile"):
            lines.append(f"User profile: {context['user_profile']}")
        if context.get("history"):
            lines.append("Items the user had before: " + "; ".join(context["history"]))
        lines.append(f"Item: {context.get('title') or context['item']}")
        if context.get("item_profile"):
            lines.append(f"Item profile: {context['item_profile']}")
        lines.append("")
    lines.append(f"Explanation: {text.strip() or '(empty)'}")
    lines.append("")
    lines.append(f"Score the explanation's {NAMES[dimension]} from 1 to 5. Answer with one digit.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def digit_ids(tokenizer) -> list[int]:
    """The token ids of "1".."5"; each must be a single token (true of LLaMA-family tokenizers)."""
    ids = []
    for d in DIGITS:
        enc = tokenizer.encode(d, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"the judge's tokenizer splits the digit {d!r} into {len(enc)} tokens; it needs one "
                             "token per digit to read scores from the logits")
        ids.append(enc[0])
    return ids


class Judge:
    """A loaded causal LM that turns (dimension, context, text) into probabilities over the scores 1..5."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8):
        from explainrec.data.prompts import render_prompt

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.render = lambda chat: render_prompt(tokenizer, chat)
        self.device = next(model.parameters()).device
        self.digits = torch.tensor(digit_ids(tokenizer), device=self.device)

    def encode(self, chat: list[dict]) -> list[int]:
        return self.tokenizer(self.render(chat), add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def probabilities(self, chats: list[list[dict]], *, reuse_prefix: bool = True) -> np.ndarray:
        """``(len(chats), 5)``: softmax over the five digit logits at the answer's first token."""
        if not chats:
            return np.zeros((0, len(DIGITS)))
        encoded = [self.encode(c) for c in chats]
        n = _common_prefix(encoded) if reuse_prefix else 0
        prefix = self._prefix_states(encoded[0][:n]) if n else None
        out = np.zeros((len(chats), len(DIGITS)))
        order = sorted(range(len(chats)), key=lambda i: len(encoded[i]))  # similar lengths, less padding
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            logits = self._last_logits([encoded[i][n:] for i in rows], prefix, n)
            out[rows] = torch.softmax(logits[:, self.digits].float(), dim=-1).cpu().numpy()
        return out

    def _prefix_states(self, ids: list[int]):
        from explainrec.llm.generate import _cache_arg

        decoder = self.model.get_decoder()
        out = decoder(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        past = getattr(out, "cache", None) or out.past_key_values
        return [(layer.keys, layer.values) for layer in past.layers], _cache_arg(decoder)

    def _last_logits(self, suffixes: list[list[int]], prefix, n_prefix: int) -> torch.Tensor:
        """Logits at each row's last token: ``[prefix cache] + suffix`` right-padded."""
        from transformers import DynamicCache

        lengths = torch.tensor([len(s) for s in suffixes])
        width = int(lengths.max())
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=self.device)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        kwargs = {}
        if prefix is not None:
            layers, cache_arg = prefix
            b = len(suffixes)
            kwargs[cache_arg] = DynamicCache([(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in layers],
                                             config=self.model.config)
            mask = torch.cat([torch.ones(b, n_prefix, dtype=torch.long), mask], dim=1)
        hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask.to(self.device), use_cache=False,
                                          **kwargs).last_hidden_state
        rows = torch.arange(len(suffixes), device=self.device)
        last = hidden[rows, (lengths - 1).to(self.device)]  # (B, H)
        return self.model.get_output_embeddings()(last)


def _common_prefix(encoded: list[list[int]]) -> int:
    """Longest token prefix shared by every prompt, leaving each at least one token of its own."""
    shortest = min(len(e) for e in encoded)
    n = 0
    while n < shortest - 1 and all(e[n] == encoded[0][n] for e in encoded):
        n += 1
    return n


def expected(probs: np.ndarray) -> np.ndarray:
    """The expected score sum_s s * p(s) of each row of probabilities over 1..5."""
    return probs @ np.arange(1, len(DIGITS) + 1, dtype=float)


def judge_study(study, judge: Judge, name: str, *, model_id: str, pairs_per_step: int = 4, limit: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> int:
    """Score every pair the judge has not scored yet (every method, P, Q and U) and append one ratings line per
    pair as soon as it is scored (so a stopped run resumes where it stopped). Returns how many pairs it scored."""
    from explainrec.rate.ratings import JUDGE, append_rating, rating_record, read_ratings

    done = {p for (rater, p) in read_ratings(study).latest() if rater == name}
    todo = [k for k in range(len(study.pairs)) if k not in done][:limit]
    methods = study.method_names
    for start in range(0, len(todo), pairs_per_step):
        chunk = todo[start: start + pairs_per_step]
        probs = {}
        for d in DIMENSIONS:
            items = [(k, m) for k in chunk for m in methods]
            chats = [messages(d, study.pairs[k]["context"], study.pairs[k]["texts"][m]) for k, m in items]
            for (k, m), p in zip(items, judge.probabilities(chats)):
                probs.setdefault(k, {}).setdefault(m, {})[d] = p
        for k in chunk:
            scores = {m: {d: round(float(expected(probs[k][m][d][None])[0]), 4) for d in DIMENSIONS} for m in methods}
            detail = {m: {d: [round(float(x), 4) for x in probs[k][m][d]] for d in DIMENSIONS} for m in methods}
            append_rating(study.ratings_path, rating_record(study, name, JUDGE, k, scores, model=model_id,
                                                            probs=detail, prompt_version=PROMPT_VERSION))
        if progress is not None:
            progress(min(start + pairs_per_step, len(todo)), len(todo))
    return len(todo)
