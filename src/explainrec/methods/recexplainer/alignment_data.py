"""RecExplainer's alignment data: questions about users and items answered by the recommender, never the dataset.

The recommender (:mod:`~explainrec.methods.recexplainer.recommenders`) is queried once for all users, in batches
(one matmul per batch, no per-user loop), by :func:`query_recommender`; rows are then rendered for one variant.
Tasks (method notes sec. 2 and 7; the MF/LightGCN recipe: one user vector, so rows are per user, not per prefix):

    1 next_item     the user (history)              -> the title of the recommender's top-1 non-history item
    2 ranking       the user + 5 uniformly drawn non-history candidates, shuffled
                                                    -> the 5 titles in the recommender's order ("; "-separated)
    3 interest      the user + one item             -> "Yes" (item from the top 20% of the user's scores) or
                                                       "No" (bottom 50%), one balanced pair per user
    4 item_title / item_profile / profile_item / item_similar
                    an item -> its title / its profile / (behaviour only) profile -> title /
                    the title of its nearest item by dot product in the recommender's item space
    6 history       the user -> their last N history titles (intention and hybrid: from <user> alone)
      summary       the user -> a summary of their taste: the data's ``user_profile`` stands in for the
                    release's GPT-4 (0314) summaries (a deviation: XRec's profiles are LLM-written too, but not
                    from the recommender's point of view); users without a profile get no summary row
    5 replay        generic instructions answered by the frozen base LLM (self-distillation against forgetting,
                    standing in for ShareGPT); optional and off by default: :func:`replay_rows` needs the LLM

Variants: ``behaviour`` -- titles only (no <user>/<item> tokens; no history / item_title task: nothing to decode);
``intention`` -- a ``<|user_emb|>`` token replaces the history and an ``<|item_emb|>`` token each item;
``hybrid`` -- both, ``"<|user_emb|>, who recently interacted with: history"`` and ``"<|item_emb|> title"``, plus
the intention-form item_title and history rows (as the release does). Each placeholder's id travels in the row's
``soft_ids`` (in order of appearance in the prompt), so the model reads the vector from the batch.

Splits: about 10% of users (a stable hash of the raw user id and the seed) are held out: their Tasks 1, 2 and 6
rows are the ``test`` rows, and they have no train rows of those tasks. Task 3's train pair of every user is drawn
away from the user's test-split items; its test rows come from the dataset's test split: a test item of the user
whose recommender label is defined (top 20% -> Yes, bottom 50% -> No; the middle 30% is skipped), paired with an
opposite-label item drawn like the train pairs, so the test rows are balanced too. Task 4 rows are train only.

Names: XRec's data carries a title only on explained pairs (``Example.title``; google: 2,531 of 16,557 items), the
synthetic data on every item. An item without a title is called ``item <raw id>``; a title several items share
(google: 37 "In-N-Out Burger") gets ``(item <raw id>)`` appended so that a name always means one item; ``;``
inside a title becomes ``,`` (lists are ``; ``-separated) and titles are cut at ``max_title_chars`` on a word
boundary (Amazon's run to 160 characters).

Determinism: the same dataset, recommender, seed and ``user_batch`` give the same rows (private generators;
template draws are per task, so every variant of one seed asks about the same pairs with the same templates).
"""
from __future__ import annotations

import functools
import json
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
from explainrec.data.schema import Dataset
from explainrec.data.splits import hash_unit
from explainrec.metrics.ranking import csr_of_pairs

VARIANTS = ("behaviour", "intention", "hybrid")
TASK_NUMBER = {"next_item": 1, "ranking": 2, "interest": 3, "item_title": 4, "item_profile": 4, "profile_item": 4,
               "item_similar": 4, "replay": 5, "history": 6, "summary": 6}
VARIANT_TASKS = {
    "behaviour": ("next_item", "ranking", "interest", "item_profile", "profile_item", "item_similar", "summary"),
    "intention": ("next_item", "ranking", "interest", "item_title", "item_profile", "item_similar", "history",
                  "summary"),
    "hybrid": ("next_item", "ranking", "interest", "item_title", "item_profile", "item_similar", "history",
               "summary"),
}
YES, NO = "Yes", "No"
LIST_SEP = "; "

SYSTEM_PROMPT = ("You explain a recommender system. Answer questions about its users and items as the "
                 "recommender would.")

