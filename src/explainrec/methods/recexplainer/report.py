"""`explainrec evaluate RUN --extra alignment --data D`: how well a RecExplainer run is aligned to its recommender
(the paper's Table 1) and how faithful its explanations are (automatic checks standing in for the GPT-4 judge).

The table holds, on the run's held-out alignment rows: the aligned model, the untrained LLM (asked the titles-only
form of the same questions: it cannot read vectors), and the random and popularity baselines. The explanation
checks ask the aligned model and the untrained LLM whether the user will like an item, on the recommender's own
Yes/No test pairs. The command (and the bench, for every RecExplainer run) writes ``alignment.json`` and
``alignment.md``; :func:`section_alignment` is the bench report's section over them (experiment kind ``alignment``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from explainrec.data.schema import Dataset
from explainrec.metrics.seed_tables import cell, datasets, groups, missing_note, read_json

TASK_COLUMNS = (("next_item", "hr@5", "T1 HR@5"), ("next_item", "ndcg@5", "T1 NDCG@5"),
                ("next_item_catalogue", "hr@5", "T1 HR@5 (catalogue, ours)"), ("ranking", "ndcg@5", "T2 NDCG@5"),
                ("interest", "accuracy", "T3 ACC"), ("history", "hcr", "T6 HCR"))


def alignment_report(run: str | Path, dataset: Dataset, *, limit: int | None = 100, explanations: int = 48,
                     catalogue_max: int = 3000, zero_shot: bool = True, max_new_tokens: int = 96,
                     echo=print) -> dict:
    """Evaluate the run in ``run`` (its model folder and its ``alignment/`` rows) on ``dataset``."""
    from explainrec.llm.load import load_llm
    from explainrec.methods.llm_method import load_tokenizer
    from explainrec.methods.model_folder import data_fingerprint, open_model_folder
    from explainrec.methods.recexplainer.alignment_data import build_alignment_rows, query_recommender, read_rows
    from explainrec.methods.recexplainer.alignment_eval import baseline_metrics, evaluate_alignment
    from explainrec.methods.recexplainer.config import RecExplainerConfig
    from explainrec.methods.recexplainer.recipe import ALIGNMENT, allowed_items, load_recexplainer
    from explainrec.methods.runs import RunFolderError

    folder, manifest = open_model_folder(run, expect="recexplainer")
    if (manifest.get("data") or {}).get("fingerprint") != data_fingerprint(dataset.users, dataset.items):
        raise RunFolderError(f"{folder}: trained on other data than {dataset.name!r}; pass the dataset it was trained on")
    cfg = RecExplainerConfig.from_dict(manifest["config"], f"{folder}/explainrec.json config")
    model, rec, names = load_recexplainer(folder, manifest)
    tokenizer = load_tokenizer(folder)
    test_file = Path(run) / ALIGNMENT / f"{cfg.variant}.test.jsonl"
    a = cfg.alignment
    rows = read_rows(test_file) if test_file.exists() else [
        r for r in build_alignment_rows(dataset, rec, cfg.variant, seed=cfg.seed, max_users=a.max_users,
                                        holdout_frac=a.holdout_frac, max_title_chars=a.max_title_chars,
                                        allowed=allowed_items(dataset, cfg))
        if r["split"] == "test"]
    catalogue = rec.n_items <= catalogue_max
    echo(f"[alignment] {cfg.variant}: {len(rows)} held-out rows, at most {limit} per task")
    table = {cfg.variant: evaluate_alignment(model, tokenizer, rows, names, limit=limit, catalogue_ranking=catalogue)}
    base = None
    if zero_shot:  # the rows after the variant's are its baselines, in the order tables show them
        base, base_tok = load_llm(cfg.model, device="cpu", dtype="float32")
        text_rows = _behaviour_form(dataset, rec, cfg, rows)
        key = zero_shot_key(cfg.model, _first_per_task(text_rows, limit), names, catalogue)
        table["zero-shot"] = _cached(key, echo, lambda: evaluate_alignment(
            base, base_tok, text_rows, names, limit=limit, catalogue_ranking=catalogue))
    popularity = np.bincount(dataset.interactions.of_split("train").item, minlength=dataset.n_items)
    table.update(baseline_metrics(_first_per_task(rows, limit), popularity, seed=cfg.seed))
    report = {"run": str(run), "variant": cfg.variant, "recommender": rec.config, "limit_per_task": limit,
              "catalogue_ranking": catalogue, "columns": [list(c) for c in TASK_COLUMNS], "alignment": table}
    if explanations:
        users = np.unique([r["user"] for r in rows if r.get("user") is not None])
        queries = query_recommender(rec, dataset, users if len(users) else None, seed=cfg.seed,
                                    allowed=allowed_items(dataset, cfg))
        report["explanations"] = explanation_checks(model, tokenizer, rec, names, dataset, queries, cfg,
                                                    n=explanations, base=(base, base_tok) if base is not None else None,
                                                    max_new_tokens=max_new_tokens)
    return report


def zero_shot_key(model: str, rows: list[dict], names, catalogue: bool) -> str:
    """What the untrained LLM's table depends on: the model, the scored questions, the item names, the metric set.
    The three variants of one recommender ask it the same questions, so one evaluation serves all three."""
    blob = json.dumps({"model": model, "rows": rows, "names": list(names), "catalogue": catalogue,
                       "version": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cached(key: str, echo, compute) -> dict:
    """The zero-shot table from explainrec's cache (``$EXPLAINREC_CACHE``, see :func:`cache_root`), else computed
    and stored there. A hit needs the same model name, questions, names and metrics (the key); JSON only."""
    from explainrec.io import atomic_write_json
    from explainrec.llm.load import cache_root

    path = cache_root() / "alignment-zero-shot" / f"{key}.json"
    if path.exists():
        try:
            table = json.loads(path.read_text())
            echo(f"[alignment] zero-shot: the same questions were scored before; reusing {path}")
            return table
        except (OSError, ValueError):
            pass  # unreadable: compute again and replace it
    table = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, table)
    except OSError as e:  # a read-only cache is no reason to fail the report
        echo(f"[alignment] could not cache the zero-shot table at {path}: {e}")
    return table


def _first_per_task(rows: list[dict], limit: int | None) -> list[dict]:
    """The rows the metrics score: the first ``limit`` of each task (as evaluate_alignment takes them)."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        seen[r["task"]] = seen.get(r["task"], 0) + 1
        if limit is None or seen[r["task"]] <= limit:
            out.append(r)
    return out


