"""How well an LLM imitates the recommender: the paper's alignment metrics on held-out alignment rows.

    Task 1  next_item   HR@5 / NDCG@5: 5 beams, exact lower-case title match against the recommender's top-1
                        (paper). "ours" (not in the paper): every catalogue name scored by the LM's likelihood
                        of it as the answer (title tokens + eos, the prompt's KV cache reused), top 5 ranked --
                        exact match is harsh for a 135M model
    Task 2  ranking     graded NDCG@5 (gains 1000/100/10/1/0 by the recommender's rank) of the candidate order
                        parsed from the generated text (the order of first mention of each candidate's name)
    Task 3  interest    accuracy of Yes vs No from the next-token logits after the prompt
    Task 6  history     HCR: the share of generated titles (split at ';' or newlines) that are in the true history

Every function takes ``model``: a :class:`~explainrec.methods.recexplainer.modeling.RecExplainerModel` (its soft
ids are read from the rows) or a plain HF causal LM (behaviour rows only); the untrained LLM is just the same
functions on the base model. :func:`baseline_metrics` gives the random and popularity rows of the paper's table.
"""
from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from explainrec.data.prompts import render_prompt
from explainrec.methods.recexplainer.alignment_data import LIST_SEP, NO, YES
from explainrec.methods.recexplainer.modeling import pad_soft_ids
from explainrec.metrics.ranking import candidate_list_metrics, graded_ndcg

_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------------------------------------------- plumbing


def _lm(model):
    return getattr(model, "llm", model)


def _embed(model, ids: Tensor, soft: Sequence[Sequence[int]]) -> Tensor:
    """Input embeddings of a left-padded batch; soft ids only through a RecExplainerModel."""
    if hasattr(model, "embed"):
        return model.embed(ids, pad_soft_ids(soft).to(ids.device))
    if any(len(s) for s in soft):
        raise ValueError("rows with soft ids need a RecExplainerModel, not a plain LM")
    return _lm(model).get_input_embeddings()(ids)


def _device(model) -> torch.device:
    return next(_lm(model).parameters()).device


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, width - len(r):] = 1
    return ids, mask


