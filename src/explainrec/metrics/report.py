"""One entry point that scores a prediction set with every metric and writes metrics.json + metrics.md.

Per-example metrics (ROUGE, sentence BLEU, BERTScore, length) are computed once and averaged over each
subset; corpus-level metrics (BLEU, sacreBLEU, Distinct, USR, FMR/FCR/DIV) are recomputed on each
subset, so a bucket's BLEU is the BLEU of that bucket's rows, not an average of anything. Pair retrieval
(:mod:`explainrec.metrics.specificity`) ranks each pair's own reference among the whole file's references
once; a bucket averages its rows' values, and its candidates stay the whole file's references.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

from explainrec.data.schema import DataError
from explainrec.io import atomic_write_json, atomic_write_text
from explainrec.metrics import features as feat
from explainrec.metrics import semantic, specificity as spec, text
from explainrec.metrics.predictions import check_rows

# name -> (label, higher_is_better, description); higher_is_better None = no better direction.
METRICS: dict[str, tuple[str, bool | None, str]] = {
    "bleu1": ("BLEU-1", True, "corpus BLEU-1 x100, unsmoothed, PEPLER tokens"),
    "bleu4": ("BLEU-4", True, "corpus BLEU-4 x100, unsmoothed, PEPLER tokens (PETER/PEPLER/GaVaMoE)"),
    "sacrebleu": ("sacreBLEU", True, "sacrebleu.corpus_bleu defaults on raw text, x100 (not the PEPLER BLEU-4)"),
    "sent_bleu": ("sentBLEU", True, "mean sacrebleu.sentence_bleu x100 (smoothed); gives BLEU a spread"),
    "rouge1": ("ROUGE-1", True, "mean ROUGE-1 F1 x100 (rouge_score, no stemmer)"),
    "rouge2": ("ROUGE-2", True, "mean ROUGE-2 F1 x100 (rouge_score, no stemmer)"),
    "rougeL": ("ROUGE-L", True, "mean ROUGE-L F1 x100 (rouge_score, no stemmer)"),
    "distinct1": ("Distinct-1", True, "distinct unigrams / all unigrams over all predictions, x100"),
    "distinct2": ("Distinct-2", True, "distinct bigrams / all bigrams over all predictions, x100"),
    "usr": ("USR", True, "unique predictions / predictions, fraction in [0, 1]"),
    "bertscore_p": ("BERTScore P", True, "mean BERTScore precision x100"),
    "bertscore_r": ("BERTScore R", True, "mean BERTScore recall x100"),
    "bertscore_f1": ("BERTScore F1", True, "mean BERTScore F1 x100"),
    "ret_r1": ("Ret-R@1", True, "pair retrieval: % of pairs whose own reference is the nearest of the file's distinct "
               "references to the prediction (MiniLM cosine); chance 100/N"),
    "ret_r10": ("Ret-R@10", True, "pair retrieval: % of pairs whose own reference is among the 10 nearest of the "
                "file's distinct references; chance 100*min(10, N)/N"),
    "ret_mrr": ("Ret-MRR", True, "pair retrieval: mean reciprocal rank of the own reference, x100 (a percentage like "
                "the other scores, not a fraction in [0, 1]); chance 100*H_N/N"),
    "user_change": ("User-Δ", True, "user sensitivity: 100 * (1 - ROUGE-L F1) between an item's explanation for its "
                    "user and for another user (explainrec sensitivity; a template scores 0)"),
    "user_toward": ("User→", True, "user sensitivity: how much the text moves toward the other user's profile "
                    "(MiniLM cosine, swapped minus original, x100; a template scores 0)"),
    "fmr": ("FMR", True, "feature matching ratio, fraction (PETER)"),
    "fcr": ("FCR", True, "feature coverage ratio, fraction (PETER)"),
    "div": ("DIV", False, "feature diversity: mean feature overlap of two predictions (PETER); lower is better"),
    "avg_len": ("Avg. length", None, "mean prediction length in PEPLER tokens"),
}
_FRACTIONS = {"usr", "fmr", "fcr"}  # printed with 4 decimals; everything else is x100 or a count

STD_DESCRIPTION = "population std (ddof=0) of the per-example values, as XRec's np.std"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def _aggregate(idx: list[int], rows: list[dict], tokens: dict, per: dict[str, list[float]], feature_vocab) -> dict:
    """Metrics and stds of the rows at ``idx`` (corpus metrics recomputed, per-example ones averaged)."""
    preds = [rows[i]["prediction"] for i in idx]
    refs = [rows[i]["reference"] for i in idx]
    hyp_tok = [tokens["pred"][i] for i in idx]
    ref_tok = [tokens["ref"][i] for i in idx]
    metrics: dict[str, float] = {
        "bleu1": text.bleu_details(hyp_tok, ref_tok, 1)["bleu"],
        "bleu4": text.bleu_details(hyp_tok, ref_tok, 4)["bleu"],
        "sacrebleu": text.sacrebleu_corpus(preds, refs)[0],
        "distinct1": text.distinct(preds, 1),
        "distinct2": text.distinct(preds, 2),
        "usr": text.usr(preds),
    }
    std: dict[str, float] = {}
    for name, values in per.items():
        metrics[name], std[name] = _mean_std([values[i] for i in idx])
    with_features = [i for i in idx if rows[i].get("features")]
    if with_features:
        fm = feat.feature_metrics(
            [rows[i]["prediction"] for i in with_features], [rows[i]["features"] for i in with_features], feature_vocab
        )
        metrics.update({k: fm[k] for k in ("fmr", "fcr", "div")})
    ordered = {k: metrics[k] for k in METRICS if k in metrics}
    return {"n": len(idx), "metrics": ordered, "std": {k: std[k] for k in METRICS if k in std}}


def evaluate(
    rows: Sequence[dict],
    *,
    bertscore: bool = True,
    bertscore_model: str = "minilm",
    bertscore_kwargs: dict | None = None,
    buckets: bool = True,
    feature_vocab: Sequence[str] | None = None,
    per_example: bool = False,
    specificity: bool = True,
    specificity_kwargs: dict | None = None,
) -> dict:
    """Score prediction rows (from :func:`load_predictions` or dicts with prediction/reference keys).

    Returns ``{"n", "metrics", "std", "buckets"?, "config", "per_example"?}``: ``metrics`` maps the names
    in :data:`METRICS` to values, ``std`` holds the per-example spread where one exists, ``buckets``
    the same per ``bucket`` value when rows carry one (and ``buckets=True``). Rows of several methods
    are refused: score each method on its own. ``bertscore_kwargs`` go to
    :class:`~explainrec.metrics.semantic.BertScoreModel` (num_layers, rescale_with_baseline, device, ...);
    ``bertscore_kwargs={"scorer": BertScoreModel(...)}`` reuses an already loaded encoder.

    ``specificity``: pair retrieval R@1/R@10/MRR (:func:`~explainrec.metrics.specificity.pair_retrieval`), when
    the sentence encoder loads (else ``config["specificity"]`` says why it was skipped); their chance levels go
    to ``result["chance"]``. ``specificity_kwargs``: ``encoder`` (a loaded
    :class:`~explainrec.metrics.embedding.SentenceEncoder`, or any object with ``.encode``, to reuse),
    ``candidates`` (a larger list of references to rank, e.g. the whole split's), and the rest
    (``model``, ``device``, ...) to ``SentenceEncoder``.
    """
    rows = check_rows(rows)
    methods = sorted({str(r["method"]) for r in rows if r.get("method") is not None})
    if len(methods) > 1:
        raise DataError(f"rows mix {len(methods)} methods ({', '.join(methods)}); evaluate each method separately")
    preds = [r["prediction"] for r in rows]
    refs = [r["reference"] for r in rows]
    tokens = {"pred": [text.tokenize(p) for p in preds], "ref": [text.tokenize(r) for r in refs]}

    per: dict[str, list[float]] = {"sent_bleu": text.sentence_bleu(preds, refs)}
    per.update(text.rouge_per_example(preds, refs))
    config: dict = {
        "tokenizer": text.TOKENIZER_DESCRIPTION,
        "bleu": "corpus BLEU as PEPLER's bleu_score: clipped n-gram counts summed over the corpus, uniform "
        "weights, brevity penalty exp(1 - r/c) for c < r, unsmoothed (0 if any p_n = 0), one reference, x100",
        "sacrebleu": text.sacrebleu_corpus(preds[:1], refs[:1])[1],
        "sent_bleu": "sacrebleu.sentence_bleu defaults (13a, exp smoothing, effective order)",
        "rouge": text.ROUGE_DESCRIPTION,
        "distinct": "corpus-level distinct n-grams / all n-grams of the predictions, PEPLER tokens, x100",
        "usr": "unique PEPLER-token sequences / predictions, fraction",
        "std": STD_DESCRIPTION,
    }
    if bertscore:
        bs = semantic.bertscore(preds, refs, bertscore_model, **(bertscore_kwargs or {}))
        per.update({"bertscore_p": bs["precision"], "bertscore_r": bs["recall"], "bertscore_f1": bs["f1"]})
        config["bertscore"] = bs["config"]
    else:
        config["bertscore"] = "disabled"
    if specificity:
        chance = _specificity(preds, refs, per, config, specificity_kwargs)
    else:
        chance, config["specificity"] = None, "disabled"
    per["avg_len"] = [float(len(t)) for t in tokens["pred"]]
    if any(r.get("features") for r in rows):
        config["features"] = (
            "PETER FMR/FCR/DIV over rows with features; vocabulary = "
            + ("the given feature_vocab plus all gold features" if feature_vocab is not None else "all gold features of the scored rows")
        )
    if methods:
        config["method"] = methods[0]

    result = _aggregate(list(range(len(rows))), rows, tokens, per, feature_vocab)
    if buckets and any(r.get("bucket") is not None for r in rows):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.get("bucket") or "unassigned", []).append(i)
        result["buckets"] = {b: _aggregate(groups[b], rows, tokens, per, feature_vocab) for b in sorted(groups)}
    if chance:
        result["chance"] = chance
    result["config"] = config
    if per_example:
        result["per_example"] = per
    return result


def _specificity(preds: list[str], refs: list[str], per: dict, config: dict, kwargs: dict | None) -> dict | None:
    """Pair retrieval into ``per`` (x100 per example: [rank <= k], 1/rank) and ``config``; returns the chance levels,
    or None when the encoder cannot be loaded."""
    kw = dict(kwargs or {})
    encoder, candidates = kw.pop("encoder", None), kw.pop("candidates", None)
    if encoder is None:
        encoder, why = spec.load_sentence_encoder(**kw)
        if encoder is None:
            warnings.warn(f"pair retrieval skipped: {why}", stacklevel=3)
            config["specificity"] = f"skipped: {why}"
            return None
    pr = spec.pair_retrieval(preds, refs, candidates=candidates, encoder=encoder)
    for k in spec.KS:
        per[f"ret_r{k}"] = [100.0 if r <= k else 0.0 for r in pr["rank"]]
    per["ret_mrr"] = [100.0 * rr for rr in pr["reciprocal_rank"]]
    config["specificity"] = {
        "encoder": pr["encoder"],
        "candidates": pr["n_candidates"],
        "candidate_source": "the distinct references of the scored rows" if candidates is None
        else "the given candidate list (it holds every row's reference)",
        "rank": "1 + candidates strictly more similar to the prediction than the own reference (ties in the "
        "pair's favour; a blank prediction gets the last rank)",
        "buckets": "a bucket averages its rows' values; its candidates stay the whole file's references",
        "scale": "R@k and MRR x100; chance = a uniformly random ranking (R@k: k/N, MRR: H_N/N)",
    }
    return pr["chance"]


def _label(name: str, chance: dict) -> str:
    label = METRICS.get(name, (name,))[0]
    return f"{label} (chance {chance[name]:.2f})" if name in chance else label


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if name in _FRACTIONS else f"{value:.2f}"


def _arrow(higher: bool | None) -> str:
    return "↑" if higher else ("↓" if higher is False else "")


def to_markdown(result: dict, title: str = "Explanation quality") -> str:
    """Markdown report: a mean/std table, a per-bucket table when present, and the settings used."""
    lines = [f"# {title}", "", f"n = {result['n']}", "", "| Metric | Mean | Std | Better |", "|---|---:|---:|:---:|"]
    chance = result.get("chance") or {}
    for name, value in result["metrics"].items():
        higher = METRICS.get(name, (name, None, ""))[1]
        lines.append(f"| {_label(name, chance)} | {_fmt(name, value)} | {_fmt(name, result['std'].get(name))} | "
                     f"{_arrow(higher)} |")
    buckets = result.get("buckets")
    if buckets:
        names = list(buckets)
        lines += ["", "## Per bucket (mean ± std; corpus metrics computed on the bucket's rows)", ""]
        lines.append("| Metric | " + " | ".join(f"{b} (n={buckets[b]['n']})" for b in names) + " |")
        lines.append("|---|" + "---:|" * len(names))
        for name in METRICS:
            if not any(name in buckets[b]["metrics"] for b in names):
                continue
            cells = []
            for b in names:
                value = buckets[b]["metrics"].get(name)
                cell = _fmt(name, value)
                if value is not None and name in buckets[b]["std"]:
                    cell += f" ± {_fmt(name, buckets[b]['std'][name])}"
                cells.append(cell)
            lines.append(f"| {_label(name, chance)} | " + " | ".join(cells) + " |")
    config = result.get("config", {})
    bs = config.get("bertscore")
    lines += ["", "## Settings", ""]
    if isinstance(bs, dict):
        lines.append(
            f"- BERTScore: {bs['encoder']}, layer {bs['num_layers']}, rescale_with_baseline={bs['rescale_with_baseline']}, "
            "x100" + (f" -- **{bs['note']}**" if bs.get("note") else "")
        )
    sp = config.get("specificity")
    if isinstance(sp, dict):
        lines.append(f"- Pair retrieval (Ret-R@k, Ret-MRR): {sp['encoder']}; N = {sp['candidates']} candidates, "
                     f"{sp['candidate_source']}; {sp['rank']}; {sp['buckets']}; {sp['scale']}")
    for key, value in config.items():
        if key != "bertscore" and not (key == "specificity" and isinstance(value, dict)):
            lines.append(f"- {key}: {value}")
    lines.append("- ↑ higher is better, ↓ lower is better; USR/FMR/FCR are fractions, other scores are x100 (DIV and length are counts)")
    return "\n".join(lines) + "\n"


def report_paths(out_dir_or_prefix: str | Path) -> tuple[Path, Path]:
    """Where :func:`save_report` writes.

    A folder (existing, or a name without suffix) gets ``metrics.json``/``metrics.md``; a name ending in
    ``.json`` or ``.md`` gives ``<stem>.json``/``<stem>.md``; any other dotted name is a prefix:
    ``<name>.metrics.json``/``<name>.metrics.md``.
    """
    p = Path(out_dir_or_prefix)
    if p.is_dir() or str(out_dir_or_prefix).endswith(("/", "\\")) or p.suffix == "":
        return p / "metrics.json", p / "metrics.md"
    if p.suffix in (".json", ".md"):
        return p.with_suffix(".json"), p.with_suffix(".md")
    return p.with_name(p.name + ".metrics.json"), p.with_name(p.name + ".metrics.md")


def save_report(result: dict, out_dir_or_prefix: str | Path, title: str = "Explanation quality") -> tuple[Path, Path]:
    """Write the result as JSON and Markdown (each atomically); returns the two paths."""
    json_path, md_path = report_paths(out_dir_or_prefix)
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, to_markdown(result, title=title))
    return json_path, md_path
