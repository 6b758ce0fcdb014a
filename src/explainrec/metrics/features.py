"""PETER's feature-level explainability metrics (Li et al., ACL 2021, Sec. 5.2): FMR, FCR, DIV.

They need the ground-truth feature word(s) of every pair (e.g. "battery", "service"), as in the
PETER/PEPLER review datasets. A feature is "generated" when its tokens (same normalisation as BLEU)
appear contiguously in the prediction, so one-word features reduce to PETER's token test and
multi-word aspects ("battery life") also work.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from explainrec.metrics.text import tokenize


def _feature_key(feature: str) -> tuple[str, ...]:
    return tuple(tokenize(feature))


def generated_features(prediction_tokens: Sequence[str], vocab: set[tuple[str, ...]], lengths: Iterable[int]) -> set:
    """The vocabulary features whose token sequence occurs in the prediction."""
    found = set()
    for n in lengths:
        for i in range(len(prediction_tokens) - n + 1):
            gram = tuple(prediction_tokens[i : i + n])
            if gram in vocab:
                found.add(gram)
    return found


def feature_metrics(
    predictions: Sequence[str],
    features: Sequence[Sequence[str]],
    feature_vocab: Iterable[str] | None = None,
) -> dict[str, float]:
    """FMR, FCR and DIV over pairs that have at least one ground-truth feature.

    With F_i the set of vocabulary features found in prediction i, g_i the pair's ground-truth features
    and V the feature vocabulary (default: all ground-truth features of these rows; PETER uses every
    feature of the dataset -- pass ``feature_vocab`` for that):

    * FMR = (1/N) sum_i 1[g_i ∩ F_i ≠ ∅]           -- fraction of predictions that mention their feature
    * FCR = |∪_i F_i| / |V|                       -- share of the feature vocabulary ever generated
    * DIV = (2 / (N(N-1))) sum_{i<j} |F_i ∩ F_j|  -- mean overlap of two predictions' features; lower = more diverse

    DIV is computed exactly in O(N * |F_i|) as sum_f C(c_f, 2) / C(N, 2), where c_f = #predictions
    generating feature f, instead of PETER's O(N^2) double loop. FMR/FCR are fractions in [0, 1]
    (as PETER reports them); DIV is a count (0 when N < 2).
    """
    if len(predictions) != len(features):
        raise ValueError(f"{len(predictions)} predictions but {len(features)} feature lists")
    gold = [{k for k in map(_feature_key, fs) if k} for fs in features]
    keep = [i for i, g in enumerate(gold) if g]
    if not keep:
        raise ValueError("feature_metrics: no row has a ground-truth feature")
    if feature_vocab is None:
        vocab = set().union(*(gold[i] for i in keep))
    else:
        vocab = {k for k in map(_feature_key, feature_vocab) if k}
        vocab |= set().union(*(gold[i] for i in keep))  # a gold feature is always part of the vocabulary
    lengths = sorted({len(k) for k in vocab})

    hits = 0
    covered: set = set()
    counts: Counter = Counter()
    for i in keep:
        found = generated_features(tokenize(predictions[i]), vocab, lengths)
        hits += bool(found & gold[i])
        covered |= found
        counts.update(found)
    n = len(keep)
    pairs = n * (n - 1) / 2
    return {
        "fmr": hits / n,
        "fcr": len(covered) / len(vocab),
        "div": sum(c * (c - 1) / 2 for c in counts.values()) / pairs if pairs else 0.0,
        "n_with_features": n,
        "feature_vocab_size": len(vocab),
    }
