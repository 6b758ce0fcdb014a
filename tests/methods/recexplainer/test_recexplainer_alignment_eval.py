"""Alignment metrics: Yes/No accuracy from logits (hand-made), beam HR/NDCG, graded NDCG of parsed orders, history
coverage, catalogue likelihood ranking (equal to a full forward), baselines, and an end-to-end smoke run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explainrec.data.collate import encode_pair
from explainrec.data.prompts import render_prompt
from explainrec.llm.load import load_llm
from explainrec.methods.recexplainer import alignment_eval as ev
from explainrec.methods.recexplainer.alignment_data import (
    build_alignment_rows,
    item_names,
)
from explainrec.methods.recexplainer.modeling import RecExplainerModel, make_collate

NAMES = ["Red Lamp", "Blue Chair", "Red Lamp Deluxe", "item 12", "item 123", "Green Rug"]


def _interest_rows(targets):
    return [{"task": "interest", "split": "test", "prompt": "p", "soft_ids": [], "target": t, "items": [0]}
            for t in targets]


def test_yes_no_from_hand_made_logits(monkeypatch):
    yes, no = 3, 7
    logits = torch.zeros(4, 10)
    logits[0, yes], logits[0, no] = 2.0, 1.0  # Yes
    logits[1, yes], logits[1, no] = -1.0, 0.5  # No
    logits[2, yes], logits[2, no] = 0.3, 0.3  # tie -> No
    logits[3, yes], logits[3, 5] = 5.0, 9.0  # Yes beats No even though another token is likelier
    assert ev.yes_no_from_logits(logits, yes, no).tolist() == [True, False, False, True]
    # through interest_accuracy: predictions Y N N Y against labels Y Y N N -> 2 of 4
    monkeypatch.setattr(ev, "next_token_logits", lambda *a, **k: logits)
    monkeypatch.setattr(ev, "yes_no_token_ids", lambda tok: (yes, no))
    out = ev.interest_accuracy(None, None, _interest_rows(["Yes", "Yes", "No", "No"]))
    assert out == {"accuracy": 0.5, "yes_rate": 0.5, "n": 4}
    out = ev.interest_accuracy(None, None, _interest_rows(["Yes", "No", "No", "Yes"]))
    assert out["accuracy"] == 1.0


def test_yes_no_token_ids(tiny_llm):
    _, tok = tiny_llm
    yes, no = ev.yes_no_token_ids(tok)
    assert yes != no
    assert tok("Yes", add_special_tokens=False)["input_ids"][0] == yes

    class Same:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, len(text)]}

    with pytest.raises(ValueError, match="does not tell"):
        ev.yes_no_token_ids(Same())


def test_find_mentions_and_parse_ranking():
    table = {ev.normalize(n): i for i, n in enumerate(NAMES)}
    found = ev.find_mentions("I'd pick red lamp deluxe, then Red Lamp; ITEM 123 and item 12.", table)
    assert [i for _, i in found] == [2, 0, 4, 3]  # longest match first, no match inside "item 123"
    assert ev.parse_ranking("Blue Chair; Red Lamp; Blue Chair; nonsense", [0, 1, 5], NAMES) == [1, 0]
    assert ev.split_titles("1. Red Lamp\n2) Blue Chair; - Green Rug;;") == ["Red Lamp", "Blue Chair", "Green Rug"]


def test_ranking_ndcg_on_parsed_text(monkeypatch):
    truth = [0, 1, 5, 3, 2]
    row = {"task": "ranking", "split": "test", "items": truth, "soft_ids": [], "prompt": "p"}
    texts = ["Red Lamp; Blue Chair; Green Rug; item 12; Red Lamp Deluxe",  # exact order
             "Blue Chair; Red Lamp; Green Rug; item 12; Red Lamp Deluxe",  # first two swapped
             "I cannot rank these."]
    monkeypatch.setattr(ev, "generate_greedy", lambda *a, **k: texts)
    out = ev.ranking_ndcg(None, None, [row, row, row], NAMES)
    ideal = 1000 + 100 / math.log2(3) + 10 / 2 + 1 / math.log2(5)
    swapped = (100 + 1000 / math.log2(3) + 10 / 2 + 1 / math.log2(5)) / ideal
    assert out["ndcg@5"] == pytest.approx((1.0 + swapped + 0.0) / 3)
    assert out["parsed"] == pytest.approx(2 / 3) and out["n"] == 3


def test_history_coverage(monkeypatch):
    rows = [{"task": "history", "split": "test", "history": [0, 1], "soft_ids": [], "prompt": "p"},
            {"task": "history", "split": "test", "history": [5], "soft_ids": [], "prompt": "p"}]
    monkeypatch.setattr(ev, "generate_greedy", lambda *a, **k: ["red lamp; Blue Chair; Green Rug", "Made Up Thing"])
    out = ev.history_coverage(None, None, rows, NAMES)
    assert out["hcr"] == pytest.approx(2 / 4) and out["catalogue"] == pytest.approx(3 / 4) and out["titles"] == 4


def test_next_item_beams_exact_lowercase_match(monkeypatch):
    rows = [{"task": "next_item", "split": "test", "items": [1], "soft_ids": [], "prompt": "p"},
            {"task": "next_item", "split": "test", "items": [5], "soft_ids": [], "prompt": "p"}]
    beams = [["Red Lamp", "blue chair ", "x", "y", "z"], ["Green Rugs", "a", "b", "c", "Green"]]
    monkeypatch.setattr(ev, "generate_candidates", lambda *a, **k: beams)
    out = ev.next_item_metrics(None, None, rows, NAMES, k=5)
    assert out["hr@5"] == 0.5 and out["ndcg@5"] == pytest.approx(0.5 / math.log2(3))


@pytest.fixture(scope="module")
def model_and_rows(small_ds, small_mf):
    torch.manual_seed(0)
    llm, tok = load_llm("tiny")
    uid, iid = RecExplainerModel.prepare_tokenizer(llm, tok)
    model = RecExplainerModel.from_recommender(llm, small_mf, user_token_id=uid, item_token_id=iid)
    rows = build_alignment_rows(small_ds, small_mf, "hybrid", seed=0)
    return model, tok, rows


def test_answer_likelihood_equals_full_forward(model_and_rows, small_ds):
    model, tok, rows = model_and_rows
    names = item_names(small_ds)
    row = next(r for r in rows if r["task"] == "next_item")
    prompt = render_prompt(tok, row["prompt"])
    answers = [names[0], names[7], names[row["items"][0]]]
    ll = ev.answer_log_likelihoods(model, tok, prompt, row["soft_ids"], answers, chunk=2)
    for a, value in zip(answers, ll):
        enc = encode_pair(tok, prompt, a, max_prompt_tokens=100_000)
        batch = make_collate(tok.pad_token_id)([{"enc": enc, "soft_ids": row["soft_ids"], "task": "next_item"}])
        with torch.no_grad():
            nll = model(**batch).loss
        n = sum(lab != -100 for lab in enc.labels)
        assert float(value) == pytest.approx(float(-nll * n), rel=1e-4)


def test_catalogue_ranking_excludes_history(monkeypatch):
    rows = [{"task": "next_item", "split": "test", "items": [5], "history": [2], "soft_ids": [], "prompt": "p"}]
    seen = {}

    def fake(model, tok, prompt, soft, answers, chunk=256):
        seen["answers"] = list(answers)
        return torch.tensor([10.0 if a == "Green Rug" else -float(len(a)) for a in answers])

    monkeypatch.setattr(ev, "answer_log_likelihoods", fake)
    monkeypatch.setattr(ev, "prompts_of", lambda tok, rows: ["p"] * len(rows))
    out = ev.next_item_catalogue_metrics(None, None, rows, NAMES, k=2)
    assert "Red Lamp Deluxe" not in seen["answers"] and len(seen["answers"]) == 5
    assert out["hr@2"] == 1.0 and out["ndcg@2"] == 1.0 and out["method"].startswith("ours")


def test_baselines():
    rng = np.random.default_rng(1)
    t2 = [{"task": "ranking", "split": "test", "items": list(rng.permutation(20)[:5])} for _ in range(3000)]
    t1 = [{"task": "next_item", "split": "test", "items": [2], "history": [0]},
          {"task": "next_item", "split": "test", "items": [9], "history": [1]}]
    t3 = [{"task": "interest", "split": "test", "items": [0], "target": "Yes"},
          {"task": "interest", "split": "test", "items": [15], "target": "No"}]
    pop = np.arange(20, 0, -1).astype(float)  # item 0 most popular
    out = ev.baseline_metrics(t1 + t2 + t3, pop, seed=0, k=2)
    assert out["random"]["ranking"]["ndcg@5"] == pytest.approx(ev.expected_random_graded_ndcg(), abs=0.01)
    assert ev.expected_random_graded_ndcg() == pytest.approx(0.613, abs=0.001)
    # popularity: candidates sorted by popularity; top-2 lists skip the history: [1, 2] and [0, 2]
    assert out["popularity"]["next_item"]["hr@2"] == 0.5
    assert out["popularity"]["next_item"]["ndcg@2"] == pytest.approx(0.5 / math.log2(3))
    assert out["popularity"]["interest"]["accuracy"] == 1.0  # item 0 is above the median (Yes), item 15 below
    assert out["popularity"]["ranking"]["ndcg@5"] < 1.0


def test_evaluate_alignment_smoke(model_and_rows, small_ds):
    model, tok, rows = model_and_rows
    test = [r for r in rows if r["split"] == "test"]
    out = ev.evaluate_alignment(model, tok, test, item_names(small_ds), limit=2)
    assert set(out) == {"next_item", "next_item_catalogue", "ranking", "interest", "history"}
    assert out["interest"]["n"] == 2 and 0.0 <= out["interest"]["accuracy"] <= 1.0
    assert out["next_item"]["n"] == 2 and out["next_item_catalogue"]["n"] == 2


def test_plain_lm_on_behaviour_rows(model_and_rows, small_ds, small_mf):
    """The untrained base LLM is the same functions on a plain LM (behaviour rows: no soft ids)."""
    model, tok, _ = model_and_rows
    beh = [r for r in build_alignment_rows(small_ds, small_mf, "behaviour", tasks=["interest"]) if r["split"] == "test"]
    out = ev.interest_accuracy(model.llm, tok, beh[:4])
    assert out["n"] == 4
    # a plain LM is the wrapped model with nothing to splice: identical logits
    prompts = ev.prompts_of(tok, beh[:4])
    assert torch.allclose(ev.next_token_logits(model.llm, tok, prompts), ev.next_token_logits(model, tok, prompts))
    hyb = [r for r in build_alignment_rows(small_ds, small_mf, "hybrid", tasks=["interest"]) if r["split"] == "test"]
    with pytest.raises(ValueError, match="RecExplainerModel"):
        ev.interest_accuracy(model.llm, tok, hyb[:2])


def test_beam_candidates_are_the_continuations(tiny_llm):
    from explainrec.llm.generate import generate_texts

    llm, tok = tiny_llm
    prompts = [render_prompt(tok, [{"role": "user", "content": c}]) for c in ("hello there", "a longer prompt here")]
    greedy = generate_texts(llm, tok, prompts, max_new_tokens=5, progress=False)
    one = ev.generate_candidates(llm, tok, prompts, num_beams=1, max_new_tokens=5)
    assert [c[0] for c in one] == greedy  # prompt stripped, continuation only, one list per prompt
    five = ev.generate_candidates(llm, tok, prompts, num_beams=5, max_new_tokens=5, batch_size=2)
    assert [len(c) for c in five] == [5, 5] and all(len(set(c)) > 1 for c in five)