def _cache_arg(lm) -> str:
    """The forward keyword for a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values`` (older)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def prompts_of(tokenizer, rows: Sequence[dict]) -> list[str]:
    """The rendered prompt of every row (chat template, ending where the answer starts)."""
    return [r["prompt"] if isinstance(r["prompt"], str) else render_prompt(tokenizer, r["prompt"]) for r in rows]


def normalize(text: str) -> str:
    """Lower-case words joined by single spaces: how titles are compared."""
    return " ".join(_WORD.findall(text.lower()))


# ---------------------------------------------------------------------------------------------------- Task 3


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """First token of "Yes" and of "No" as an answer starts (right after the generation prompt)."""
    yes = tokenizer(YES, add_special_tokens=False)["input_ids"]
    no = tokenizer(NO, add_special_tokens=False)["input_ids"]
    if not yes or not no or yes[0] == no[0]:
        raise ValueError(f"the tokenizer does not tell 'Yes' ({yes}) from 'No' ({no}) by their first token")
    return yes[0], no[0]


def yes_no_from_logits(logits: Tensor, yes_id: int, no_id: int) -> Tensor:
    """``(N, V)`` next-token logits -> ``(N,)`` bool, True where "Yes" beats "No" (ties: No)."""
    return logits[:, yes_id] > logits[:, no_id]


@torch.no_grad()
def next_token_logits(model, tokenizer, prompts: Sequence[str], soft_ids: Sequence[Sequence[int]] | None = None,
                      *, batch_size: int = 8) -> Tensor:
    """``(N, V)`` float32 logits of the token after each prompt (left-padded batches, soft ids spliced)."""
    soft_ids = soft_ids if soft_ids is not None else [[] for _ in prompts]
    lm, dev = _lm(model), _device(model)
    was = lm.training
    lm.eval()
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    out = []
    try:
        for lo in range(0, len(encoded), batch_size):
            ids, mask = _left_pad(encoded[lo: lo + batch_size], _pad_id(tokenizer))
            ids, mask = ids.to(dev), mask.to(dev)
            emb = _embed(model, ids, soft_ids[lo: lo + batch_size])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False,
                        logits_to_keep=1).logits  # the head on the last position only
            out.append(logits[:, -1].float().cpu())
    finally:
        lm.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def decisions(model, tokenizer, rows: Sequence[dict], *, batch_size: int = 8) -> np.ndarray:
    """The model's Yes (True) / No on each row's prompt, from the next-token logits (Task 3's reading)."""
    yes_id, no_id = yes_no_token_ids(tokenizer)
    logits = next_token_logits(model, tokenizer, prompts_of(tokenizer, rows), [r["soft_ids"] for r in rows],
                               batch_size=batch_size)
    return yes_no_from_logits(logits, yes_id, no_id).numpy()


def interest_accuracy(model, tokenizer, rows: Sequence[dict], *, batch_size: int = 8) -> dict:
    """Task 3: accuracy of the Yes/No decision from the next-token logits against the rows' (recommender) labels."""
    rows = [r for r in rows if r["task"] == "interest"]
    if not rows:
        return {"accuracy": float("nan"), "yes_rate": float("nan"), "n": 0}
    pred = torch.from_numpy(decisions(model, tokenizer, rows, batch_size=batch_size))
    truth = torch.tensor([r["target"] == YES for r in rows])
    return {"accuracy": float((pred == truth).float().mean()), "yes_rate": float(pred.float().mean()), "n": len(rows)}


# ---------------------------------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_candidates(model, tokenizer, prompts: Sequence[str], soft_ids: Sequence[Sequence[int]] | None = None, *,
                        num_beams: int = 5, num_return: int | None = None, max_new_tokens: int = 32,
                        batch_size: int = 4) -> list[list[str]]:
    """Beam search: the ``num_return`` (default ``num_beams``) best continuations of every prompt, best first."""
    soft_ids = soft_ids if soft_ids is not None else [[] for _ in prompts]
    k = num_return or num_beams
    lm, dev = _lm(model), _device(model)
    was = lm.training
    lm.eval()
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    results: list[list[str]] = []
    try:
        for lo in range(0, len(encoded), batch_size):
            ids, mask = _left_pad(encoded[lo: lo + batch_size], _pad_id(tokenizer))
            ids, mask = ids.to(dev), mask.to(dev)
            emb = _embed(model, ids, soft_ids[lo: lo + batch_size])
            out = lm.generate(input_ids=ids, inputs_embeds=emb, attention_mask=mask, num_beams=num_beams,
                              num_return_sequences=k, do_sample=False, max_new_tokens=max_new_tokens,
                              pad_token_id=_pad_id(tokenizer), eos_token_id=eos)
            texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            results += [[t.strip() for t in texts[b * k:(b + 1) * k]] for b in range(ids.shape[0])]
    finally:
        lm.train(was)
    return results


def generate_greedy(model, tokenizer, rows: Sequence[dict], *, max_new_tokens: int = 96, batch_size: int = 8) -> list[str]:
    """Greedy answers to the rows' prompts through :func:`explainrec.llm.generate.generate_texts`."""
    from explainrec.llm.generate import generate_texts
    from explainrec.llm.hooks import GenerationHooks

    embed_fn = model.embed_fn([r["soft_ids"] for r in rows]) if hasattr(model, "embed_fn") else None
    return generate_texts(_lm(model), tokenizer, prompts_of(tokenizer, rows), batch_size=batch_size,
                          max_new_tokens=max_new_tokens, hooks=GenerationHooks(embed_fn=embed_fn), progress=False)


# ---------------------------------------------------------------------------------------------------- Task 1


def next_item_metrics(model, tokenizer, rows: Sequence[dict], names: Sequence[str], *, k: int = 5,
                      max_new_tokens: int = 32, batch_size: int = 4) -> dict:
    """Task 1 (paper): HR@k / NDCG@k of ``k`` beams against the target title, exact lower-case match."""
    rows = [r for r in rows if r["task"] == "next_item"]
    beams = generate_candidates(model, tokenizer, prompts_of(tokenizer, rows), [r["soft_ids"] for r in rows],
                                num_beams=k, max_new_tokens=max_new_tokens, batch_size=batch_size)
    targets = [names[r["items"][0]].strip().lower() for r in rows]
    return candidate_list_metrics([[b.strip().lower() for b in bs] for bs in beams], targets, k=k)


