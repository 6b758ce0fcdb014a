"""Krippendorff's alpha against a published worked example and one worked by hand."""
from __future__ import annotations

import pytest

from explainrec.rate.agreement import coincidences, krippendorff_alpha

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, missing values
PUBLISHED = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
             [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
             [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
             [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]


@pytest.mark.parametrize("metric, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_matches_the_published_worked_example(metric, expected):
    assert krippendorff_alpha(PUBLISHED, metric) == pytest.approx(expected, abs=5e-4)


def test_ordinal_alpha_of_a_hand_worked_example():
    """Two raters, four units: (1,1), (2,3), (3,3), (4,5).

    Coincidences: o11 = 2, o23 = o32 = 1, o33 = 2, o45 = o54 = 1; value counts n1..n5 = 2, 1, 3, 1, 1 (n = 8).
    Ordinal distance: delta(c,k) = n_c + ... + n_k - (n_c + n_k) / 2, so delta(2,3) = 4 - 2 = 2 and
    delta(4,5) = 2 - 1 = 1. Observed: D_o = (2*4 + 2*1) / 8 = 10/8. Expected: sum over c < k of n_c n_k delta^2 =
    2*2.25 + 6*12.25 + 2*30.25 + 2*42.25 + 3*4 + 1*16 + 1*25 + 3*4 + 3*9 + 1*1 = 316, both orders 632, so
    D_e = 632 / (8 * 7). alpha = 1 - (10/8) / (632/56) = 1 - 35/316 = 281/316.
    """
    values, o = coincidences([[1, 2, 3, 4], [1, 3, 3, 5]])
    assert values.tolist() == [1, 2, 3, 4, 5]
    assert o.sum(axis=1).tolist() == [2, 1, 3, 1, 1]
    assert o[1, 2] == o[2, 1] == 1 and o[0, 0] == 2 and o[2, 2] == 2 and o[3, 4] == 1
    assert krippendorff_alpha([[1, 2, 3, 4], [1, 3, 3, 5]], "ordinal") == pytest.approx(281 / 316, abs=1e-12)


def test_half_points_and_missing_ratings():
    """Half points are values like any other; a unit rated once adds nothing (same alpha without it)."""
    with_single = [[1, 2.5, 3, 4.5, 2], [1, 3, 3, 5, N]]
    assert krippendorff_alpha(with_single) == pytest.approx(krippendorff_alpha([[1, 2.5, 3, 4.5], [1, 3, 3, 5]]))


def test_perfect_agreement_is_one_and_no_variation_is_undefined():
    assert krippendorff_alpha([[1, 2, 5, 4], [1, 2, 5, 4], [1, 2, 5, N]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[3, 3, 3], [3, 3, 3]]) is None  # one value throughout: nothing to agree on
    assert krippendorff_alpha([[1, N], [N, 2]]) is None  # no unit rated twice
