"""PETER's FMR / FCR / DIV on hand cases and against the O(n^2) definition."""
import random

import pytest

from explainrec.metrics import feature_metrics


def test_feature_metrics_hand_case():
    preds = ["great battery and screen", "the screen is bright", "good screen and battery", "nice"]
    gold = [["battery"], ["price"], ["screen"], ["service"]]
    m = feature_metrics(preds, gold)
    assert m["fmr"] == pytest.approx(2 / 4)  # rows 1 and 3 mention their own feature
    assert m["fcr"] == pytest.approx(2 / 4)  # battery, screen out of battery, price, screen, service
    # pair overlaps: (1,2)=1 (1,3)=2 (2,3)=1, others 0 -> 4 / C(4,2)
    assert m["div"] == pytest.approx(4 / 6)


def test_feature_vocab_and_multiword_features():
    preds = ["the battery life is long", "battery is ok but life is short"]
    gold = [["battery life"], ["Battery Life"]]
    m = feature_metrics(preds, gold)
    assert m["fmr"] == pytest.approx(0.5)  # only the contiguous phrase counts
    assert m["feature_vocab_size"] == 1
    m2 = feature_metrics(preds, gold, feature_vocab=["battery life", "screen", "price"])
    assert m2["fcr"] == pytest.approx(1 / 3)
    assert m2["div"] == 0.0


def test_rows_without_features_are_left_out():
    m = feature_metrics(["the screen", "whatever"], [["screen"], []])
    assert m["n_with_features"] == 1 and m["fmr"] == 1.0 and m["div"] == 0.0
    with pytest.raises(ValueError):
        feature_metrics(["a"], [[]])


def test_div_equals_pairwise_definition():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(12)]
    vocab = words[:6]
    preds = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(40)]
    gold = [[rng.choice(vocab)] for _ in preds]
    sets = [set(p.split()) & set(vocab) for p in preds]
    # the gold-feature vocabulary may miss some of the 6 words; use it explicitly for the brute force
    used = {g[0] for g in gold}
    sets = [s & used for s in sets]
    brute = sum(len(sets[i] & sets[j]) for i in range(40) for j in range(i + 1, 40)) / (40 * 39 / 2)
    m = feature_metrics(preds, gold)
    assert m["div"] == pytest.approx(brute)
    assert m["fmr"] == pytest.approx(sum(g[0] in s for g, s in zip(gold, sets)) / 40)
    assert m["fcr"] == pytest.approx(len(set().union(*sets)) / len(used))