def _answer_ids(tokenizer, prompt: str, text: str) -> list[int]:
    """Token ids of ``text`` as the answer after ``prompt`` plus eos, exactly as training encodes targets."""
    t = tokenizer(" " + text.strip() if not prompt.endswith((" ", "\n")) else text.strip(),
                  add_special_tokens=False)["input_ids"]
    return t + [tokenizer.eos_token_id]


@torch.no_grad()
def answer_log_likelihoods(model, tokenizer, prompt: str, soft_ids: Sequence[int], answers: Sequence[str], *,
                           chunk: int = 256) -> Tensor:
    """``(len(answers),)`` log p(answer + eos | prompt) under the model; the prompt runs once, its KV cache is
    copied for every chunk of answers."""
    lm, dev = _lm(model), _device(model)
    was = lm.training
    lm.eval()
    try:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=dev)  # (1, P)
        emb = _embed(model, ids, [list(soft_ids)])
        first = lm(inputs_embeds=emb, use_cache=True)
        past = getattr(first, "cache", None) or first.past_key_values
        cache_arg = _cache_arg(lm)
        first_logp = torch.log_softmax(first.logits[0, -1].float(), -1)  # (V,)
        p_len = ids.shape[1]
        scores = []
        toks_all = [_answer_ids(tokenizer, prompt, a) for a in answers]
        for lo in range(0, len(toks_all), chunk):
            toks = toks_all[lo: lo + chunk]
            c, width = len(toks), max(len(t) for t in toks)
            tok = torch.full((c, width), _pad_id(tokenizer), dtype=torch.long, device=dev)
            tmask = torch.zeros((c, width), dtype=torch.long, device=dev)
            for j, t in enumerate(toks):
                tok[j, : len(t)] = torch.tensor(t, device=dev)
                tmask[j, : len(t)] = 1
            total = first_logp[tok[:, 0]]  # (c,)
            if width > 1:
                cache = copy.deepcopy(past)
                cache.batch_repeat_interleave(c)
                mask = torch.cat([torch.ones((c, p_len), dtype=torch.long, device=dev), tmask], dim=1)
                pos = (p_len + torch.arange(width - 1, device=dev)).unsqueeze(0).expand(c, -1)
                out = lm(input_ids=tok[:, :-1], attention_mask=mask[:, :-1], position_ids=pos,
                         use_cache=True, **{cache_arg: cache})
                logp = torch.log_softmax(out.logits.float(), -1)  # (c, width-1, V)
                step = logp.gather(2, tok[:, 1:].unsqueeze(-1)).squeeze(-1)  # (c, width-1)
                total = total + (step * tmask[:, 1:]).sum(1)
            scores.append(total.cpu())
    finally:
        lm.train(was)
    return torch.cat(scores)


def next_item_catalogue_metrics(model, tokenizer, rows: Sequence[dict], names: Sequence[str], *, k: int = 5,
                                catalogue: Sequence[int] | None = None, exclude_history: bool = True,
                                chunk: int = 256) -> dict:
    """Task 1, "ours" (not the paper's metric): rank the catalogue's names by the LM's likelihood as the answer.

    ``catalogue`` limits the items scored (default: all); the row's history items are left out like the
    recommender's masking. HR@k / NDCG@k against the target item. Costs one prompt pass + |catalogue| short answer
    passes per row: fine for small catalogues or a few hundred rows, slow for google's 16k items on a CPU.
    """
    rows = [r for r in rows if r["task"] == "next_item"]
    items = np.arange(len(names)) if catalogue is None else np.asarray(catalogue, dtype=np.int64)
    ranked, targets = [], []
    for row, prompt in zip(rows, prompts_of(tokenizer, rows)):
        pool = items
        if exclude_history and row.get("history"):
            pool = items[~np.isin(items, row["history"])]
        ll = answer_log_likelihoods(model, tokenizer, prompt, row["soft_ids"], [names[i] for i in pool], chunk=chunk)
        top = pool[torch.topk(ll, min(k, len(pool))).indices.numpy()]
        ranked.append([int(i) for i in top])
        targets.append(int(row["items"][0]))
    return {**candidate_list_metrics(ranked, targets, k=k), "method": "ours: catalogue likelihood"}


