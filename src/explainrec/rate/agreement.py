"""Krippendorff's alpha: agreement among raters beyond chance, for any number of raters and missing ratings.

Written here rather than taken from a library: the one well-kept package for it (``krippendorff``) is GPL-3.0,
which this Apache-2.0 toolkit should not pull in. It follows Krippendorff (2011), "Computing Krippendorff's
Alpha-Reliability", section C, and is checked against that paper's worked example and a small example worked by
hand (tests/rate/test_agreement.py).

Ordinal is the metric for 1-5 scores: a 4 against a 5 is a smaller disagreement than a 1 against a 5, and the
distance between two scores grows with how many ratings lie between them (not with their difference, which would
assume the scale is evenly spaced).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRICS = ("nominal", "ordinal", "interval")


def coincidences(data: Sequence[Sequence[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """``(values, o)``: the distinct values of pairable units (sorted) and the coincidence matrix ``o[c, k]``.

    ``data`` is raters x units (Krippendorff's reliability data matrix); None or NaN is a missing rating. A unit
    with ``m`` >= 2 ratings adds, for every ordered pair of ratings by different raters, ``1 / (m - 1)`` to their
    cell; units rated once cannot be compared and add nothing.
    """
    columns: list[list[float]] = []
    n_units = max((len(row) for row in data), default=0)
    for u in range(n_units):
        column = [float(row[u]) for row in data if u < len(row) and _present(row[u])]
        if len(column) >= 2:
            columns.append(column)
    values = np.array(sorted({v for column in columns for v in column}), dtype=float)
    index = {v: i for i, v in enumerate(values.tolist())}
    o = np.zeros((len(values), len(values)))
    for column in columns:
        counts = np.zeros(len(values))
        for v in column:
            counts[index[v]] += 1
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(column) - 1)
    return values, o


def distances(values: np.ndarray, n_c: np.ndarray, metric: str) -> np.ndarray:
    """Squared distances ``delta^2[c, k]`` between the values under ``metric`` (``n_c``: each value's count)."""
    if metric == "nominal":
        return 1.0 - np.eye(len(values))
    if metric == "interval":
        return np.subtract.outer(values, values) ** 2
    if metric == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])  # cum[i] = n_0 + ... + n_{i-1}
        lo, hi = np.minimum.outer(np.arange(len(values)), np.arange(len(values))), \
            np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        between = cum[hi + 1] - cum[lo]  # n_lo + ... + n_hi
        return (between - (n_c[lo] + n_c[hi]) / 2) ** 2
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def krippendorff_alpha(data: Sequence[Sequence[float | None]], metric: str = "ordinal") -> float | None:
    """alpha = 1 - D_o / D_e (observed over expected disagreement); 1 is perfect agreement, 0 chance level.

    None when it is undefined: no unit rated by two raters, or a single value used throughout (no variation to
    agree on).
    """
    values, o = coincidences(data)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n <= 1 or len(values) < 2:
        return None
    d2 = distances(values, n_c, metric)
    observed = (o * d2).sum() / n
    expected = (np.outer(n_c, n_c) * d2).sum() / (n * (n - 1))
    if expected == 0:
        return None
    return float(1 - observed / expected)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