# Paraphrased templates; one is drawn per example. Fields: {user}, {item}, {candidates}, {profile}.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "next_item": (
        "Here is {user}. Which item will the recommender suggest next? Reply with the item's title only.",
        "Given {user}, predict the next item the recommender would recommend. Answer with the title only.",
        "What is the single best next item for {user}, according to the recommender? Title only.",
        "The recommender is about to suggest one item to {user}. Which one? Give its title.",
        "Name the item the recommender ranks first for {user}. Answer with the title.",
    ),
    "ranking": (
        ("Here is {user}. Rank these candidates as the recommender would, best first: {candidates}. "
         "Reply with the titles in order, separated by semicolons."),
        ("Order the following items for {user} from most to least recommended: {candidates}. "
         "Give the titles separated by semicolons."),
        ("The recommender scores these items for {user}: {candidates}. List their titles from highest to lowest "
         "score, separated by semicolons."),
        ("Sort {candidates} by how strongly the recommender would suggest them to {user}. Titles only, best first, "
         "separated by semicolons."),
    ),
    "interest": (
        "Would the recommender think {user} likes {item}? Answer Yes or No.",
        "Is {item} a good match for {user}? Answer Yes or No.",
        "Here is {user}. Will they enjoy {item}? Reply Yes or No.",
        "Does the recommender predict that {user} is interested in {item}? Yes or No.",
    ),
    "item_title": (
        "What is the title of {item}?",
        "Name this item: {item}.",
        "Which item is {item}? Give its title.",
        "Tell me the title of the item {item}.",
    ),
    "item_profile": (
        "Describe {item}.",
        "Who would enjoy {item}? Describe it briefly.",
        "Give a short description of {item}.",
        "What is {item} like?",
    ),
    "profile_item": (
        "Which item fits this description? {profile} Answer with the title only.",
        "Name the item described here: {profile}",
        "{profile} Which item is this? Give its title.",
        "Find the item that matches: {profile} Title only.",
    ),
    "item_similar": (
        "Which item does the recommender consider most similar to {item}? Title only.",
        "Name the item closest to {item} in the recommender's view.",
        "According to the recommender, which other item is most like {item}?",
        "Give the title of the item most similar to {item}.",
    ),
    "history": (
        "List the items {user} has recently interacted with, separated by semicolons.",
        "Which items are in the recent history of {user}? Titles separated by semicolons.",
        "Recall the recent interactions of {user}. Give the titles, separated by semicolons.",
        "What has {user} interacted with lately? List the titles, separated by semicolons.",
    ),
    "summary": (
        "Summarise the preferences of {user} in a few sentences.",
        "What does {user} like? Answer in a short paragraph.",
        "Describe the taste of {user}.",
        "Write a short profile of {user}'s interests.",
    ),
}

# Generic instructions for the optional Task 5 replay (self-distillation by the frozen base model).
REPLAY_INSTRUCTIONS = (
    "Give three tips for staying focused while studying.",
    "Explain what a recommender system is in two sentences.",
    "Write a short poem about autumn leaves.",
    "What is the difference between weather and climate?",
    "Suggest a name for a small coffee shop and explain it.",
    "Summarise the plot of a fairy tale you know in three sentences.",
    "How do I boil an egg?",
    "List four healthy breakfast ideas.",
    "Why is the sky blue? Answer briefly.",
    "Write a polite email declining a meeting invitation.",
    "What are the benefits of regular exercise?",
    "Translate 'good morning' into French and Spanish.",
    "Describe a cat to someone who has never seen one.",
    "Give me a simple recipe for a tomato salad.",
    "What should I pack for a weekend hiking trip?",
    "Explain the rules of tic-tac-toe.",
    "Write two sentences encouraging a friend before an exam.",
    "What is photosynthesis? Keep it short.",
    "Suggest three board games for a family evening.",
    "How can I save money on groceries?",
    "Write a haiku about the sea.",
    "What makes a good book review?",
    "Explain what a budget is to a child.",
    "Give three reasons people enjoy travelling.",
)


# ---------------------------------------------------------------------------------------------------- names


def item_names(dataset: Dataset, *, max_title_chars: int = 60) -> list[str]:
    """One display name per item (contiguous id order); see "Names" in the module docstring."""
    titles: list[str | None] = [None] * dataset.n_items
    for e in dataset.examples:
        if titles[e.item] is None and e.title and e.title.strip():
            titles[e.item] = _shorten(" ".join(e.title.replace(";", ",").split()), max_title_chars)
    raw = dataset.items.raw
    counts: dict[str, int] = {}
    for t in titles:
        if t is not None:
            counts[t.lower()] = counts.get(t.lower(), 0) + 1
    out = []
    for i, t in enumerate(titles):
        if t is None:
            out.append(f"item {raw[i]}")
        elif counts[t.lower()] > 1:
            out.append(f"{t} (item {raw[i]})")
        else:
            out.append(t)
    return out


def named_items(dataset: Dataset) -> np.ndarray:
    """``(I,)`` bool: items the data gives a title (XRec's google: 2,531 of 16,557; synthetic: all)."""
    named = np.zeros(dataset.n_items, dtype=bool)
    for e in dataset.examples:
        if e.title and str(e.title).strip():
            named[e.item] = True
    return named


def _shorten(text: str, limit: int) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return (cut or text[:limit]).rstrip(" ,.:-(")


