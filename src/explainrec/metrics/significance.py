"""Paired comparison of two methods on the same (user, item) pairs: is a gap bigger than the test set's noise?

With ~300 test pairs per dataset, a point or two of ROUGE-L or BERTScore can come from which pairs happen to be in
the split. Pairing the two methods' scores pair by pair removes the pairs' own difficulty from the comparison; the
bootstrap gives a confidence interval of the mean gap and a sign-flip permutation test its p-value (both from
scipy.stats). Only per-pair metrics are compared (sentence BLEU, ROUGE, BERTScore, pair retrieval's reciprocal rank,
length); corpus-level BLEU and Distinct have no per-pair value. The reciprocal rank ranks each pair's own reference
among the shared pairs' references, the same candidates for both files, so the test is conditional on that set.

Across training runs (seeds) the unit is the run, not the pair: :func:`compare_seeds` tests each seed's pair of
runs as above, then the seeds' mean gaps with a one-sample t-test (with 3 seeds only a large, steady gap passes).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from explainrec.data.schema import DataError
from explainrec.metrics.predictions import check_rows
from explainrec.metrics.report import evaluate

# per-pair metrics worth a test, in report order (avg_len is there to show a length difference, not as a quality)
BERTSCORE_MODEL = "minilm"  # the embedded encoder
PAIRED_METRICS = ("sent_bleu", "rouge1", "rouge2", "rougeL", "bertscore_p", "bertscore_r", "bertscore_f1", "ret_mrr",
                  "avg_len")


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of ``b - a`` with its bootstrap confidence interval (percentile) and a two-sided permutation p-value.

    The p-value flips the sign of each pair's difference (the null: the two methods are exchangeable on every
    pair): exactly, over all ``2**n`` flips, when there are no more of them than ``n_resamples`` (scipy enumerates
    them); otherwise over ``n_resamples`` random flips, counting the observed one, so it is never 0. A gap that is
    the same on every pair has the exact p ``2 / 2**n`` (only the two flips with all signs equal reach it), and 1
    when that gap is 0.
    """
    from scipy import stats

    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"need two 1-D score lists of one length; got {a_arr.shape} and {b_arr.shape}")
    if a_arr.size < 2:
        raise ValueError(f"need at least 2 paired scores; got {a_arr.size}")
    diff = b_arr - a_arr
    mean = float(diff.mean())
    if np.all(diff == diff[0]):  # no spread: the interval is the point (a bootstrap of one value), the p exact
        p = 1.0 if diff[0] == 0 else min(1.0, 2.0 ** (1 - diff.size))
        return {"mean_a": float(a_arr.mean()), "mean_b": float(b_arr.mean()), "diff": mean, "ci_low": mean,
                "ci_high": mean, "p_value": p, "n": int(diff.size)}
    rng = np.random.default_rng(seed)
    boot = stats.bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                           method="percentile", rng=rng)
    perm = stats.permutation_test((diff,), np.mean, permutation_type="samples", n_resamples=n_resamples,
                                  alternative="two-sided", rng=rng)
    return {"mean_a": float(a_arr.mean()), "mean_b": float(b_arr.mean()), "diff": mean,
            "ci_low": float(boot.confidence_interval.low), "ci_high": float(boot.confidence_interval.high),
            "p_value": float(perm.pvalue), "n": int(diff.size)}


