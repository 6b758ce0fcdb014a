"""The study's report: per method P, Q, U and Human-Score with bootstrap 95% intervals, paired tests between the
methods, Krippendorff's alpha per dimension, each rater's means; markdown, JSON and a plot.

The unit is the pair. A pair's score for a method is the mean over the panel's raters who rated it; intervals
resample pairs (the raters are the panel as it is), and the paired tests compare two methods pair by pair with
:func:`explainrec.metrics.significance.paired_bootstrap` (the same test as ``explainrec compare``), so a pair's own
difficulty drops out. People form one panel; every LLM judge is a panel of its own, reported by the same code.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from explainrec.rate.agreement import krippendorff_alpha
from explainrec.rate.ratings import HUMAN, JUDGE, read_ratings
from explainrec.rate.rubric import DIMENSIONS, NAMES, PAPER_WEIGHTS, human_score

HS = "HS"  # the Human-Score column
COLUMNS = (*DIMENSIONS, HS)


def mean_interval(values, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The mean and its percentile-bootstrap interval (as in :mod:`explainrec.metrics.significance`); no interval
    from fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    out = {"mean": float(x.mean()) if x.size else None, "low": None, "high": None, "n": int(x.size)}
    if x.size >= 2:
        if np.allclose(x, x[0]):
            out.update(low=out["mean"], high=out["mean"])
        else:
            ci = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                                 method="percentile", rng=np.random.default_rng(seed)).confidence_interval
            out.update(low=float(ci.low), high=float(ci.high))
    return out


def panel_scores(study, records: list[dict], weights: dict) -> dict[str, dict[int, dict[str, float]]]:
    """method -> pair -> {P, Q, U, HS}: each pair's mean over the raters in ``records`` who rated it."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    by_pair: dict[int, list[dict]] = {}
    for r in records:
        by_pair.setdefault(r["pair"], []).append(r)
    for method in study.method_names:
        out[method] = {}
        for pair in sorted(by_pair):
            means = {d: float(np.mean([r["scores"][method][d] for r in by_pair[pair]])) for d in DIMENSIONS}
            out[method][pair] = {**means, HS: human_score(means, weights)}
    return out


def panel_report(study, records: list[dict], weights: dict, *, n_resamples: int, seed: int) -> dict:
    """One panel's table (per method, with intervals) and its paired tests (every two methods, every column)."""
    from explainrec.metrics.significance import paired_bootstrap

    scores = panel_scores(study, records, weights)
    pairs = sorted({r["pair"] for r in records})
    table = {m: {c: mean_interval([scores[m][p][c] for p in pairs], n_resamples=n_resamples, seed=seed)
                 for c in COLUMNS} for m in study.method_names}
    tests = []
    if len(pairs) >= 2:
        for a, b in combinations(study.method_names, 2):
            for c in COLUMNS:
                result = paired_bootstrap([scores[a][p][c] for p in pairs], [scores[b][p][c] for p in pairs],
                                          n_resamples=n_resamples, seed=seed)
                tests.append({"a": a, "b": b, "column": c, **result})
    return {"raters": sorted({r["rater"] for r in records}), "pairs": len(pairs), "ratings": len(records),
            "table": table, "tests": tests}


def agreement(study, records: list[dict], raters: list[str]) -> dict:
    """Krippendorff's alpha (ordinal) per dimension among ``raters``; units are (pair, method)."""
    units = [(p, m) for p in range(len(study.pairs)) for m in study.method_names]
    rated = {(r["rater"], r["pair"]): r for r in records if r["rater"] in raters}
    out = {"raters": raters}
    shared = sum(1 for p in range(len(study.pairs)) if sum((x, p) in rated for x in raters) >= 2)
    out["pairs_rated_by_two_or_more"] = shared
    for d in DIMENSIONS:
        data = [[rated[(x, p)]["scores"][m][d] if (x, p) in rated else None for p, m in units] for x in raters]
        out[d] = krippendorff_alpha(data, "ordinal")
    return out