def user_profiles(dataset: Dataset) -> list[str | None]:
    """Each user's ``user_profile`` (first non-empty one among their examples), None where the data has none."""
    out: list[str | None] = [None] * dataset.n_users
    for e in dataset.examples:
        if out[e.user] is None and e.user_profile and e.user_profile.strip():
            out[e.user] = e.user_profile.strip()
    return out


def item_profiles(dataset: Dataset) -> list[str | None]:
    """Each item's ``item_profile`` (first non-empty one), None where the data has none."""
    out: list[str | None] = [None] * dataset.n_items
    for e in dataset.examples:
        if out[e.item] is None and e.item_profile and e.item_profile.strip():
            out[e.item] = e.item_profile.strip()
    return out


# ---------------------------------------------------------------------------------------------------- queries


@dataclass
class RecommenderQueries:
    """What the recommender answered, for the queried ``users`` (row n = ``users[n]``); -1 marks "none"."""

    users: np.ndarray  # (n,) contiguous user ids
    history: np.ndarray  # (n, N) last N train items, oldest first, left-padded with -1
    top: np.ndarray  # (n, k) best non-history items, best first
    candidates: np.ndarray  # (n, C) C distinct non-history items in the recommender's order (best first)
    candidates_shown: np.ndarray  # (n, C) the same items in the (shuffled) order the prompt shows them
    pos: np.ndarray  # (n,) Task 3 train: an item from the top ``pos_frac`` of the user's scores
    neg: np.ndarray  # (n,) Task 3 train: an item from the bottom ``neg_frac``
    pos_score: np.ndarray  # (n,) float32 raw scores of pos / neg
    neg_score: np.ndarray
    test_item: np.ndarray  # (n,) Task 3 test: a test-split item of the user with a defined label
    test_label: np.ndarray  # (n,) 1 = Yes (top band), 0 = No (bottom band), -1 = no such item
    test_partner: np.ndarray  # (n,) an item of the opposite label (balances the test rows)
    test_score: np.ndarray  # (n,) float32 scores of test_item / test_partner
    partner_score: np.ndarray
    nearest: np.ndarray  # (I,) every item's nearest other item by dot product of item vectors
    pos_frac: float = 0.2
    neg_frac: float = 0.5


def _rank_of(scores: Tensor, items: Tensor) -> Tensor:
    """``(b, I)`` scores, ``(b,)`` items -> ``(b,)`` how many items score strictly higher (0 = best)."""
    s = scores.gather(1, items.clamp(min=0).unsqueeze(1))  # (b, 1)
    return (scores > s).sum(1, dtype=torch.int32).long()  # an int32 sum is ~2.5x faster than the default int64


def _draw(scores: Tensor, lo: Tensor, hi: Tensor, gen: torch.Generator, exclude: Tensor | None = None, *,
          ranked: bool = True, rounds: int = 64) -> Tensor:
    """One uniform non-history item per row whose rank lies in ``[lo, hi)`` and is not in ``exclude``, else -1.

    Rejection sampling (a random item, its rank by one comparison row) -- about ``I / band`` comparisons per row
    instead of a full sort; rows still open after ``rounds`` draw exactly among their band's items.
    ``scores (b, I)`` with history at -inf; ``lo, hi (b,)``; ``exclude (b, e)`` items, -1 padded. ``ranked=False``
    skips the rank test (the band is every non-history item; ``hi`` then only marks rows with ``hi > lo``).
    """
    b, n_items = scores.shape
    out = torch.full((b,), -1, dtype=torch.long)
    todo = torch.nonzero(hi > lo).squeeze(1)
    for _ in range(rounds):
        if len(todo) == 0:
            return out
        cand = torch.randint(0, n_items, (len(todo),), generator=gen)
        s = scores[todo, cand]  # (t,)
        ok = torch.isfinite(s)
        if ranked:
            rows = scores if len(todo) == b else scores[todo]  # (t, I)
            rank = (rows > s.unsqueeze(1)).sum(1, dtype=torch.int32)  # int32: ~2.5x faster than int64
            ok &= (rank >= lo[todo]) & (rank < hi[todo])
        if exclude is not None and exclude.shape[1]:
            ok &= ~(exclude[todo] == cand.unsqueeze(1)).any(1)
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
    if len(todo):  # exact fallback: ranks of every item of the open rows
        rows = scores[todo]
        order = rows.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n_items).expand_as(order))
        ok = torch.isfinite(rows)
        if ranked:
            ok &= (rank >= lo[todo].unsqueeze(1)) & (rank < hi[todo].unsqueeze(1))
        if exclude is not None and exclude.shape[1]:
            hit = torch.zeros_like(ok)
            ex = exclude[todo]
            hit.scatter_(1, ex.clamp(min=0), ex >= 0)
            ok &= ~hit
        keys = torch.rand(rows.shape, generator=gen).masked_fill(~ok, -1.0)
        best = keys.argmax(1)
        out[todo] = torch.where(ok.any(1), best, torch.full_like(best, -1))
    return out


