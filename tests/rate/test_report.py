"""The report over a synthetic two-rater study: Human-Score, intervals, paired tests, alpha, per-rater means."""
from __future__ import annotations

import json

import numpy as np
import pytest

from explainrec.rate import create_study
from explainrec.rate.ratings import HUMAN, JUDGE, append_rating, rating_record
from explainrec.rate.report import build_report, mean_interval, save_report

# pair -> method -> (P, Q, U). Alice rates pairs 0-4, Bob pairs 0-1 only, so alpha rests on the units of pairs
# 0 and 1: (pair 0, A), (pair 0, B), (pair 1, A), (pair 1, B).
ALICE = {0: {"A": (1, 4, 4), "B": (2, 3, 3)}, 1: {"A": (3, 5, 4), "B": (4, 2, 2)},
         2: {"A": (5, 4.5, 4), "B": (3, 3, 3.5)}, 3: {"A": (4, 4, 4), "B": (2, 2, 2)},
         4: {"A": (4.5, 5, 5), "B": (3, 3, 3)}}
# Bob's P against Alice's P on those four units is the hand-worked example of test_agreement.py: (1,1), (2,3),
# (3,3), (4,5) -> ordinal alpha 281/316; his Q and U equal Alice's (alpha 1).
BOB = {0: {"A": (1, 4, 4), "B": (3, 3, 3)}, 1: {"A": (3, 5, 4), "B": (5, 2, 2)}}


@pytest.fixture
def two_rater_study(tmp_path, files):
    study = create_study(tmp_path / "study", {"A": files["reference"], "B": files["constant"]}, n_pairs=5, seed=1)
    for rater, given in (("alice", ALICE), ("bob", BOB)):
        for pair, by_method in given.items():
            scores = {m: dict(zip("PQU", v)) for m, v in by_method.items()}
            append_rating(study.ratings_path, rating_record(study, rater, HUMAN, pair, scores))
    return study


def hs(p, q, u):
    return 0.4 * p + 0.3 * q + 0.3 * u


def test_human_score_is_the_mean_over_pairs_of_the_raters_mean(two_rater_study):
    report = build_report(two_rater_study, n_resamples=2000)
    table = report["panels"]["humans"]["table"]
    # per pair, A: pair 0 (1,4,4) both; pair 1 (3,5,4) both; then Alice alone
    a_pairs = [hs(1, 4, 4), hs(3, 5, 4), hs(5, 4.5, 4), hs(4, 4, 4), hs(4.5, 5, 5)]
    # B: pair 0 P = mean(2, 3) = 2.5, pair 1 P = mean(4, 5) = 4.5
    b_pairs = [hs(2.5, 3, 3), hs(4.5, 2, 2), hs(3, 3, 3.5), hs(2, 2, 2), hs(3, 3, 3)]
    assert table["A"]["HS"]["mean"] == pytest.approx(np.mean(a_pairs))
    assert table["B"]["HS"]["mean"] == pytest.approx(np.mean(b_pairs))
    assert table["B"]["P"]["mean"] == pytest.approx(np.mean([2.5, 4.5, 3, 2, 3]))
    assert table["A"]["Q"]["mean"] == pytest.approx(np.mean([4, 5, 4.5, 4, 5]))
    # the interval is a percentile bootstrap over pairs: compare with one drawn independently here
    rng = np.random.default_rng(123)
    draws = np.asarray(a_pairs)[rng.integers(0, 5, size=(20_000, 5))].mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    assert table["A"]["HS"]["low"] == pytest.approx(low, abs=0.08)
    assert table["A"]["HS"]["high"] == pytest.approx(high, abs=0.08)
    assert min(a_pairs) <= table["A"]["HS"]["low"] < table["A"]["HS"]["mean"] < table["A"]["HS"]["high"] <= max(a_pairs)
    # the paired test compares the same pairs: B - A on the per-pair Human-Scores
    test = next(t for t in report["panels"]["humans"]["tests"] if t["column"] == "HS")
    assert (test["a"], test["b"], test["n"]) == ("A", "B", 5)
    assert test["diff"] == pytest.approx(np.mean(b_pairs) - np.mean(a_pairs))
    assert test["ci_high"] < 0


def test_alpha_per_dimension_and_per_rater_means(two_rater_study):
    report = build_report(two_rater_study, n_resamples=500)
    (alpha,) = report["agreement"]
    assert alpha["raters"] == ["alice", "bob"] and alpha["pairs_rated_by_two_or_more"] == 2
    assert alpha["P"] == pytest.approx(281 / 316)
    assert alpha["Q"] == pytest.approx(1.0) and alpha["U"] == pytest.approx(1.0)
    bob = next(r for r in report["per_rater"] if r["rater"] == "bob")
    assert bob["pairs"] == 2 and bob["P"] == pytest.approx(np.mean([1, 3, 3, 5]))
    assert bob["HS"]["B"] == pytest.approx(np.mean([hs(3, 3, 3), hs(5, 2, 2)]))


def test_weights_are_configurable(two_rater_study):
    report = build_report(two_rater_study, weights={"P": 1.0, "Q": 0.0, "U": 0.0}, n_resamples=500)
    table = report["panels"]["humans"]["table"]
    assert table["A"]["HS"]["mean"] == pytest.approx(table["A"]["P"]["mean"])


def test_a_judge_is_a_panel_of_its_own_and_is_compared_with_the_people(two_rater_study):
    study = two_rater_study
    for pair in range(5):
        scores = {m: {"P": 3.25, "Q": 3.5, "U": 3.75} for m in study.method_names}
        append_rating(study.ratings_path, rating_record(study, "judge:tiny", JUDGE, pair, scores))
    report = build_report(study, n_resamples=500)
    assert list(report["panels"]) == ["humans", "judge:tiny"]
    assert report["panels"]["humans"]["raters"] == ["alice", "bob"]  # the judge is not among the people
    assert report["panels"]["judge:tiny"]["table"]["A"]["P"]["mean"] == pytest.approx(3.25)
    assert [a["raters"] for a in report["agreement"]] == [["alice", "bob"], ["alice", "bob", "judge:tiny"]]


def test_the_report_files_and_a_corrupt_line(two_rater_study, tmp_path):
    with open(two_rater_study.ratings_path, "a") as f:
        f.write("{torn\n")
    report, paths = save_report(two_rater_study, tmp_path / "out", n_resamples=500)
    assert set(paths) == {"md", "json", "png"} and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert len(report["problems"]) == 1 and "line 8: broken JSON" in report["problems"][0]
    md = paths["md"].read_text()
    assert "line 8: broken JSON" in md and "| A | 3." in md and "Krippendorff" in md and "0.889" in md
    assert json.loads(paths["json"].read_text())["panels"]["humans"]["pairs"] == 5


def test_mean_interval_edge_cases():
    assert mean_interval([4.0, 4.0, 4.0]) == {"mean": 4.0, "low": 4.0, "high": 4.0, "n": 3}
    assert mean_interval([3.5]) == {"mean": 3.5, "low": None, "high": None, "n": 1}
