"""The LLM judge's mechanics on the tiny random Llama: digit probabilities, the shared-prefix and padding layout,
the rubric in the prompt, and its ratings in the study's file (resumable). One test loads the embedded SmolLM2."""
from __future__ import annotations

import numpy as np
import pytest

from explainrec.rate.judge import Judge, digit_ids, expected, judge_name, judge_study, messages
from explainrec.rate.ratings import read_ratings
from explainrec.rate.rubric import LEVELS

CONTEXT = {"user": "u1", "item": "i2", "title": "cafe", "user_profile": "likes coffee", "item_profile": "cozy cafe",
           "history": ["tea shop", "bakery"]}
TEXTS = ["the user would enjoy the cozy cafe.", "cafe the enjoy", "great tacos and loud music for kids.", ""]


def test_the_prompt_holds_the_rubric_and_context_only_where_it_matters():
    p = messages("P", CONTEXT, TEXTS[0])[1]["content"]
    q = messages("Q", CONTEXT, TEXTS[0])[1]["content"]
    assert all(LEVELS["P"][s] in p for s in range(1, 6)) and "likes coffee" in p and "tea shop; bakery" in p
    assert all(LEVELS["Q"][s] in q for s in range(1, 6)) and "likes coffee" not in q  # quality: the text alone
    assert p.index("Criterion") < p.index("User profile") < p.index("Explanation: the user would")


def test_scores_are_probabilities_over_one_to_five(tiny_llm):
    judge = Judge(*tiny_llm, batch_size=3)
    probs = judge.probabilities([messages(d, CONTEXT, t) for d in "PQU" for t in TEXTS])
    assert probs.shape == (12, 5) and np.allclose(probs.sum(axis=1), 1)
    scores = expected(probs)
    assert ((scores >= 1) & (scores <= 5)).all() and scores.std() > 0  # the tiny model still reacts to its input
    assert expected(np.eye(5)).tolist() == [1, 2, 3, 4, 5]


def test_prefix_reuse_and_padding_leave_the_scores_as_one_prompt_alone(tiny_llm):
    """Rows of a batch are right-padded after a shared cached prefix; each must score as if run on its own."""
    judge = Judge(*tiny_llm, batch_size=4)
    chats = [messages("U", CONTEXT, t) for t in TEXTS]
    together = judge.probabilities(chats)
    alone = np.vstack([judge.probabilities([c], reuse_prefix=False) for c in chats])
    assert np.allclose(together, alone, atol=1e-5)
    # against the plain model call on the full prompt (no cache, no padding): the logits at the last position
    import torch

    model, tokenizer = tiny_llm
    ids = torch.tensor([judge.encode(chats[1])])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, digit_ids(tokenizer)]
    assert np.allclose(torch.softmax(logits, -1).numpy(), together[1], atol=1e-5)


def test_the_judge_rates_a_study_into_its_ratings_file_and_resumes(study, tiny_llm):
    judge = Judge(*tiny_llm, batch_size=8)
    name = judge_name("tiny")
    assert name == "judge:tiny"
    assert judge_study(study, judge, name, model_id="tiny", limit=3) == 3
    assert judge_study(study, judge, name, model_id="tiny") == 1  # only the pair it had not scored
    assert judge_study(study, judge, name, model_id="tiny") == 0
    ratings = read_ratings(study)
    assert ratings.problems == [] and sorted(r["pair"] for r in ratings.records) == [0, 1, 2, 3]
    record = ratings.records[0]
    assert record["kind"] == "judge" and record["model"] == "tiny"
    probs = record["probs"]["reversed"]["Q"]
    assert record["scores"]["reversed"]["Q"] == pytest.approx(float(np.dot(probs, [1, 2, 3, 4, 5])), abs=1e-3)


def test_a_tokenizer_that_splits_digits_is_refused():
    class Splitting:
        def encode(self, text, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="splits the digit '1'"):
        digit_ids(Splitting())


@pytest.mark.embedded
def test_the_embedded_smollm2_judges_a_pair():
    from explainrec.llm.load import load_llm

    model, tokenizer = load_llm("smollm2-135m", device="cpu")
    assert digit_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(d) for d in "12345"]
    probs = Judge(model, tokenizer).probabilities([messages(d, CONTEXT, TEXTS[0]) for d in "PQU"])
    assert probs.shape == (3, 5) and np.allclose(probs.sum(axis=1), 1)