# ---------------------------------------------------------------------------------------------------- Task 2


def find_mentions(text: str, names: dict[str, int], max_words: int | None = None) -> list[tuple[int, int]]:
    """``(word position, id)`` of every name of ``names`` (normalised name -> id) mentioned in ``text``.

    Greedy longest match from left to right over the text's words, so "starbucks reserve" wins over "starbucks"
    and a name never matches inside a longer word ("item 12" does not match "item 123").
    """
    words = _WORD.findall(text.lower())
    longest = max_words or max((n.count(" ") + 1 for n in names), default=0)
    found, i = [], 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            hit = names.get(" ".join(words[i:i + n]))
            if hit is not None:
                found.append((i, hit))
                i += n
                break
        else:
            i += 1
    return found


def parse_ranking(text: str, candidates: Sequence[int], names: Sequence[str]) -> list[int]:
    """The candidates in the order the text first mentions them (unmentioned ones are left out)."""
    table = {normalize(names[c]): int(c) for c in candidates}
    order: list[int] = []
    for _, c in find_mentions(text, table):
        if c not in order:
            order.append(c)
    return order


def ranking_ndcg(model, tokenizer, rows: Sequence[dict], names: Sequence[str], *, max_new_tokens: int = 96,
                 batch_size: int = 8) -> dict:
    """Task 2: mean graded NDCG@5 of the parsed generated order; ``parsed`` = share of candidates mentioned."""
    rows = [r for r in rows if r["task"] == "ranking"]
    texts = generate_greedy(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
    scores, parsed = [], []
    for row, text in zip(rows, texts):
        order = parse_ranking(text, row["items"], names)
        scores.append(graded_ndcg(order, row["items"]))
        parsed.append(len(order) / len(row["items"]))
    return {"ndcg@5": float(np.mean(scores)) if scores else float("nan"),
            "parsed": float(np.mean(parsed)) if parsed else float("nan"), "n": len(rows)}


# ---------------------------------------------------------------------------------------------------- Task 6


def split_titles(text: str) -> list[str]:
    """Generated titles: the text split at ';' and newlines, list markers stripped, empty parts dropped."""
    parts = re.split(r"[;\n]", text)
    return [p for p in (re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", q).strip() for q in parts) if p]


def history_coverage(model, tokenizer, rows: Sequence[dict], names: Sequence[str], *, max_new_tokens: int = 160,
                     batch_size: int = 8) -> dict:
    """Task 6 HCR: share of generated titles that are in the row's true history (``catalogue`` = share that are
    any catalogue name at all)."""
    rows = [r for r in rows if r["task"] == "history"]
    texts = generate_greedy(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
    catalogue = {normalize(n) for n in names}
    hits = in_cat = total = 0
    for row, text in zip(rows, texts):
        history = {normalize(names[i]) for i in row["history"]}
        for title in split_titles(text):
            t = normalize(title)
            total += 1
            hits += t in history
            in_cat += t in catalogue
    return {"hcr": hits / total if total else 0.0, "catalogue": in_cat / total if total else 0.0,
            "titles": total, "n": len(rows)}


# ---------------------------------------------------------------------------------------------------- all + baselines


def evaluate_alignment(model, tokenizer, rows: Sequence[dict], names: Sequence[str], *,
                       tasks: Sequence[str] = ("next_item", "ranking", "interest", "history"),
                       limit: int | None = None, catalogue_ranking: bool = True, batch_size: int = 8) -> dict:
    """Every alignment metric on the test rows (``limit`` = at most that many rows per task, the first ones)."""
    rows = [r for r in rows if r.get("split", "test") == "test"]
    by_task = {t: [r for r in rows if r["task"] == t][:limit] for t in tasks}
    out: dict = {}
    if by_task.get("next_item"):
        out["next_item"] = next_item_metrics(model, tokenizer, by_task["next_item"], names)
        if catalogue_ranking:
            out["next_item_catalogue"] = next_item_catalogue_metrics(model, tokenizer, by_task["next_item"], names)
    if by_task.get("ranking"):
        out["ranking"] = ranking_ndcg(model, tokenizer, by_task["ranking"], names, batch_size=batch_size)
    if by_task.get("interest"):
        out["interest"] = interest_accuracy(model, tokenizer, by_task["interest"], batch_size=batch_size)
    if by_task.get("history"):
        out["history"] = history_coverage(model, tokenizer, by_task["history"], names, batch_size=batch_size)
    return out


def baseline_metrics(rows: Sequence[dict], popularity: Sequence[float] | np.ndarray, *, seed: int = 0,
                     k: int = 5) -> dict[str, dict]:
    """The paper's Random and Popularity rows on the same test rows.

    Task 1: k random / the k most popular non-history items; Task 2: a random / popularity order of the
    candidates; Task 3: a fair coin / "Yes" when the item is at least as popular as the median item (not in the
    paper's table). ``popularity (I,)``: train interactions per item.
    """
    pop = np.asarray(popularity, dtype=np.float64)
    n_items = len(pop)
    rng = np.random.default_rng(seed)
    by_pop = np.argsort(-pop, kind="stable")
    median = float(np.median(pop))
    out: dict[str, dict] = {"random": {}, "popularity": {}}
    test = [r for r in rows if r.get("split", "test") == "test"]
    t1 = [r for r in test if r["task"] == "next_item"]
    if t1:
        rand_lists, pop_lists = [], []
        for r in t1:
            hist = set(r.get("history", []))
            free = np.setdiff1d(np.arange(n_items), list(hist))
            rand_lists.append(list(rng.choice(free, size=min(k, len(free)), replace=False)))
            pop_lists.append([int(i) for i in by_pop if i not in hist][:k])
        targets = [r["items"][0] for r in t1]
        out["random"]["next_item"] = candidate_list_metrics(rand_lists, targets, k=k)
        out["popularity"]["next_item"] = candidate_list_metrics(pop_lists, targets, k=k)
    t2 = [r for r in test if r["task"] == "ranking"]
    if t2:
        out["random"]["ranking"] = {"ndcg@5": float(np.mean([graded_ndcg(list(rng.permutation(r["items"])), r["items"])
                                                             for r in t2])), "n": len(t2)}
        out["popularity"]["ranking"] = {"ndcg@5": float(np.mean([
            graded_ndcg(sorted(r["items"], key=lambda i: (-pop[i], i)), r["items"]) for r in t2])), "n": len(t2)}
    t3 = [r for r in test if r["task"] == "interest"]
    if t3:
        truth = np.array([r["target"] == YES for r in t3])
        coin = rng.random(len(t3)) < 0.5
        popular = np.array([pop[r["items"][0]] >= median for r in t3])
        out["random"]["interest"] = {"accuracy": float((coin == truth).mean()), "n": len(t3)}
        out["popularity"]["interest"] = {"accuracy": float((popular == truth).mean()), "n": len(t3)}
    return out


def expected_random_graded_ndcg(n: int = 5) -> float:
    """The expected graded NDCG of a uniformly random order of ``n`` candidates (about 0.61 for 5)."""
    from explainrec.metrics.ranking import TASK2_GAINS

    gains = list(TASK2_GAINS[:n]) + [0.0] * max(0, n - len(TASK2_GAINS))
    disc = [1.0 / math.log2(r + 2) for r in range(n)]
    return (sum(gains) / n) * sum(disc) / sum(g * d for g, d in zip(gains, disc))


__all__ = ["LIST_SEP", "answer_log_likelihoods", "baseline_metrics", "decisions", "evaluate_alignment",
           "expected_random_graded_ndcg", "find_mentions", "generate_candidates", "generate_greedy", "history_coverage",
           "interest_accuracy", "next_item_catalogue_metrics", "next_item_metrics", "next_token_logits", "normalize", "parse_ranking",
           "ranking_ndcg", "split_titles", "yes_no_from_logits", "yes_no_token_ids"]
