"""The rubric's scale (1-5, half points for people) and the Human-Score weights."""
from __future__ import annotations

import pytest

from explainrec.rate.rubric import LEVELS, check_score, criteria, human_score, parse_weights


def test_the_paper_criteria_are_all_there():
    rows = criteria()
    assert [c["key"] for c in rows] == ["P", "Q", "U"]
    assert all([lv["score"] for lv in c["levels"]] == [5, 4, 3, 2, 1] for c in rows)
    assert LEVELS["Q"][1] == "Text is unclear, incoherent, or poorly structured."


@pytest.mark.parametrize("value", [1, 1.5, 3, 4.5, 5])
def test_whole_and_half_points_are_scores(value):
    assert check_score(value) == value


@pytest.mark.parametrize("value", [0.5, 5.5, 4.2, "4", True, None, float("nan")])
def test_other_values_are_refused(value):
    with pytest.raises(ValueError):
        check_score(value)


def test_a_judge_may_give_any_value_in_range():
    assert check_score(3.1416, half_points=False) == 3.1416
    with pytest.raises(ValueError):
        check_score(5.01, half_points=False)


def test_weights_default_to_the_paper_and_must_sum_to_one():
    assert parse_weights(None) == {"P": 0.4, "Q": 0.3, "U": 0.3}
    assert parse_weights("P=0.5,U=0.25,Q=0.25") == {"P": 0.5, "Q": 0.25, "U": 0.25}
    assert human_score({"P": 4.5, "Q": 4, "U": 3}) == pytest.approx(0.4 * 4.5 + 0.3 * 4 + 0.3 * 3)
    for bad in ("0.5,0.5,0.5", "0.4,0.6", "P=1,P=0,Q=0", "a,b,c", "1.2,-0.1,-0.1"):
        with pytest.raises(ValueError):
            parse_weights(bad)
