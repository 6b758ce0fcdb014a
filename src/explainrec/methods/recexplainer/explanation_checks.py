"""Automatic checks of RecExplainer's explanations, standing in for the paper's GPT-4 judge (method notes sec. 7).

An explanation is asked in two steps (:func:`explain`): the decision first, as Task 3's Yes/No question read from
the next-token logits, then "why", in a prompt that states that decision. One prompt asking both ("Will the user
like X? Start with Yes or No, then explain why") opens like Task 3, whose alignment target is a bare "Yes"/"No", and
the aligned model stops there (docs/results.md measured it: every test explanation a bare "Yes").
:func:`explanation_rows` builds both prompts on Task 3-style pairs whose recommender label and raw score are known.
The checks read the text a user sees, ``"Yes. <why>"``. Each measures one thing a faithful explanation must do;
none needs a reference text:

    decision agreement   the stated yes/no equals the recommender's label (the rubric's 0 vs >= 1)
    score probe          TF-IDF + ridge, cross-validated, predicts the recommender's raw score f(u, i) from the
                         text alone (the paper's BERT regressor, Table 3): lower MSE than a baseline set of texts
                         for the same pairs = the recommender's signal is in the words; also pos/neg AUC
    grounding            catalogue names mentioned that really are in the user's history or are the target, and
                         the hallucinated ones (names of other items)
    attribution          how often the text names the history items that move f(u, i) most (SASRec: leave-one-out
                         score drop; MF/LightGCN: dot product with the target), against the other history items
    counterfactual       with the user vector swapped for another user's, does the decision follow the
                         recommender's label for that other user? (:func:`counterfactual_consistency`)

Shuffled explanations (texts moved to other pairs) must fail the first four; the tests check that they do.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
from explainrec.methods.recexplainer.alignment_data import (
    NO,
    SYSTEM_PROMPT,
    TEMPLATES,
    YES,
    RecommenderQueries,
    _Refs,
    _render,
    item_names,
)
from explainrec.methods.recexplainer.alignment_eval import decisions, find_mentions, generate_greedy, normalize

DECISION_TEMPLATE = TEMPLATES["interest"][0]  # Task 3's first wording: the decision is its Yes/No logits
EXPLAIN_TEMPLATE = (
    "The recommender {verdict} {item} to {user}. Explain why, as the recommender would: summarise the patterns in "
    "the user's history and say how well the item fits them. Write two or three sentences."
)
VERDICT = {True: "recommends", False: "does not recommend"}


# ---------------------------------------------------------------------------------------------------- prompts


def explanation_prompt(user: int, history: Sequence[int], item: int, names: Sequence[str],
                       variant: str = "hybrid", decision: bool | None = None) -> tuple[list[dict], list[int]]:
    """Chat messages and the soft ids (in placeholder order) the variant needs: with ``decision=None`` the Task 3
    question whose Yes/No logits give the decision; with a decision, the request to explain it."""
    refs = _Refs(variant, list(names))
    fields = {"user": refs.user(user, refs.history_text(history)), "item": refs.item(item)}
    if decision is None:
        text, soft = _render(DECISION_TEMPLATE, fields)
    else:
        text, soft = _render(EXPLAIN_TEMPLATE, {**fields, "verdict": (VERDICT[bool(decision)], [])})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}], soft


def explanation_rows(dataset, queries: RecommenderQueries, variant: str = "hybrid", *, source: str = "test",
                     max_users: int | None = None, seed: int = 0, max_title_chars: int = 60) -> list[dict]:
    """Explanation prompts on the recommender's Task 3 pairs, two per user (a Yes item and a No item).

    Each row's ``prompt``/``soft_ids`` ask the decision; ``why[Yes|No]`` = ``(messages, soft ids)`` explaining it.

    ``source``: ``test`` = the test-split pairs (the paper explains its Task 3 test pairs), ``train`` = the train
    pairs (e.g. to fit a probe on more texts). ``max_users`` draws a seeded subset. Rows carry ``label`` (the
    recommender's Yes/No), ``score`` (its raw score) and ``history`` for the checks below.
    """
    names = item_names(dataset, max_title_chars=max_title_chars)
    q = queries
    if source == "test":
        pairs = [(r, q.test_item[r], q.test_label[r], q.test_score[r], q.test_partner[r], q.partner_score[r])
                 for r in range(len(q.users)) if q.test_label[r] >= 0]
        pairs = [(r, a, int(lab), s, b, t) for r, a, lab, s, b, t in pairs]
    elif source == "train":
        pairs = [(r, q.pos[r], 1, q.pos_score[r], q.neg[r], q.neg_score[r])
                 for r in range(len(q.users)) if q.pos[r] >= 0 and q.neg[r] >= 0]
    else:
        raise ValueError(f"source must be 'test' or 'train', got {source!r}")
    if max_users is not None and max_users < len(pairs):
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(pairs), size=max_users, replace=False))
        pairs = [pairs[k] for k in keep]
    rows = []
    for r, item, lab, score, other, other_score in pairs:
        u, hist = int(q.users[r]), [int(i) for i in q.history[r] if i >= 0]
        for it, lb, sc in ((item, lab, score), (other, 1 - lab, other_score)):
            messages, soft = explanation_prompt(u, hist, int(it), names, variant)
            why = {answer: explanation_prompt(u, hist, int(it), names, variant, decision=answer == YES)
                   for answer in (YES, NO)}
            rows.append({"task": "explain", "variant": variant, "split": source, "prompt": messages, "target": "",
                         "user": u, "items": [int(it)], "soft_ids": soft, "history": hist, "why": why,
                         "label": YES if lb else NO, "score": float(sc)})
    return rows


# ---------------------------------------------------------------------------------------------------- (a) decision

_POSITIVE = re.compile(r"\b(yes|will (?:likely )?(?:like|enjoy|love)|would (?:likely )?(?:like|enjoy|love)|likely to "
                       r"(?:like|enjoy)|good (?:fit|match)|great (?:fit|match)|recommend(?:ed)?)\b")
_NEGATIVE = re.compile(r"\b(no|not|won't|wouldn't|unlikely|dislike|poor (?:fit|match)|bad (?:fit|match)|"
                       r"does(?:n't| not) fit)\b")


def parse_decision(text: str) -> bool | None:
    """Yes (True) / No (False) / None from an explanation: its first word when that is yes or no, else the earlier
    of the first positive cue ("will like", "good fit", ...) and the first negative cue ("not", "unlikely", ...)."""
    low = text.lower().replace("’", "'")
    first = re.match(r"\W*(\w+)", low)
    if first and first.group(1) in ("yes", "no"):
        return first.group(1) == "yes"
    pos, neg = _POSITIVE.search(low), _NEGATIVE.search(low)
    if pos is None and neg is None:
        return None
    if pos is None or (neg is not None and neg.start() <= pos.start()):
        return False
    return True


def decision_agreement(texts: Sequence[str], labels: Sequence[str | bool]) -> dict:
    """Share of texts whose parsed decision equals the recommender's label (unparsed texts count as wrong)."""
    truth = [(lab == YES) if isinstance(lab, str) else bool(lab) for lab in labels]
    parsed = [parse_decision(t) for t in texts]
    n = len(truth)
    agree = sum(p is not None and p == t for p, t in zip(parsed, truth))
    return {"agreement": agree / n if n else float("nan"),
            "parsed": sum(p is not None for p in parsed) / n if n else float("nan"), "n": n}


def explain(model, tokenizer, rows: Sequence[dict], *, max_new_tokens: int = 96) -> list[str]:
    """``"Yes. <why>"`` / ``"No. <why>"`` per row of :func:`explanation_rows`: the decision, then its explanation."""
    said = [YES if d else NO for d in decisions(model, tokenizer, rows)]
    asked = [{**r, "prompt": r["why"][a][0], "soft_ids": r["why"][a][1]} for r, a in zip(rows, said)]
    why = generate_greedy(model, tokenizer, asked, max_new_tokens=max_new_tokens)
    return [f"{a}. {t.strip()}" for a, t in zip(said, why)]


# ---------------------------------------------------------------------------------------------------- (b) probe


def score_probe(texts: Sequence[str], scores: Sequence[float], *, baseline_texts: Sequence[str] | None = None,
                labels: Sequence[str | bool] | None = None, folds: int = 5, alpha: float = 1.0, seed: int = 0) -> dict:
    """Cross-validated MSE of TF-IDF (word 1-2 grams) + ridge predicting the recommender's raw score from the text.

    ``mse_constant`` = predicting each fold's training mean (what a text without signal reaches at best);
    ``baseline`` = the same probe on ``baseline_texts`` (e.g. zero-shot explanations of the same pairs);
    ``auc`` = how well the predicted score separates the recommender's Yes pairs from its No pairs.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline

    y = np.asarray(scores, dtype=np.float64)
    if len(texts) != len(y):
        raise ValueError(f"{len(texts)} texts but {len(y)} scores")
    k = max(2, min(folds, len(y)))
    splits = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(y))

    def run(docs: Sequence[str]) -> dict:
        pred = np.zeros_like(y)
        const = np.zeros_like(y)
        for tr, te in splits:
            model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True), Ridge(alpha=alpha))
            model.fit([docs[i] for i in tr], y[tr])
            pred[te] = model.predict([docs[i] for i in te])
            const[te] = y[tr].mean()
        out = {"mse": float(np.mean((pred - y) ** 2)), "mse_constant": float(np.mean((const - y) ** 2))}
        if labels is not None:
            truth = np.array([(lab == YES) if isinstance(lab, str) else bool(lab) for lab in labels])
            out["auc"] = float(roc_auc_score(truth, pred)) if 0 < truth.sum() < len(truth) else float("nan")
        return out

    result = {**run(list(texts)), "n": len(y), "folds": k}
    if baseline_texts is not None:
        if len(baseline_texts) != len(y):
            raise ValueError(f"{len(baseline_texts)} baseline texts but {len(y)} scores")
        result["baseline"] = run(list(baseline_texts))
    return result


# ---------------------------------------------------------------------------------------------------- (c) grounding


class CatalogueMatcher:
    """Finds catalogue names in free text (normalised, longest match first; see ``alignment_eval.find_mentions``)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.table = {}
        for i, n in enumerate(names):
            self.table.setdefault(normalize(n), i)
        self.table.pop("", None)
        self.longest = max((k.count(" ") + 1 for k in self.table), default=0)

    def items(self, text: str) -> list[int]:
        """Item ids mentioned in ``text``, in order, each once."""
        seen: list[int] = []
        for _, i in find_mentions(text, self.table, self.longest):
            if i not in seen:
                seen.append(i)
        return seen


def grounding(texts: Sequence[str], histories: Sequence[Sequence[int]], targets: Sequence[int],
              names: Sequence[str] | CatalogueMatcher) -> dict:
    """Catalogue names in each text: ``grounded`` = share of mentions that are the target or in the history,
    ``hallucinated_per_text`` = mean number of other items named, ``texts_with_hallucination`` = share of texts
    naming at least one, ``mentions_per_text`` = mean number of items named."""
    matcher = names if isinstance(names, CatalogueMatcher) else CatalogueMatcher(names)
    mentions = grounded = bad_texts = 0
    for text, hist, target in zip(texts, histories, targets):
        found = matcher.items(text)
        ok = set(hist) | {int(target)}
        good = sum(i in ok for i in found)
        mentions += len(found)
        grounded += good
        bad_texts += len(found) > good
    n = len(texts)
    return {"grounded": grounded / mentions if mentions else float("nan"),
            "hallucinated_per_text": (mentions - grounded) / n if n else float("nan"),
            "texts_with_hallucination": bad_texts / n if n else float("nan"),
            "mentions_per_text": mentions / n if n else float("nan"), "n": n}


# ---------------------------------------------------------------------------------------------------- (d) attribution


def influence_of(rec, users: Sequence[int], items: Sequence[int], *, batch_size: int = 512
                 ) -> tuple[list[list[int]], list[list[float]]]:
    """Per pair: the user's last N history items and how much each moves ``f(u, i)``
    (:meth:`~explainrec.methods.recexplainer.recommenders.Recommender.history_influence`)."""
    hists, infls = [], []
    u_all = torch.as_tensor(np.asarray(users), dtype=torch.long)
    i_all = torch.as_tensor(np.asarray(items), dtype=torch.long)
    for lo in range(0, len(u_all), batch_size):
        h, f = rec.history_influence(u_all[lo: lo + batch_size], i_all[lo: lo + batch_size])
        for hr, fr in zip(h.tolist(), f.tolist()):
            keep = [j for j, x in enumerate(hr) if x >= 0]
            hists.append([hr[j] for j in keep])
            infls.append([fr[j] for j in keep])
    return hists, infls


def attribution(texts: Sequence[str], histories: Sequence[Sequence[int]], influences: Sequence[Sequence[float]],
                names: Sequence[str], *, top: int = 2) -> dict:
    """How often a text names the ``top`` most influential history items vs the rest of the history.

    Per text with more than ``top`` history items: ``top_rate`` = share of the top items named, ``other_rate`` =
    share of the other history items named; both averaged over texts; ``lift`` = top_rate / other_rate. A faithful
    explanation names what moves the score: lift well above 1. Names are matched as in :func:`grounding`.
    """
    top_rates, other_rates = [], []
    for text, hist, infl in zip(texts, histories, influences):
        if len(hist) <= top:
            continue
        table = {normalize(names[i]): int(i) for i in hist}
        named = {i for _, i in find_mentions(text, table)}
        order = np.argsort(-np.asarray(infl, dtype=np.float64), kind="stable")
        best = [hist[j] for j in order[:top]]
        rest = [hist[j] for j in order[top:]]
        top_rates.append(np.mean([i in named for i in best]))
        other_rates.append(np.mean([i in named for i in rest]))
    n = len(top_rates)
    t = float(np.mean(top_rates)) if n else float("nan")
    o = float(np.mean(other_rates)) if n else float("nan")
    return {"top_rate": t, "other_rate": o, "lift": t / o if o > 0 else (float("inf") if t > 0 else float("nan")),
            "n": n}


# ---------------------------------------------------------------------------------------------------- (e) counterfactual


@torch.no_grad()
def counterfactual_pairs(rec, users: Sequence[int], items: Sequence[int], *, pos_frac: float = 0.2,
                         neg_frac: float = 0.5, tries: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """For each pair (u, i): another user v whose recommender label for i is defined (top ``pos_frac`` = Yes,
    bottom ``neg_frac`` = No, as in Task 3) and, where one of ``tries`` random users has it, opposite to u's.

    Returns ``swap_users (n,)`` (-1 where none of the tries had a defined label), ``expected (n,)`` bool (the
    recommender's Yes/No for (v, i)) and ``flipped (n,)`` bool (the label differs from u's own).
    """
    gen = torch.Generator().manual_seed(seed)
    n_items, n_users = rec.n_items, rec.n_users
    counts = rec.history_counts().cpu()

    def labels(us: torch.Tensor, its: torch.Tensor) -> torch.Tensor:  # (m,) 1 Yes / 0 No / -1 undefined
        scores = rec.score(us).float().cpu()
        s = scores.gather(1, its.unsqueeze(1))
        rank = (scores > s).sum(1)
        n_valid = n_items - counts[us]
        top = torch.ceil(pos_frac * n_valid.double()).long()
        bottom = n_valid - torch.floor(neg_frac * n_valid.double()).long()
        lab = torch.where(rank < top, 1, torch.where(rank >= bottom, 0, -1))
        return torch.where(torch.isfinite(s.squeeze(1)), lab, torch.full_like(lab, -1))

    u = torch.as_tensor(np.asarray(users), dtype=torch.long)
    i = torch.as_tensor(np.asarray(items), dtype=torch.long)
    own = labels(u, i)
    cand = torch.randint(0, n_users, (len(u), tries), generator=gen)  # (n, tries)
    cand = torch.where(cand == u.unsqueeze(1), (cand + 1) % n_users, cand)
    lab = labels(cand.reshape(-1), i.repeat_interleave(tries)).view(len(u), tries)
    opposite = (lab >= 0) & (own.unsqueeze(1) >= 0) & (lab != own.unsqueeze(1))
    defined = lab >= 0
    pick = torch.where(opposite.any(1), opposite.float().argmax(1), defined.float().argmax(1))
    chosen = cand.gather(1, pick.unsqueeze(1)).squeeze(1)
    chosen_lab = lab.gather(1, pick.unsqueeze(1)).squeeze(1)
    ok = chosen_lab >= 0
    return {"swap_users": torch.where(ok, chosen, torch.full_like(chosen, -1)).numpy(),
            "expected": (chosen_lab == 1).numpy() & ok.numpy(),
            "flipped": (ok & (chosen_lab != own) & (own >= 0)).numpy()}


def counterfactual_consistency(decide: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                               users: Sequence[int], items: Sequence[int], swap_users: Sequence[int],
                               expected: Sequence[bool], flipped: Sequence[bool] | None = None) -> dict:
    """How often the decision made with the swapped user vector follows the recommender's label for that user.

    ``decide(users, items, swap_users) -> (n,) bool`` is the explainer's Yes/No when the soft user vector is the
    swap user's (e.g. :func:`swapped_decisions` around a model). Pairs with ``swap_users < 0`` are skipped.
    ``follows`` = agreement with ``expected``; ``follows_flipped`` = the same on pairs whose label flipped (the
    decision had to change to agree).
    """
    users, items = np.asarray(users), np.asarray(items)
    swap, exp = np.asarray(swap_users), np.asarray(expected, dtype=bool)
    keep = swap >= 0
    dec = np.asarray(decide(users[keep], items[keep], swap[keep]), dtype=bool)
    agree = dec == exp[keep]
    out = {"follows": float(agree.mean()) if len(agree) else float("nan"), "n": int(keep.sum())}
    if flipped is not None:
        fl = np.asarray(flipped, dtype=bool)[keep]
        out["follows_flipped"] = float(agree[fl].mean()) if fl.any() else float("nan")
        out["n_flipped"] = int(fl.sum())
    return out


def soft_kinds(row: dict) -> list[str]:
    """``"user"``/``"item"`` for each soft id of a row, read from the placeholder order in its prompt."""
    content = row["prompt"] if isinstance(row["prompt"], str) else "".join(m["content"] for m in row["prompt"])
    pattern = re.compile(re.escape(USER_TOKEN) + "|" + re.escape(ITEM_TOKEN))
    return ["user" if m.group(0) == USER_TOKEN else "item" for m in pattern.finditer(content)]


def with_swapped_user(row: dict, swap_user: int) -> dict:
    """A copy of ``row`` whose ``<|user_emb|>`` soft ids are ``swap_user`` (the text, e.g. a hybrid history, stays)."""
    kinds = soft_kinds(row)
    if len(kinds) != len(row["soft_ids"]):
        raise ValueError(f"row has {len(kinds)} placeholders but {len(row['soft_ids'])} soft ids")
    soft = [int(swap_user) if k == "user" else s for k, s in zip(kinds, row["soft_ids"])]
    return {**row, "soft_ids": soft}


def swapped_decisions(model, tokenizer, rows: Sequence[dict], swap_users: Sequence[int], *,
                      batch_size: int = 8) -> np.ndarray:
    """The model's Yes/No (next-token logits, as Task 3) on ``rows`` with each row's user vector swapped."""
    return decisions(model, tokenizer, [with_swapped_user(r, v) for r, v in zip(rows, swap_users)],
                     batch_size=batch_size)