def align(rows_a: Sequence[dict], rows_b: Sequence[dict], names: tuple[str, str] = ("A", "B")) -> tuple[list, list]:
    """The rows of both files on the pairs they share, in A's order, keyed by (user, item) when every row has
    them, else by position; refuses files whose references differ on a shared pair (not the same test set)."""
    rows_a, rows_b = check_rows(rows_a, names[0]), check_rows(rows_b, names[1])
    keyed = all(r.get("user") is not None and r.get("item") is not None for r in [*rows_a, *rows_b])
    if not keyed:
        if len(rows_a) != len(rows_b):
            raise DataError(f"{names[0]} has {len(rows_a)} rows and {names[1]} {len(rows_b)}, and without user/item "
                            "fields they can only be paired by position")
        pairs = list(zip(rows_a, rows_b))
    else:
        by_key = {(str(r["user"]), str(r["item"])): r for r in rows_b}
        pairs = [(r, by_key[k]) for r in rows_a if (k := (str(r["user"]), str(r["item"]))) in by_key]
        if not pairs:
            raise DataError(f"{names[0]} and {names[1]} share no (user, item) pair")
    for i, (ra, rb) in enumerate(pairs):
        if ra["reference"].strip() != rb["reference"].strip():
            where = f"user {ra['user']}, item {ra['item']}" if keyed else f"row {i + 1}"
            raise DataError(f"{names[0]} and {names[1]} have different references for {where}: not the same test set")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def compare(
    rows_a: Sequence[dict],
    rows_b: Sequence[dict],
    *,
    names: tuple[str, str] = ("A", "B"),
    bertscore: bool = True,
    bertscore_model: str = BERTSCORE_MODEL,
    n_resamples: int = 10_000,
    seed: int = 0,
    scorer=None,
    specificity: bool = True,
    encoder=None,
) -> dict:
    """``{"names", "n", "unpaired": (len A, len B), "metrics": {metric: paired_bootstrap(...)}}``, B minus A.
    ``scorer``: a loaded :class:`~explainrec.metrics.semantic.BertScoreModel` to reuse (else one is loaded);
    ``encoder``: a loaded :class:`~explainrec.metrics.embedding.SentenceEncoder` for pair retrieval (``ret_mrr``, the
    per-pair reciprocal rank x100) to reuse (else one is loaded; without it, ``ret_mrr`` is left out)."""
    n_a, n_b = len(rows_a), len(rows_b)
    paired_a, paired_b = align(rows_a, rows_b, names)
    kw = {"bertscore": bertscore, "bertscore_model": bertscore_model, "buckets": False, "per_example": True,
          "specificity": specificity}
    if bertscore:
        from explainrec.metrics.semantic import BertScoreModel

        kw["bertscore_kwargs"] = {"scorer": scorer or BertScoreModel(bertscore_model)}  # one encoder for both
    if specificity:
        kw["specificity"], kw["specificity_kwargs"] = _sentence_encoder(encoder)  # one encoder for both
    per_a = evaluate(paired_a, **kw)["per_example"]
    per_b = evaluate(paired_b, **kw)["per_example"]
    metrics = {m: paired_bootstrap(per_a[m], per_b[m], n_resamples=n_resamples, seed=seed)
               for m in PAIRED_METRICS if m in per_a}
    return {"names": list(names), "n": len(paired_a), "unpaired": [n_a - len(paired_a), n_b - len(paired_b)],
            "metrics": metrics, "n_resamples": n_resamples, "seed": seed}


def _sentence_encoder(encoder) -> tuple[bool, dict | None]:
    """``(specificity on?, specificity_kwargs)`` with a loaded encoder; off (with a warning) when none loads."""
    if encoder is None:
        import warnings

        from explainrec.metrics.specificity import load_sentence_encoder

        encoder, why = load_sentence_encoder()
        if encoder is None:
            warnings.warn(f"pair retrieval (ret_mrr) left out: {why}", stacklevel=3)
            return False, None
    return True, {"encoder": encoder}


