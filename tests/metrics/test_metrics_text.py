"""Hand-checked BLEU/ROUGE/Distinct/USR values and agreement with sacrebleu / rouge_score."""
import math

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from explainrec.metrics import text


def test_tokenize_splits_clitics_and_punctuation():
    assert text.tokenize("I don't like it's plot... Great!!") == [
        "i", "do", "n't", "like", "it", "'s", "plot", ".", "great", "!"
    ]
    assert text.tokenize("They’ve WE'LL you're I'm he'd") == ["they", "'ve", "we", "'ll", "you", "'re", "i", "'m", "he", "'d"]
    assert text.tokenize("well-made (cheap), users' pick") == ["well-made", "(", "cheap", ")", ",", "users", "'", "pick"]
    assert text.tokenize("") == []


def test_bleu_identical_is_100():
    s = "the user would enjoy this thrilling book"
    assert text.bleu([s], [s], 4) == pytest.approx(100.0, abs=1e-9)
    assert text.bleu([s], [s], 1) == pytest.approx(100.0, abs=1e-9)


def test_bleu_constructed_case_by_hand():
    # pair A: every n-gram matches, hypothesis 2 tokens short; pair B: clipped repeats, 1 token long.
    hyps = ["a b c d e", "x y x y"]
    refs = ["a b c d e f g", "x y z"]
    d = text.bleu_details([text.tokenize(h) for h in hyps], [text.tokenize(r) for r in refs], 4)
    assert d["matches"] == [7, 5, 3, 2]
    assert d["totals"] == [9, 7, 5, 3]
    assert (d["hyp_len"], d["ref_len"]) == (9, 10)
    bp = math.exp(1 - 10 / 9)
    assert d["brevity_penalty"] == pytest.approx(bp, abs=1e-12)
    # p1..p4 = 7/9, 5/7, 3/5, 2/3 -> product = 2/9
    assert text.bleu(hyps, refs, 4) == pytest.approx(100 * bp * (2 / 9) ** 0.25, abs=1e-6)
    assert text.bleu(hyps, refs, 1) == pytest.approx(100 * bp * 7 / 9, abs=1e-6)


def test_bleu_zero_precision_gives_zero():
    # three tokens have no 4-gram, so p4 = 0 and (unsmoothed) BLEU-4 = 0 while BLEU-1 = 100
    assert text.bleu(["a b c"], ["a b c"], 4) == 0.0
    assert text.bleu(["a b c"], ["a b c"], 1) == pytest.approx(100.0)
    assert text.bleu([""], ["a b c"], 1) == 0.0


def test_bleu_long_hypothesis_has_no_brevity_penalty():
    d = text.bleu_details([["a", "b", "c", "d", "e"]], [["a", "b", "c", "d"]], 1)
    assert d["brevity_penalty"] == 1.0
    assert d["bleu"] == pytest.approx(80.0)


@pytest.mark.parametrize(
    "hyps,refs",
    [
        (
            ["the cat sat on the mat", "a great book for fans of history", "the user likes fast paced thrillers a lot"],
            ["the cat is on the mat", "a great read for fans of historical fiction", "this user likes fast paced thrillers"],
        ),
        (  # hypotheses shorter than references: brevity penalty active
            ["he enjoys romance novels", "good food and a friendly staff here"],
            ["he enjoys romance novels with strong heroines", "good food and a friendly staff here every night"],
        ),
    ],
)
def test_bleu4_matches_sacrebleu_without_tokenisation_or_smoothing(hyps, refs):
    ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none").score
    assert ref > 0
    assert text.bleu(hyps, refs, 4) == pytest.approx(ref, abs=1e-6)


def test_sacrebleu_wrappers_equal_library():
    hyps = ["The user would love it!", "Great pizza, friendly staff."]
    refs = ["The user would enjoy it.", "The pizza is great and the staff friendly."]
    score, signature = text.sacrebleu_corpus(hyps, refs)
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert "tok:13a" in signature
    per = text.sentence_bleu(hyps, refs)
    assert per == pytest.approx([sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs)])


def test_rouge_equals_rouge_score():
    hyps = ["The user would love this thrilling mystery.", "Great pizza and friendly staff", "nothing alike"]
    refs = ["This user loves thrilling mysteries with twists.", "The pizza is great; staff are friendly.", "the book is long"]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    per = text.rouge_per_example(hyps, refs)
    means = text.rouge(hyps, refs)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert per[k] == pytest.approx([100 * d[k].fmeasure for d in direct])
        assert means[k] == pytest.approx(sum(per[k]) / 3)
    assert text.rouge(["same words here"], ["same words here"])["rougeL"] == pytest.approx(100.0)


def test_distinct_hand_cases():
    # unigrams a b a a c -> {a, b, c} 3/5; bigrams (a,b) (b,a) (a,c) all distinct
    assert text.distinct(["a b a", "a c"], 1) == pytest.approx(60.0)
    assert text.distinct(["a b a", "a c"], 2) == pytest.approx(100.0)
    assert text.distinct(["a a", "a a"], 1) == pytest.approx(25.0)
    assert text.distinct(["a a", "a a"], 2) == pytest.approx(50.0)
    assert text.distinct(["a", "b"], 2) == 0.0  # no bigram at all


def test_usr_hand_cases():
    assert text.usr(["Great food!", "great food !", "bad"]) == pytest.approx(2 / 3)
    assert text.usr(["a", "b", "c", "d"]) == 1.0
    assert text.usr(["x"] * 5) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        text.usr([])