def _behaviour_form(dataset, rec, cfg, rows: list[dict]) -> list[dict]:
    """The titles-only form of the same held-out questions (same users, pairs and templates: same seed)."""
    from explainrec.methods.recexplainer.alignment_data import build_alignment_rows
    from explainrec.methods.recexplainer.recipe import allowed_items

    if cfg.variant == "behaviour":
        return rows
    a = cfg.alignment
    return [r for r in build_alignment_rows(dataset, rec, "behaviour", seed=cfg.seed, max_users=a.max_users,
                                            holdout_frac=a.holdout_frac, max_title_chars=a.max_title_chars,
                                            allowed=allowed_items(dataset, cfg))
            if r["split"] == "test"]


def explanation_checks(model, tokenizer, rec, names, dataset, queries, cfg, *, n: int, base=None,
                       max_new_tokens: int = 96) -> dict:
    """Decision agreement, score probe, grounding, attribution and counterfactual on ``n`` explanations."""
    from explainrec.methods.recexplainer.explanation_checks import (
        attribution,
        counterfactual_consistency,
        counterfactual_pairs,
        decision_agreement,
        explain,
        explanation_rows,
        grounding,
        influence_of,
        score_probe,
        swapped_decisions,
    )

    rows = explanation_rows(dataset, queries, cfg.variant, source="test", max_users=max(1, n // 2), seed=cfg.seed)
    texts = explain(model, tokenizer, rows, max_new_tokens=max_new_tokens)
    labels = [r["label"] for r in rows]
    scores = [r["score"] for r in rows]
    users, items = [r["user"] for r in rows], [r["items"][0] for r in rows]
    hists, infl = influence_of(rec, users, items)
    out = {"n": len(rows), "examples": [{"user": dataset.users.decode(r["user"]),
                                         "item": dataset.items.decode(r["items"][0]), "recommender": r["label"],
                                         "text": t} for r, t in zip(rows[:4], texts[:4])]}
    baseline_texts = None
    if base is not None:
        text_rows = explanation_rows(dataset, queries, "behaviour", source="test", max_users=max(1, n // 2),
                                     seed=cfg.seed)
        baseline_texts = explain(base[0], base[1], text_rows, max_new_tokens=max_new_tokens)
        out["zero-shot"] = {"decision": decision_agreement(baseline_texts, labels),
                            "grounding": grounding(baseline_texts, [r["history"] for r in rows], items, names)}
    out["decision"] = decision_agreement(texts, labels)
    out["probe"] = score_probe(texts, scores, baseline_texts=baseline_texts, labels=labels, seed=cfg.seed)
    out["grounding"] = grounding(texts, [r["history"] for r in rows], items, names)
    out["attribution"] = attribution(texts, hists, infl, names)
    if cfg.variant != "behaviour":  # the counterfactual swaps the user vector: a titles-only model has none
        cf = counterfactual_pairs(rec, users, items, seed=cfg.seed)
        by_pair = {(u, i): k for k, (u, i) in enumerate(zip(users, items))}

        def decide(us, its, swaps):
            chosen = [rows[by_pair[(int(u), int(i))]] for u, i in zip(us, its)]
            return swapped_decisions(model, tokenizer, chosen, [int(v) for v in swaps])

        out["counterfactual"] = counterfactual_consistency(decide, users, items, cf["swap_users"], cf["expected"],
                                                           cf["flipped"])
    return out


def to_markdown(report: dict) -> str:
    """The alignment table (rows: the run's variant, zero-shot, random, popularity) and the explanation checks."""
    lines = [f"# Alignment of `{report['run']}` ({report['variant']}, recommender {report['recommender'].get('kind')})",
             "", f"Held-out alignment rows, at most {report['limit_per_task']} per task.", "",
             "| | " + " | ".join(label for _, _, label in TASK_COLUMNS) + " |",
             "|---|" + "---:|" * len(TASK_COLUMNS)]
    for name, tasks in report["alignment"].items():
        cells = []
        for task, key, _ in TASK_COLUMNS:
            v = (tasks.get(task) or {}).get(key)
            cells.append("–" if v is None or v != v else f"{v:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ex = report.get("explanations")
    if ex:
        lines += ["", f"## Explanation checks ({ex['n']} explanations of the recommender's Yes/No test pairs)", ""]
        zs = ex.get("zero-shot") or {}
        lines += ["| check | aligned | zero-shot |", "|---|---:|---:|",
                  f"| decision agrees with the recommender | {ex['decision']['agreement']:.3f} | "
                  f"{(zs.get('decision') or {}).get('agreement', float('nan')):.3f} |",
                  f"| score probe MSE (constant: {ex['probe']['mse_constant']:.4f}) | {ex['probe']['mse']:.4f} | "
                  f"{(ex['probe'].get('baseline') or {}).get('mse', float('nan')):.4f} |",
                  f"| score probe Yes/No AUC | {ex['probe'].get('auc', float('nan')):.3f} | "
                  f"{(ex['probe'].get('baseline') or {}).get('auc', float('nan')):.3f} |",
                  f"| grounded share of item names | {ex['grounding']['grounded']:.3f} | "
                  f"{(zs.get('grounding') or {}).get('grounded', float('nan')):.3f} |",
                  f"| hallucinated item names per text | {ex['grounding']['hallucinated_per_text']:.3f} | "
                  f"{(zs.get('grounding') or {}).get('hallucinated_per_text', float('nan')):.3f} |",
                  f"| attribution lift (top-2 influential vs other history items named) | "
                  f"{ex['attribution']['lift']:.3f} (n {ex['attribution']['n']}) | – |"]
        if "counterfactual" in ex:
            cf = ex["counterfactual"]
            lines.append(f"| counterfactual: decision follows the swapped user's label | {cf['follows']:.3f} "
                         f"(flipped pairs {cf.get('follows_flipped', float('nan')):.3f}, n {cf['n']}) | – |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- bench report


def section_alignment(cfg, results, runs, out) -> list[str]:
    """Table 1 of a method aligned to a recommender (each run's RUN/alignment.json: its ``columns`` name the
    metrics) and the checks of its explanations."""
    lines = ["## Alignment to the recommender (Table 1) and explanation checks", "",
             "Held-out alignment rows of each run (Task 1: HR/NDCG@5 of the recommender's top-1 over 5 beams, exact "
             "title match; the catalogue column ranks every catalogue title by likelihood, ours; Task 2: graded "
             "NDCG@5; Task 3: Yes/No accuracy from the next-token logits; Task 6: share of generated history titles "
             "really in the history). Random, popularity and the untrained LLM (titles-only questions) are scored "
             "on the first run's rows.", ""]
    for ds in datasets(cfg, results):
        found = [x for _, rs in groups(results, ds, runs) for r in rs
                 if (x := read_json(r.planned.run_dir / "alignment.json"))]
        columns = [tuple(c) for c in found[0]["columns"]] if found else []
        lines += [f"### {ds}", ""]
        if not columns:
            lines += ["_No finished run with an alignment report yet._", ""]
            continue
        lines += ["| run | " + " | ".join(label for _, _, label in columns) + " |", "|---|" + "---:|" * len(columns)]
        checks, baselines = [], None
        for run, rs in groups(results, ds, runs):
            reports = [x for r in rs if (x := read_json(r.planned.run_dir / "alignment.json"))]
            if not reports:
                lines.append(f"| {run}{missing_note(rs)} | " + " | ".join("–" for _ in columns) + " |")
                continue
            variant = reports[0]["variant"]
            cells = []
            for task, key, _ in columns:
                vals = [v for rep in reports if (v := ((rep["alignment"].get(variant) or {}).get(task) or {}).get(key))
                        is not None and v == v]
                cells.append(cell("usr", vals) if vals else "–")
            lines.append(f"| {run} ({variant}) | " + " | ".join(cells) + " |")
            # the rows beside the aligned model (untrained LLM, random, ...), as the method's report wrote them
            baselines = baselines or {n: row for n, row in reports[0]["alignment"].items() if n != variant}
            checks.append((run, reports))
        for name, row in (baselines or {}).items():
            cells = [("–" if (v := (row.get(t) or {}).get(k)) is None or v != v else f"{v:.4f}") for t, k, _ in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if checks:
            lines += ["", "| run | decision agrees | probe MSE (zero-shot texts) | probe AUC | grounded | "
                      "hallucinated / text | attribution lift | counterfactual follows |", "|---|" + "---:|" * 7]
            for run, reports in checks:
                ex = reports[0].get("explanations") or {}
                if not ex:
                    continue
                probe, cf = ex["probe"], ex.get("counterfactual") or {}
                lines.append(
                    f"| {run} | {ex['decision']['agreement']:.3f} | {probe['mse']:.4f} "
                    f"({(probe.get('baseline') or {}).get('mse', float('nan')):.4f}) | {probe.get('auc', float('nan')):.3f} "
                    f"| {ex['grounding']['grounded']:.3f} | {ex['grounding']['hallucinated_per_text']:.2f} | "
                    f"{ex['attribution']['lift']:.2f} | {cf.get('follows', float('nan')):.3f} |")
        lines.append("")
    return lines