def to_markdown(result: dict) -> str:
    """A table: both means, the gap B - A with its 95% interval, and the p-value."""
    a, b = result["names"]
    lines = [f"Paired comparison on {result['n']} shared pairs: {b} minus {a} (bootstrap 95% interval, "
             f"sign-flip permutation p; {result['n_resamples']} resamples, seed {result['seed']})", "",
             f"| metric | {a} | {b} | {b} - {a} | 95% interval | p |", "|---|---:|---:|---:|---|---:|"]
    for name, r in result["metrics"].items():
        lines.append(f"| {name} | {r['mean_a']:.2f} | {r['mean_b']:.2f} | {r['diff']:+.2f} | "
                     f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['p_value']:.3g} |")
    if any(result["unpaired"]):
        lines += ["", f"Left out (no partner in the other file): {result['unpaired'][0]} rows of {a}, "
                      f"{result['unpaired'][1]} of {b}."]
    return "\n".join(lines)


def seed_files(folder: str | Path) -> dict[str, Path]:
    """The ``seedK/predictions.jsonl`` files of a run group (a bench's ``OUT/DATASET/RUN``), keyed by ``seedK``."""
    return {p.parent.name: p for p in sorted(Path(folder).glob("seed*/predictions.jsonl"))}


def over_seeds(gaps: Sequence[float], confidence: float = 0.95) -> dict[str, float | None]:
    """Mean of the per-seed gaps, its t interval and the one-sample t-test p (None with fewer than 2 seeds, and
    when the gaps do not vary: the t statistic is then undefined, and no test says the gap is certain)."""
    from scipy import stats

    g = np.asarray(gaps, dtype=float)
    out = {"diff": float(g.mean()), "sd": None, "ci_low": None, "ci_high": None, "p_value": None, "seeds": int(g.size),
           "b_ahead": int((g > 0).sum())}
    if g.size >= 2:
        sd = float(g.std(ddof=1))
        half = float(stats.t.ppf((1 + confidence) / 2, g.size - 1)) * sd / np.sqrt(g.size)
        p = float(stats.ttest_1samp(g, 0.0).pvalue) if sd > 0 else None
        out.update(sd=sd, ci_low=out["diff"] - half, ci_high=out["diff"] + half, p_value=p)
    return out


def compare_seeds(files_a: Mapping[str, str | Path], files_b: Mapping[str, str | Path], *,
                  names: tuple[str, str] = ("A", "B"), **kw) -> dict:
    """:func:`compare` on every seed both sides have (``seed -> predictions file``), then :func:`over_seeds` per
    metric. ``kw`` goes to :func:`compare`."""
    from explainrec.metrics.predictions import load_predictions

    seeds = sorted(set(files_a) & set(files_b))
    if not seeds:
        raise DataError(f"{names[0]} ({sorted(files_a) or 'no seed*/predictions.jsonl'}) and {names[1]} "
                        f"({sorted(files_b) or 'no seed*/predictions.jsonl'}) share no seed")
    if kw.get("bertscore", True) and kw.get("scorer") is None:  # load the encoder once for every seed
        from explainrec.metrics.semantic import BertScoreModel

        kw["scorer"] = BertScoreModel(kw.get("bertscore_model", BERTSCORE_MODEL))
    if kw.get("specificity", True) and kw.get("encoder") is None:  # and the sentence encoder once
        kw["specificity"], spec_kw = _sentence_encoder(None)
        kw["encoder"] = (spec_kw or {}).get("encoder")
    per_seed = {s: compare(load_predictions(files_a[s]), load_predictions(files_b[s]), names=names, **kw)
                for s in seeds}
    for s in seeds:  # user sensitivity, where both runs of the seed have it beside their predictions
        per_seed[s]["metrics"].update(compare_sensitivity(Path(files_a[s]).parent / "sensitivity.json",
                                                          Path(files_b[s]).parent / "sensitivity.json",
                                                          n_resamples=kw.get("n_resamples", 10_000),
                                                          seed=kw.get("seed", 0)))
    metrics = [m for m in (*PAIRED_METRICS, *SENSITIVITY_FIGURES) if all(m in r["metrics"] for r in per_seed.values())]
    return {"names": list(names), "seeds": seeds, "per_seed": per_seed,
            "over_seeds": {m: over_seeds([per_seed[s]["metrics"][m]["diff"] for s in seeds]) for m in metrics},
            "missing": [sorted(set(files_a) - set(seeds)), sorted(set(files_b) - set(seeds))]}