def build_report(study, *, weights: dict | None = None, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Everything the report shows, as a dict (also written as report.json)."""
    weights = dict(weights or PAPER_WEIGHTS)
    ratings = read_ratings(study)
    latest = list(ratings.latest().values())
    humans = sorted({r["rater"] for r in latest if r["kind"] == HUMAN})
    judges = sorted({r["rater"] for r in latest if r["kind"] == JUDGE})
    panels = {}
    if humans:
        panels["humans"] = panel_report(study, [r for r in latest if r["kind"] == HUMAN], weights,
                                        n_resamples=n_resamples, seed=seed)
    for judge in judges:
        panels[judge] = panel_report(study, [r for r in latest if r["rater"] == judge], weights,
                                     n_resamples=n_resamples, seed=seed)
    agreements = []
    if len(humans) >= 2:
        agreements.append(agreement(study, latest, humans))
    for judge in judges:
        if humans:
            agreements.append(agreement(study, latest, [*humans, judge]))
    per_rater = []
    for rater in [*humans, *judges]:
        mine = [r for r in latest if r["rater"] == rater]
        row = {"rater": rater, "kind": mine[0]["kind"], "pairs": len(mine)}
        for d in DIMENSIONS:
            row[d] = float(np.mean([r["scores"][m][d] for r in mine for m in study.method_names]))
        row["HS"] = {m: float(np.mean([human_score(r["scores"][m], weights) for r in mine]))
                     for m in study.method_names}
        per_rater.append(row)
    return {"study": study.id, "folder": str(study.folder), "methods": study.methods, "n_pairs": len(study.pairs),
            "weights": weights, "n_resamples": n_resamples, "seed": seed, "ratings_file": str(study.ratings_path),
            "lines_read": len(ratings.records), "problems": ratings.problems, "panels": panels,
            "agreement": agreements, "per_rater": per_rater}


def _cell(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.3f}" + (f" [{s['low']:.2f}, {s['high']:.2f}]" if s["low"] is not None else "")


def _alpha(value) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def to_markdown(report: dict) -> str:
    w = report["weights"]
    lines = [f"# Human evaluation: study {report['study']} ({report['folder']})", "",
             f"{report['n_pairs']} pairs, methods {', '.join(m['name'] for m in report['methods'])}. "
             f"Human-Score = {w['P']:g} P + {w['Q']:g} Q + {w['U']:g} U. Scores are means over pairs of the panel's "
             f"mean per pair, with percentile-bootstrap 95% intervals over pairs ({report['n_resamples']} "
             f"resamples, seed {report['seed']}).", "",
             f"Ratings: {report['ratings_file']}, {report['lines_read']} lines read."]
    if report["problems"]:
        lines += ["", f"**{len(report['problems'])} line(s) skipped:**", ""] + [f"- {p}" for p in report["problems"]]
    if not report["panels"]:
        lines += ["", "No ratings yet."]
    for name, panel in report["panels"].items():
        title = "People" if name == "humans" else f"LLM judge `{name}`"
        lines += ["", f"## {title}: {panel['pairs']} pairs rated, raters {', '.join(panel['raters'])}", "",
                  f"| method | P ({NAMES['P']}) | Q ({NAMES['Q']}) | U ({NAMES['U']}) | Human-Score |",
                  "|---|---|---|---|---|"]
        for method, row in panel["table"].items():
            lines.append(f"| {method} | " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
        if panel["tests"]:
            lines += ["", "Paired tests on the same pairs (B minus A; bootstrap 95% interval, sign-flip permutation "
                          "p, not corrected for the number of tests):", "",
                      "| A | B | score | B - A | 95% interval | p |", "|---|---|---|---:|---|---:|"]
            for t in panel["tests"]:
                lines.append(f"| {t['a']} | {t['b']} | {t['column']} | {t['diff']:+.3f} | "
                             f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] | {t['p_value']:.3g} |")
    if report["agreement"]:
        lines += ["", "## Agreement: Krippendorff's alpha (ordinal; units are (pair, method))", "",
                  "| raters | pairs rated by 2+ | P | Q | U |", "|---|---:|---:|---:|---:|"]
        for a in report["agreement"]:
            lines.append(f"| {', '.join(a['raters'])} | {a['pairs_rated_by_two_or_more']} | "
                         + " | ".join(_alpha(a[d]) for d in DIMENSIONS) + " |")
    if report["per_rater"]:
        methods = [m["name"] for m in report["methods"]]
        lines += ["", "## Per rater (means over all the rater's scores; Human-Score per method)", "",
                  "| rater | pairs | P | Q | U | " + " | ".join(f"HS {m}" for m in methods) + " |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(methods)]
        for r in report["per_rater"]:
            lines.append(f"| {r['rater']} | {r['pairs']}/{report['n_pairs']} | {r['P']:.2f} | {r['Q']:.2f} | "
                         f"{r['U']:.2f} | " + " | ".join(f"{r['HS'][m]:.2f}" for m in methods) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> Path | None:
    """Bars of P, Q, U and Human-Score per method with their 95% intervals, one panel per rater group."""
    if not report["panels"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(report["panels"].items())
    methods = [m["name"] for m in report["methods"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1, 3.6), squeeze=False, sharey=True)
    width = 0.8 / len(methods)
    for ax, (name, panel) in zip(axes[0], panels):
        for j, method in enumerate(methods):
            row = panel["table"][method]
            means = [row[c]["mean"] for c in COLUMNS]
            err = [[m - (row[c]["low"] if row[c]["low"] is not None else m) for m, c in zip(means, COLUMNS)],
                   [(row[c]["high"] if row[c]["high"] is not None else m) - m for m, c in zip(means, COLUMNS)]]
            ax.bar(np.arange(len(COLUMNS)) + (j - (len(methods) - 1) / 2) * width, means, width, yerr=err,
                   capsize=3, label=method)
        ax.set_xticks(range(len(COLUMNS)), ["P", "Q", "U", "Human-Score"])
        ax.set_ylim(1, 5)
        ax.set_title(f"{'people' if name == 'humans' else name} ({panel['pairs']} pairs)", fontsize=10)
    axes[0][0].set_ylabel("score (1-5), 95% interval")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path.with_suffix(".tmp.png"), dpi=120)
    plt.close(fig)
    path.with_suffix(".tmp.png").replace(path)
    return path


def save_report(study, out_dir: str | Path | None = None, **kw) -> tuple[dict, dict[str, Path]]:
    """Build the report and write ``report.md``, ``report.json`` and ``report.png`` (atomically) into ``out_dir``
    (the study folder by default)."""
    from explainrec.io import atomic_write_json, atomic_write_text

    report = build_report(study, **kw)
    out = Path(out_dir) if out_dir is not None else study.folder
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json"}
    atomic_write_text(paths["md"], to_markdown(report))
    atomic_write_json(paths["json"], report)
    png = plot(report, out / "report.png")
    if png is not None:
        paths["png"] = png
    return report, paths
