"""Explanation checks: explanations written from the recommender's own decision and influencers pass every check,
the same texts shuffled across pairs fail them; decision parsing; the counterfactual helper."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
from explainrec.methods.recexplainer.alignment_data import TEMPLATES, item_names, query_recommender
from explainrec.methods.recexplainer.explanation_checks import (
    DECISION_TEMPLATE,
    EXPLAIN_TEMPLATE,
    attribution,
    counterfactual_consistency,
    counterfactual_pairs,
    decision_agreement,
    decisions,
    explain,
    explanation_prompt,
    explanation_rows,
    grounding,
    influence_of,
    parse_decision,
    score_probe,
    soft_kinds,
    swapped_decisions,
    with_swapped_user,
)


@pytest.fixture(scope="module")
def case(small_ds, small_sasrec):
    """Rows on the recommender's pairs, faithful explanations (its decision, its two top influencers) and the
    same texts shuffled over the pairs."""
    q = query_recommender(small_sasrec, small_ds, seed=0)
    rows = [r for r in explanation_rows(small_ds, q, "behaviour", source="train") if len(r["history"]) >= 3]
    names = item_names(small_ds)
    hists, infls = influence_of(small_sasrec, [r["user"] for r in rows], [r["items"][0] for r in rows])
    texts = []
    for r, h, f in zip(rows, hists, infls):
        top = [h[j] for j in np.argsort(-np.asarray(f), kind="stable")[:2]]
        item = names[r["items"][0]]
        if r["label"] == "Yes":
            texts.append(f"Yes. The user will enjoy {item}: it fits their taste for {names[top[0]]} and "
                         f"{names[top[1]]}.")
        else:
            texts.append(f"No. {item} does not fit a user whose history centres on {names[top[0]]} and "
                         f"{names[top[1]]}.")
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = [texts[j] for j in perm]
    return rows, names, hists, infls, texts, shuffled


def test_explanation_rows_and_prompt(case, small_ds, small_sasrec):
    rows, names = case[0], case[1]
    assert len(rows) >= 100 and sum(r["label"] == "Yes" for r in rows) == len(rows) // 2
    assert all(a["user"] == b["user"] and {a["label"], b["label"]} == {"Yes", "No"} for a, b in zip(rows[::2], rows[1::2]))
    for r in rows[:20]:
        s = small_sasrec.score(torch.tensor([r["user"]]))[0]
        rank, n_valid = int((s > s[r["items"][0]]).sum()), int(torch.isfinite(s).sum())
        assert (rank < math.ceil(0.2 * n_valid)) if r["label"] == "Yes" else (rank >= n_valid - n_valid // 2)
        assert names[r["items"][0]] in r["prompt"][1]["content"]
    messages, soft = explanation_prompt(3, [1, 2], 7, names, "hybrid")
    assert soft == [3, 7] and USER_TOKEN in messages[1]["content"] and ITEM_TOKEN in messages[1]["content"]
    assert DECISION_TEMPLATE in TEMPLATES["interest"]  # the decision is asked exactly as Task 3 asks it
    for decision, verdict in ((True, "The recommender recommends"), (False, "The recommender does not recommend")):
        why, why_soft = explanation_prompt(3, [1, 2], 7, names, "hybrid", decision)
        assert why_soft == [7, 3] and why[1]["content"].startswith(verdict) and "Explain why" in why[1]["content"]
    # the explanation request must not read like Task 3's Yes/No question (the model answers those with one word)
    assert "Yes or No" not in EXPLAIN_TEMPLATE and "?" not in EXPLAIN_TEMPLATE
    q = query_recommender(small_sasrec, small_ds, seed=0)
    test_rows = explanation_rows(small_ds, q, "intention", source="test", max_users=10)
    assert len(test_rows) == 20 and all(r["soft_ids"] == [r["user"], r["items"][0]] for r in test_rows)
    assert all(r["why"]["Yes"][1] == r["soft_ids"][::-1] and "does not recommend" in r["why"]["No"][0][1]["content"]
               for r in test_rows)


def test_parse_decision():
    assert parse_decision("Yes, the user will like it.") is True
    assert parse_decision("no - they would not") is False
    assert parse_decision("The user will enjoy this, it is not expensive.") is True
    assert parse_decision("The user is unlikely to enjoy it.") is False
    assert parse_decision("It won't fit.") is False
    assert parse_decision("Hmm.") is None


def test_decision_agreement_fails_on_shuffled(case):
    rows, _, _, _, texts, shuffled = case
    labels = [r["label"] for r in rows]
    good, bad = decision_agreement(texts, labels), decision_agreement(shuffled, labels)
    assert good["agreement"] == 1.0 and good["parsed"] == 1.0
    assert bad["agreement"] < 0.7
    # a text that takes no side is no agreement
    assert decision_agreement(["Hmm, hard to say.", "Yes!"], ["Yes", "Yes"]) == {"agreement": 0.5, "parsed": 0.5, "n": 2}


def test_score_probe_fails_on_shuffled(case):
    rows, _, _, _, texts, shuffled = case
    scores = [r["score"] for r in rows]
    labels = [r["label"] for r in rows]
    out = score_probe(texts, scores, baseline_texts=shuffled, labels=labels, seed=0)
    assert out["mse"] < 0.6 * out["mse_constant"]  # the text carries the recommender's signal
    assert out["mse"] < 0.6 * out["baseline"]["mse"]
    assert out["baseline"]["mse"] > 0.9 * out["baseline"]["mse_constant"]  # shuffled: no better than a constant
    assert out["auc"] > 0.95 and out["baseline"]["auc"] < 0.75


def test_grounding_fails_on_shuffled(case):
    rows, names, _, _, texts, shuffled = case
    hist = [r["history"] for r in rows]
    targets = [r["items"][0] for r in rows]
    good, bad = grounding(texts, hist, targets, names), grounding(shuffled, hist, targets, names)
    assert good["grounded"] == 1.0 and good["hallucinated_per_text"] == 0.0 and good["mentions_per_text"] >= 2.5
    assert bad["grounded"] < 0.5 and bad["texts_with_hallucination"] > 0.8


def test_attribution_fails_on_shuffled(case):
    _, names, hists, infls, texts, shuffled = case
    good, bad = attribution(texts, hists, infls, names), attribution(shuffled, hists, infls, names)
    assert good["top_rate"] == 1.0 and good["lift"] > 5 and good["n"] >= 100
    assert bad["top_rate"] < 0.3
    # naming random history items instead of the influencers is no better than the rest of the history
    rng = np.random.default_rng(1)
    random_texts = [f"Because of {names[h[rng.integers(len(h))]]} and {names[h[rng.integers(len(h))]]}." for h in hists]
    rnd = attribution(random_texts, hists, infls, names)
    assert rnd["lift"] < 2.0


def test_counterfactual_helper(small_ds, small_sasrec):
    users = np.arange(30)
    items = np.array([int(small_sasrec.score(torch.tensor([u]))[0].argmax()) for u in users])  # Yes for u
    cf = counterfactual_pairs(small_sasrec, users, items, seed=0)
    keep = cf["swap_users"] >= 0
    # the top items of this small recommender are popular: for a third or more an opposite user turns up
    assert keep.sum() >= 25 and cf["flipped"][keep].mean() > 0.3
    for u, i, v, e in zip(users[keep], items[keep], cf["swap_users"][keep], cf["expected"][keep]):
        s = small_sasrec.score(torch.tensor([int(v)]))[0]
        rank, n_valid = int((s > s[i]).sum()), int(torch.isfinite(s).sum())
        assert bool(e) == (rank < math.ceil(0.2 * n_valid)) and v != u
    label_of = {(int(v), int(i)): bool(e) for v, i, e in zip(cf["swap_users"], items, cf["expected"])}
    oracle = lambda us, its, vs: np.array([label_of[(int(v), int(i))] for v, i in zip(vs, its)])
    stubborn = lambda us, its, vs: np.ones(len(us), dtype=bool)
    good = counterfactual_consistency(oracle, users, items, cf["swap_users"], cf["expected"], cf["flipped"])
    bad = counterfactual_consistency(stubborn, users, items, cf["swap_users"], cf["expected"], cf["flipped"])
    assert good["follows"] == 1.0 and good["follows_flipped"] == 1.0
    assert bad["follows_flipped"] == 0.0 and bad["n"] == keep.sum()


def test_swapping_the_user_vector(small_ds, small_mf, tiny_llm):
    from explainrec.llm.load import load_llm
    from explainrec.methods.recexplainer.modeling import RecExplainerModel

    q = query_recommender(small_mf, small_ds, seed=0)
    rows = explanation_rows(small_ds, q, "hybrid", source="test", max_users=3)
    assert soft_kinds(rows[0]) == ["user", "item"]
    swapped = with_swapped_user(rows[0], 42)
    assert swapped["soft_ids"] == [42, rows[0]["items"][0]] and swapped["prompt"] == rows[0]["prompt"]
    llm, tok = load_llm("tiny")
    uid, iid = RecExplainerModel.prepare_tokenizer(llm, tok)
    model = RecExplainerModel.from_recommender(llm, small_mf, user_token_id=uid, item_token_id=iid)
    dec = swapped_decisions(model, tok, rows, [r["user"] for r in rows])
    assert dec.shape == (len(rows),) and dec.dtype == bool
    assert np.array_equal(dec, decisions(model, tok, rows))  # each row's own user: the unswapped decisions


def test_explain_states_the_logit_decision_then_explains_it(small_ds, small_mf, tiny_llm, monkeypatch):
    """The text starts with the decision read from Task 3's logits, and the generation is asked to explain that
    decision (the prompt that states it), not the Yes/No question."""
    import explainrec.methods.recexplainer.explanation_checks as ec
    from explainrec.llm.load import load_llm
    from explainrec.methods.recexplainer.modeling import RecExplainerModel

    rows = explanation_rows(small_ds, query_recommender(small_mf, small_ds, seed=0), "hybrid", source="test",
                            max_users=3)
    llm, tok = load_llm("tiny")
    uid, iid = RecExplainerModel.prepare_tokenizer(llm, tok)
    model = RecExplainerModel.from_recommender(llm, small_mf, user_token_id=uid, item_token_id=iid)
    seen = []
    real = ec.generate_greedy
    monkeypatch.setattr(ec, "generate_greedy", lambda m, t, asked, **kw: seen.extend(asked) or real(m, t, asked, **kw))
    texts = explain(model, tok, rows, max_new_tokens=3)
    said = decisions(model, tok, rows)
    assert [t.split(".")[0] for t in texts] == ["Yes" if d else "No" for d in said]
    assert [a["prompt"] for a in seen] == [r["why"]["Yes" if d else "No"][0] for r, d in zip(rows, said)]
    assert decision_agreement(texts, ["Yes" if d else "No" for d in said])["agreement"] == 1.0