# user sensitivity (explainrec.methods.sensitivity): result key -> the per-swap figure it averages
SENSITIVITY_FIGURES = {"user_change": "change", "user_toward": "toward_profile"}


def compare_sensitivity(path_a: Path, path_b: Path, *, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """B minus A on the user-sensitivity figures of two ``sensitivity.json`` files ({} when either is missing).

    Paired swap by swap when both probed the same (user, other user, item) triples; otherwise (a method with
    clusters picks its other users across clusters) the two sets of swaps are independent samples: a bootstrap of
    the difference of means and a permutation test of independent samples.
    """
    import json

    from scipy import stats

    if not (path_a.is_file() and path_b.is_file()):
        return {}
    swaps = [json.loads(p.read_text())["swaps"] for p in (path_a, path_b)]
    keys = [[(str(w["user"]), str(w["other_user"]), str(w["item"])) for w in side] for side in swaps]
    out = {}
    for name, figure in SENSITIVITY_FIGURES.items():
        if keys[0] == keys[1]:
            pairs = [(x[figure], y[figure]) for x, y in zip(*swaps) if x[figure] is not None and y[figure] is not None]
            if len(pairs) >= 2:
                out[name] = {**paired_bootstrap(*zip(*pairs), n_resamples=n_resamples, seed=seed), "paired": True}
            continue
        a, b = ([w[figure] for w in side if w[figure] is not None] for side in swaps)
        if len(a) < 2 or len(b) < 2:
            continue
        rng = np.random.default_rng(seed)
        diff = lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis)  # noqa: E731
        boot = stats.bootstrap((a, b), diff, n_resamples=n_resamples, method="percentile", rng=rng)
        perm = stats.permutation_test((a, b), diff, n_resamples=n_resamples, alternative="two-sided", rng=rng)
        out[name] = {"mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)), "diff": float(np.mean(b) - np.mean(a)),
                     "ci_low": float(boot.confidence_interval.low), "ci_high": float(boot.confidence_interval.high),
                     "p_value": float(perm.pvalue), "n": min(len(a), len(b)), "paired": False}
    return out


def seeds_to_markdown(result: dict) -> str:
    """Per seed the paired gap B - A (interval, p) of each metric, then the mean over seeds with its t-test."""
    a, b = result["names"]
    metrics = list(result["over_seeds"])
    lines = [f"{b} minus {a} per seed (paired over that seed's shared pairs: gap [bootstrap 95% interval], "
             f"permutation p) and over {len(result['seeds'])} seeds (mean gap [t 95% interval], one-sample t-test p)",
             "", "| seed | n | " + " | ".join(metrics) + " |", "|---|---:|" + "---|" * len(metrics)]
    for s, r in result["per_seed"].items():
        cells = [f"{m['diff']:+.2f} [{m['ci_low']:+.2f}, {m['ci_high']:+.2f}], p {m['p_value']:.2g}"
                 for m in (r["metrics"][k] for k in metrics)]
        lines.append(f"| {s} | {r['n']} | " + " | ".join(cells) + " |")
    cells = []
    for k in metrics:
        o = result["over_seeds"][k]
        spread = f" [{o['ci_low']:+.2f}, {o['ci_high']:+.2f}], p {o['p_value']:.2g}" if o["p_value"] is not None else ""
        if o["sd"] == 0:
            spread = " (the same on every seed: no spread, the t-test is undefined)"
        cells.append(f"**{o['diff']:+.2f}**{spread}; {o['b_ahead']}/{o['seeds']} ahead")
    lines.append("| over seeds | | " + " | ".join(cells) + " |")
    if any(result["missing"]):
        lines += ["", f"Seeds on one side only (left out): {a} {result['missing'][0]}, {b} {result['missing'][1]}."]
    return "\n".join(lines)