def _draw_distinct(scores: Tensor, n_valid: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """``(b, k)`` distinct uniform non-history items per row (rows with fewer than k such items: all -1)."""
    b = scores.shape[0]
    out = torch.full((b, k), -1, dtype=torch.long)
    rows_ok = n_valid >= k
    zero, one = torch.zeros(b, dtype=torch.long), rows_ok.long()
    for j in range(k):
        out[:, j] = _draw(scores, zero, one, gen, exclude=out[:, :j], ranked=False)
    out[~rows_ok] = -1
    return out


def _padded_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, width: int | None = None) -> Tensor:
    """``(b, m)`` the CSR entries of ``rows``, right-padded with -1 (m = the longest row, or ``width``)."""
    counts = indptr[rows + 1] - indptr[rows]
    m = int(counts.max(initial=0)) if width is None else width
    out = np.full((len(rows), m), -1, dtype=np.int64)
    if m:
        col = np.arange(m)[None]
        idx = indptr[rows][:, None] + col
        ok = col < np.minimum(counts, m)[:, None]
        out[ok] = indices[idx[ok]]
    return torch.from_numpy(out)


@torch.no_grad()
def nearest_items(item_vectors: Tensor, *, batch_size: int = 2048, allowed: Tensor | None = None) -> np.ndarray:
    """``(I,)`` each item's most similar other item by dot product (the release's sim_item.txt), in batches;
    with ``allowed (I,)`` bool the neighbour is an allowed item and disallowed items get -1."""
    n = item_vectors.shape[0]
    out = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return out
    for lo in range(0, n, batch_size):
        sims = item_vectors[lo: lo + batch_size] @ item_vectors.T  # (b, I)
        idx = torch.arange(lo, min(lo + batch_size, n))
        sims[idx - lo, idx] = -torch.inf
        if allowed is not None:
            sims[:, ~allowed] = -torch.inf
        best = sims.argmax(1)
        ok = torch.isfinite(sims.gather(1, best.unsqueeze(1)).squeeze(1))
        if allowed is not None:
            ok &= allowed[idx]
        out[lo: lo + batch_size] = torch.where(ok, best, torch.full_like(best, -1)).numpy()
    return out


@torch.no_grad()
def query_recommender(
    rec,
    dataset: Dataset,
    users: Sequence[int] | np.ndarray | None = None,
    *,
    top_k: int = 1,
    n_candidates: int = 5,
    pos_frac: float = 0.2,
    neg_frac: float = 0.5,
    test_split: str = "test",
    test_tries: int = 3,
    seed: int = 0,
    user_batch: int = 256,
    allowed: np.ndarray | None = None,
) -> RecommenderQueries:
    """Ask the frozen recommender ``rec`` everything the alignment tasks need, ``user_batch`` users at a time.

    Per user: the last N history items, the top ``top_k`` non-history items, ``n_candidates`` distinct uniform
    non-history items sorted by score (plus a shuffled copy for the prompt), a top-``pos_frac`` / bottom-``neg_frac``
    pair (away from the user's ``test_split`` items) and, from up to ``test_tries`` random ``test_split`` items of
    the user, the first whose label is defined, with an opposite-label partner. Per item: the nearest item.

    ``user_batch`` 256: each block of scores (256 x I floats; 17 MB on google) is read by ~10 comparison passes,
    and a block that stays in the CPU cache made the whole query ~2x faster than blocks of 2048.

    ``allowed (I,)`` bool restricts every answer (top items, candidates, Yes/No pairs and their bands, Task 3 test
    items, nearest items) to those items, as if the recommender ranked only them: on data where most items have no
    title, questions then ask about items an LLM can name. Histories stay complete.
    """
    from explainrec.modules.lightgcn import split_pairs

    users = np.arange(dataset.n_users) if users is None else np.asarray(users, dtype=np.int64)
    n, n_items = len(users), rec.n_items
    gen = torch.Generator().manual_seed(seed)
    tr_u, tr_i = split_pairs(dataset, "train")
    te_u, te_i = split_pairs(dataset, test_split)
    te_keys = np.setdiff1d(te_u * n_items + te_i, tr_u * n_items + tr_i)
    te_ptr, te_idx = csr_of_pairs(te_keys // n_items, te_keys % n_items, dataset.n_users)
    hist_counts = rec.history_counts().cpu()
    banned = None if allowed is None else torch.from_numpy(~np.asarray(allowed, dtype=bool))
    if banned is not None and banned.all():
        raise ValueError("allowed excludes every item")
    if banned is not None:  # the user's test items outside the catalogue cannot be asked about
        keep = ~banned.numpy()[te_keys % n_items]
        te_keys = te_keys[keep]
        te_ptr, te_idx = csr_of_pairs(te_keys // n_items, te_keys % n_items, dataset.n_users)
    kk = min(top_k, n_items)
    out = {
        "history": np.full((n, rec.history_len), -1, np.int64), "top": np.full((n, kk), -1, np.int64),
        "candidates": np.full((n, n_candidates), -1, np.int64), "candidates_shown": np.full((n, n_candidates), -1, np.int64),
        **{k: np.full(n, -1, np.int64) for k in ("pos", "neg", "test_item", "test_label", "test_partner")},
        **{k: np.full(n, np.nan, np.float32) for k in ("pos_score", "neg_score", "test_score", "partner_score")},
    }
    for lo in range(0, n, user_batch):
        rows = users[lo: lo + user_batch]
        sl = slice(lo, lo + len(rows))
        u = torch.from_numpy(rows)
        scores = rec.score(u).float().cpu()  # (b, I), history at -inf
        if banned is None:
            n_valid = n_items - hist_counts[u]  # (b,)
        else:
            scores[:, banned] = -torch.inf
            n_valid = torch.isfinite(scores).sum(1)
        out["history"][sl] = rec.recent_history(u).cpu().numpy()
        top_vals, top = scores.topk(kk, dim=1)
        out["top"][sl] = torch.where(torch.isfinite(top_vals), top, torch.full_like(top, -1)).numpy()

        cands = _draw_distinct(scores, n_valid, n_candidates, gen)  # (b, C)
        c_scores = scores.gather(1, cands.clamp(min=0))
        order = c_scores.argsort(dim=1, descending=True, stable=True)
        out["candidates"][sl] = cands.gather(1, order).numpy()
        shuffle = torch.rand(cands.shape, generator=gen).argsort(dim=1)
        out["candidates_shown"][sl] = cands.gather(1, shuffle).numpy()

        n_top = torch.ceil(pos_frac * n_valid.double()).long()
        n_bottom = torch.floor(neg_frac * n_valid.double()).long()
        bottom_lo = n_valid - n_bottom
        zero = torch.zeros_like(n_valid)
        tests = _padded_rows(te_ptr, te_idx, rows)  # (b, m): the user's test items, excluded from train pairs
        pos = _draw(scores, zero, n_top, gen, exclude=tests)
        neg = _draw(scores, bottom_lo, n_valid, gen, exclude=tests)
        out["pos"][sl], out["neg"][sl] = pos.numpy(), neg.numpy()
        out["pos_score"][sl] = torch.where(pos >= 0, scores.gather(1, pos.clamp(min=0).unsqueeze(1)).squeeze(1),
                                           torch.tensor(float("nan"))).numpy()
        out["neg_score"][sl] = torch.where(neg >= 0, scores.gather(1, neg.clamp(min=0).unsqueeze(1)).squeeze(1),
                                           torch.tensor(float("nan"))).numpy()

        # Task 3 test: up to ``test_tries`` random test items per user; the first with a defined label wins
        if tests.shape[1]:
            keys = torch.rand(tests.shape, generator=gen).masked_fill(tests < 0, 2.0)
            tried = tests.gather(1, keys.argsort(dim=1)[:, :test_tries])  # (b, t), -1 padded at the end
            item = torch.full((len(rows),), -1, dtype=torch.long)
            label = torch.full((len(rows),), -1, dtype=torch.long)
            for j in range(tried.shape[1]):
                cand = tried[:, j]
                rank = _rank_of(scores, cand)
                lab = torch.where(rank < n_top, 1, torch.where(rank >= bottom_lo, 0, -1))
                take = (label < 0) & (cand >= 0) & (lab >= 0)
                item[take], label[take] = cand[take], lab[take]
            avoid = torch.cat([tests, pos.unsqueeze(1), neg.unsqueeze(1)], dim=1)
            yes_partner = _draw(scores, bottom_lo, torch.where(label == 1, n_valid, bottom_lo), gen, exclude=avoid)
            no_partner = _draw(scores, zero, torch.where(label == 0, n_top, zero), gen, exclude=avoid)
            partner = torch.where(label == 1, yes_partner, no_partner)
            label = torch.where(partner >= 0, label, torch.full_like(label, -1))
            keep = label >= 0
            out["test_item"][sl] = torch.where(keep, item, -1).numpy()
            out["test_label"][sl] = label.numpy()
            out["test_partner"][sl] = torch.where(keep, partner, -1).numpy()
            ts = scores.gather(1, item.clamp(min=0).unsqueeze(1)).squeeze(1)
            ps = scores.gather(1, partner.clamp(min=0).unsqueeze(1)).squeeze(1)
            out["test_score"][sl] = torch.where(keep, ts, torch.tensor(float("nan"))).numpy()
            out["partner_score"][sl] = torch.where(keep, ps, torch.tensor(float("nan"))).numpy()

    nearest = nearest_items(rec.item_vectors().float().cpu(), allowed=None if banned is None else ~banned)
    return RecommenderQueries(users=users, nearest=nearest, pos_frac=pos_frac, neg_frac=neg_frac, **out)


# ---------------------------------------------------------------------------------------------------- rendering


@functools.cache
def _fields(template: str) -> tuple[str, ...]:
    return tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)


def _render(template: str, fields: dict[str, tuple[str, list[int]]]) -> tuple[str, list[int]]:
    """Fill ``template``; soft ids follow the order in which the fields appear (each field's ids in order)."""
    text = template.format(**{k: v[0] for k, v in fields.items()})
    soft = [i for f in _fields(template) for i in fields[f][1]]
    return text, soft


class _Refs:
    """How users and items are written in one variant's prompts: ``(text, soft ids)``."""

    def __init__(self, variant: str, names: list[str]) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        self.variant, self.names = variant, names

    def history_text(self, hist: Sequence[int]) -> str:
        return LIST_SEP.join(self.names[i] for i in hist if i >= 0)

    def user(self, user: int, history_text: str, *, intention_form: bool = False) -> tuple[str, list[int]]:
        """The user as the variant writes it; ``history_text`` = :meth:`history_text` of their recent items."""
        v = "intention" if intention_form else self.variant
        if v == "behaviour":
            return f"a user who recently interacted with: {history_text}", []
        if v == "intention":
            return f"the user {USER_TOKEN}", [int(user)]
        return f"the user {USER_TOKEN}, who recently interacted with: {history_text}", [int(user)]

    def item(self, item: int, *, intention_form: bool = False) -> tuple[str, list[int]]:
        v = "intention" if intention_form else self.variant
        if v == "behaviour":
            return self.names[item], []
        if v == "intention":
            return ITEM_TOKEN, [int(item)]
        return f"{ITEM_TOKEN} {self.names[item]}", [int(item)]

    def items(self, items: Sequence[int]) -> tuple[str, list[int]]:
        parts = [self.item(i) for i in items]
        return LIST_SEP.join(p[0] for p in parts), [s for p in parts for s in p[1]]


def _row(task: str, variant: str, split: str, content: str, soft: list[int], target: str, user: int | None,
         items: list[int], **extra) -> dict:
    row = {"task": task, "task_number": TASK_NUMBER[task], "variant": variant, "split": split,
           "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
           "target": target, "user": None if user is None else int(user), "items": [int(i) for i in items],
           "soft_ids": [int(s) for s in soft]}
    row.update(extra)
    return row


def held_out_users(dataset: Dataset, users: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """``(n,)`` bool: users held out for Tasks 1/2/6 evaluation (a stable hash of the raw id and the seed)."""
    raw = dataset.users.raw
    return np.fromiter((hash_unit(("recexplainer-holdout", raw[u]), seed) < frac for u in users), dtype=bool,
                       count=len(users))


def build_alignment_rows(
    dataset: Dataset,
    rec,
    variant: str = "hybrid",
    *,
    queries: RecommenderQueries | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    holdout_frac: float = 0.1,
    max_users: int | None = None,
    max_items: int | None = None,
    next_items_per_user: int = 1,
    max_title_chars: int = 60,
    user_batch: int = 256,
    allowed: np.ndarray | None = None,
) -> list[dict]:
    """Alignment rows of one ``variant`` (train and test, marked by ``split``); see the module docstring.

    ``queries`` reuses one :func:`query_recommender` answer for several variants (it must cover at least
    ``next_items_per_user`` top items). ``tasks`` restricts the tasks (default: all of the variant's).
    ``max_users``/``max_items`` draw a seeded subset of users (with history) / items for a CPU budget.
    ``next_items_per_user`` > 1 adds Task 1 train rows whose targets are the 2nd, 3rd, ... best items (the
    release's MF recipe: "row i labelled with the i-th best item"); test rows always ask for the top-1.
    ``allowed`` restricts the recommender's answers and the item tasks to those items (:func:`query_recommender`).
    """
    chosen = VARIANT_TASKS.get(variant)
    if chosen is None:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if tasks is not None:
        unknown = [t for t in tasks if t not in TASK_NUMBER or t == "replay"]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; expected some of {sorted(set(TASK_NUMBER) - {'replay'})}")
        chosen = tuple(t for t in chosen if t in tasks)
    if queries is None:
        users = select_users(dataset, rec, max_users=max_users, seed=seed)
        queries = query_recommender(rec, dataset, users, top_k=next_items_per_user, seed=seed, user_batch=user_batch,
                                    allowed=allowed)
    elif queries.top.shape[1] < next_items_per_user:
        raise ValueError(f"queries hold {queries.top.shape[1]} top items; next_items_per_user={next_items_per_user}")
    names = item_names(dataset, max_title_chars=max_title_chars)
    refs = _Refs(variant, names)
    q = queries
    held = held_out_users(dataset, q.users, holdout_frac, seed)
    has_hist = (q.history >= 0).any(1)
    hist_ids = [[int(i) for i in h if i >= 0] for h in q.history]  # per user, computed once for every task
    hist_txt = [refs.history_text(h) for h in hist_ids]

    def pick(task: str, count: int) -> np.ndarray:  # template per example, the same for every variant
        return np.random.default_rng([seed, sorted(TASK_NUMBER).index(task)]).integers(
            0, len(TEMPLATES[task]), size=count)

    rows: list[dict] = []
    n = len(q.users)
    for task in chosen:
        if task == "next_item":
            tpl = pick(task, n * max(1, next_items_per_user))
            for r in range(n):
                if not has_hist[r]:
                    continue
                u, hist, txt = q.users[r], hist_ids[r], hist_txt[r]
                ranks = range(1) if held[r] else range(next_items_per_user)
                for k in ranks:
                    target = q.top[r, k]
                    if target < 0:
                        continue
                    text, soft = _render(TEMPLATES[task][tpl[r * next_items_per_user + k]],
                                         {"user": refs.user(u, txt)})
                    rows.append(_row(task, variant, "test" if held[r] else "train", text, soft, names[target], u,
                                     [target], history=list(hist), rank=k + 1))
        elif task == "ranking":
            tpl = pick(task, n)
            for r in range(n):
                if not has_hist[r] or q.candidates[r, 0] < 0:
                    continue
                u, hist, txt = q.users[r], hist_ids[r], hist_txt[r]
                text, soft = _render(TEMPLATES[task][tpl[r]],
                                     {"user": refs.user(u, txt), "candidates": refs.items(q.candidates_shown[r])})
                ranking = [int(i) for i in q.candidates[r]]
                rows.append(_row(task, variant, "test" if held[r] else "train", text, soft,
                                 LIST_SEP.join(names[i] for i in ranking), u, ranking, history=list(hist),
                                 candidates=[int(i) for i in q.candidates_shown[r]]))
        elif task == "interest":
            tpl = pick(task, 4 * n)
            for r in range(n):
                if not has_hist[r]:
                    continue
                u, hist, txt = q.users[r], hist_ids[r], hist_txt[r]
                pairs = []
                if q.pos[r] >= 0 and q.neg[r] >= 0:
                    pairs += [("train", q.pos[r], 1, q.pos_score[r]), ("train", q.neg[r], 0, q.neg_score[r])]
                if q.test_label[r] >= 0:
                    lab = int(q.test_label[r])
                    pairs += [("test", q.test_item[r], lab, q.test_score[r]),
                              ("test", q.test_partner[r], 1 - lab, q.partner_score[r])]
                for j, (split, item, lab, score) in enumerate(pairs):
                    text, soft = _render(TEMPLATES[task][tpl[4 * r + j]],
                                         {"user": refs.user(u, txt), "item": refs.item(item)})
                    rows.append(_row(task, variant, split, text, soft, YES if lab else NO, u, [item],
                                     history=list(hist), label=YES if lab else NO, score=float(score)))
        elif task in ("item_title", "item_profile", "profile_item", "item_similar"):
            rows += _item_rows(task, variant, refs, dataset, q, pick, names, max_items, seed, allowed)
        elif task == "history":
            tpl = pick(task, n)
            for r in range(n):
                if not has_hist[r]:
                    continue
                u, hist, txt = q.users[r], hist_ids[r], hist_txt[r]
                text, soft = _render(TEMPLATES[task][tpl[r]], {"user": refs.user(u, txt, intention_form=True)})
                rows.append(_row(task, variant, "test" if held[r] else "train", text, soft, txt,
                                 u, hist, history=list(hist)))
        elif task == "summary":
            profiles = user_profiles(dataset)
            tpl = pick(task, n)
            for r in range(n):
                u, hist, txt = q.users[r], hist_ids[r], hist_txt[r]
                if not has_hist[r] or profiles[u] is None:
                    continue
                text, soft = _render(TEMPLATES[task][tpl[r]], {"user": refs.user(u, txt)})
                rows.append(_row(task, variant, "test" if held[r] else "train", text, soft, profiles[u], u, [],
                                 history=list(hist)))
    return rows


def _item_rows(task, variant, refs: _Refs, dataset, q: RecommenderQueries, pick, names, max_items, seed,
               allowed=None) -> list[dict]:
    """Task 4 rows (train only) about every (allowed) item (or a seeded subset of ``max_items``)."""
    items = np.arange(dataset.n_items) if allowed is None else np.flatnonzero(allowed)
    if max_items is not None and max_items < len(items):
        items = np.sort(np.random.default_rng([seed, 4]).choice(items, size=max_items, replace=False))
    profiles = item_profiles(dataset) if task in ("item_profile", "profile_item") else None
    tpl = pick(task, dataset.n_items)
    rows = []
    for i in items:
        template = TEMPLATES[task][tpl[i]]
        if task == "item_title":  # intention form in both intention and hybrid (the title would give it away)
            text, soft = _render(template, {"item": refs.item(i, intention_form=True)})
            target = names[i]
        elif task == "item_profile":
            if profiles[i] is None:
                continue
            text, soft = _render(template, {"item": refs.item(i)})
            target = profiles[i]
        elif task == "profile_item":
            if profiles[i] is None:
                continue
            text, soft = _render(template, {"profile": (profiles[i], [])})
            target = names[i]
        else:  # item_similar
            if q.nearest[i] < 0:
                continue
            text, soft = _render(template, {"item": refs.item(i)})
            target = names[q.nearest[i]]
        extra = {"nearest": int(q.nearest[i])} if task == "item_similar" else {}
        rows.append(_row(task, variant, "train", text, soft, target, None, [int(i)], **extra))
    return rows


def select_users(dataset: Dataset, rec, *, max_users: int | None = None, seed: int = 0) -> np.ndarray:
    """Users with at least one train item (all, or a seeded sorted subset of ``max_users``)."""
    users = np.flatnonzero(rec.history_counts().cpu().numpy() > 0)
    if max_users is not None and max_users < len(users):
        users = np.sort(np.random.default_rng([seed, 0]).choice(users, size=max_users, replace=False))
    return users


# ---------------------------------------------------------------------------------------------------- Task 5


def replay_rows(llm, tokenizer, *, n: int = 24, seed: int = 0, max_new_tokens: int = 96, batch_size: int = 8,
                progress: bool = False) -> list[dict]:
    """Task 5 stand-in: ``n`` generic instructions answered (greedy) by the frozen base ``llm`` before alignment.

    Training on the model's own answers keeps its general behaviour (self-distillation) without ShareGPT, which
    would need a download and a stronger teacher than a 135M model. Instructions cycle through
    :data:`REPLAY_INSTRUCTIONS` in a seeded order; rows carry ``variant: "any"`` and no soft ids.
    """
    from explainrec.data.prompts import render_prompt
    from explainrec.llm.generate import generate_texts

    order = np.random.default_rng([seed, 5]).permutation(len(REPLAY_INSTRUCTIONS))
    asks = [REPLAY_INSTRUCTIONS[order[k % len(order)]] for k in range(n)]
    messages = [[{"role": "user", "content": a}] for a in asks]
    answers = generate_texts(llm, tokenizer, [render_prompt(tokenizer, m) for m in messages], batch_size=batch_size,
                             max_new_tokens=max_new_tokens, progress=progress)
    return [{"task": "replay", "task_number": 5, "variant": "any", "split": "train", "prompt": m, "target": a,
             "user": None, "items": [], "soft_ids": []} for m, a in zip(messages, answers) if a.strip()]


# ---------------------------------------------------------------------------------------------------- writing


def write_alignment_data(
    dataset: Dataset,
    rec,
    out_dir: str | Path,
    *,
    variants: Sequence[str] = VARIANTS,
    seed: int = 0,
    max_users: int | None = None,
    next_items_per_user: int = 1,
    replay: list[dict] | None = None,
    user_batch: int = 256,
    allowed: np.ndarray | None = None,
    **build_kwargs,
) -> dict:
    """Write ``{variant}.train.jsonl`` and ``{variant}.test.jsonl`` per variant plus ``manifest.json`` (counts per
    task and split, seed, the recommender's config, timings); return the manifest.

    The recommender is queried once for all variants. ``replay`` rows (:func:`replay_rows`) are appended to every
    variant's train file when given (Task 5 is off by default).
    """
    from explainrec.io import atomic_write_json, atomic_write_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    users = select_users(dataset, rec, max_users=max_users, seed=seed)
    queries = query_recommender(rec, dataset, users, top_k=next_items_per_user, seed=seed, user_batch=user_batch,
                                allowed=allowed)
    timings = {"query_seconds": round(time.perf_counter() - t0, 2)}
    manifest = {"dataset": dataset.name, "seed": seed, "users": len(users), "recommender": rec.config,
                "items_asked_about": int(dataset.n_items if allowed is None else np.count_nonzero(allowed)),
                "next_items_per_user": next_items_per_user, "replay_rows": len(replay or []), "variants": {}}
    for variant in variants:
        t1 = time.perf_counter()
        rows = build_alignment_rows(dataset, rec, variant, queries=queries, seed=seed,
                                    next_items_per_user=next_items_per_user, allowed=allowed, **build_kwargs)
        train = [r for r in rows if r["split"] == "train"] + list(replay or [])
        test = [r for r in rows if r["split"] == "test"]
        atomic_write_jsonl(out / f"{variant}.train.jsonl", train)
        atomic_write_jsonl(out / f"{variant}.test.jsonl", test)
        counts: dict[str, dict[str, int]] = {}
        for r in train + test:
            counts.setdefault(r["task"], {"train": 0, "test": 0})[r["split"]] += 1
        manifest["variants"][variant] = {"counts": counts, "train": len(train), "test": len(test)}
        timings[f"{variant}_seconds"] = round(time.perf_counter() - t1, 2)
    manifest["timings"] = timings
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def read_rows(path: str | Path) -> list[dict]:
    """Rows of an alignment JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

