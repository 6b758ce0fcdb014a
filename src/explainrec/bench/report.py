"""The bench report: one Markdown file (OUT/report.md) with the paper's tables, PNG figures in OUT/figures/.

Everything is read back from the run folders (``done.json``, ``train_summary.json``, the stages, ``error.txt``) and
from ``OUT/bench_log.jsonl``, so the report can be rebuilt at any time (``explainrec bench CONFIG --report-only``)
and shows whatever has finished. Experiments (the config's ``experiments:``), the bench's own:

    main       Table 2: one table per dataset, runs x (BLEU-1/4, ROUGE-1/L, Distinct-1/2, BERTScore P/R/F1,
               pair retrieval R@1/MRR, USR); runs evaluated before pair retrieval existed show "–" there
    ablation   Figure 3: the same table over the ablation runs, plus a bar chart per dataset
    sparsity   Figure 4: the metrics per user-activity bucket (ds1 most active ... ds3 sparsest), table + bars
    decoding   greedy against the decoding chosen on the valid split
    curves     learning curves of the validation NLL and of the curve texts' overlap and specificity

and every section a registered method declares (:class:`~explainrec.methods.base.ReportSection`), looked up
through the registry by the experiment's name. With several seeds a cell is ``mean ± std`` over the seeds (sample
std, ddof=1); the best value of a column is bold.
"""
from __future__ import annotations

import json
from pathlib import Path

from explainrec.bench.config import PlannedRun
from explainrec.bench.state import ERROR_FILE, LOG_FILE, fmt_seconds, machine_info, run_state
from explainrec.io import atomic_write_text
from explainrec.metrics.report import METRICS
from explainrec.metrics.seed_tables import (
    FIGURES,
    RETRIEVAL,
    SPECIFICITY,
    RunResult,
    cell,
    datasets,
    groups,
    label,
    metric_values,
    missing_note,
    pyplot,
    save_figure,
    save_figure,
    read_json,
    seed_stats,
)

TABLE2 = ("bleu1", "bleu4", "rouge1", "rougeL", "distinct1", "distinct2", "bertscore_p", "bertscore_r",
          "bertscore_f1", *SPECIFICITY, "usr")
FIGURE_METRICS = ("bleu4", "rougeL", "bertscore_f1", "distinct2", "usr")  # one panel each in the bar charts
DECODING_METRICS = ("bleu4", "rougeL", "bertscore_f1", *SPECIFICITY, "distinct2", "usr")


def collect(planned: list[PlannedRun]) -> list[RunResult]:
    """Every planned run as found on disk (a stale folder's stages are another training's: left out)."""
    from explainrec.bench.runner import stage_uses
    from explainrec.methods.runs import read_summary

    results = []
    for p in planned:
        r = RunResult(p, run_state(p))
        if r.state == "done":
            r.done = read_json(p.run_dir / "done.json")
            r.train = read_summary(p.run_dir)
        if r.state != "stale":
            r.stages = {use.method: p.run_dir / use.folder for use in stage_uses(p.spec)}
        if r.state == "failed":
            lines = [x for x in (p.run_dir / ERROR_FILE).read_text(errors="replace").splitlines() if x.strip()]
            r.error = lines[-1] if lines else "(empty error.txt)"
        results.append(r)
    return results


def _metric_table(groups: list[tuple[str, list[RunResult]]], bucket: str | None = None) -> list[str]:
    """Rows = runs, columns = the Table-2 metrics any run has; best mean per column in bold."""
    names = [m for m in TABLE2 if any(metric_values(rs, m, bucket) for _, rs in groups)]
    if not names:
        return ["_No finished runs yet._", ""]
    best = {}
    for m in names:
        means = [seed_stats(v)[0] for _, rs in groups if (v := metric_values(rs, m, bucket))]
        if len(means) > 1 and METRICS[m][1] is not None and max(means) - min(means) > 1e-9:  # no bold on a tie
            best[m] = max(means) if METRICS[m][1] else min(means)
    lines = ["| Run | n | " + " | ".join(label(m) for m in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for run, rs in groups:
        done = [r for r in rs if r.done is not None]
        if not done:
            lines.append(f"| {run}{missing_note(rs)} | – | " + " | ".join("–" for _ in names) + " |")
            continue
        n = _n(done, bucket)
        cells = []
        for m in names:
            v = metric_values(rs, m, bucket)
            text = cell(m, v) if v else "–"
            if v and m in best and abs(seed_stats(v)[0] - best[m]) < 1e-12:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {run}{missing_note(rs)} | {n} | " + " | ".join(cells) + " |")
    notes = [_chance_note([r for _, rs in groups for r in rs]) if any(m in RETRIEVAL for m in names) else None,
             SENSITIVITY_NOTE if any(m in SPECIFICITY and m not in RETRIEVAL for m in names) else None]
    notes = [n for n in notes if n] if bucket is None else []
    return lines + [x for n in notes for x in ("", n)] + [""]


SENSITIVITY_NOTE = ("User-Δ and User→: user sensitivity (`explainrec sensitivity`): each sampled test item explained "
                    "again for another user; User-Δ is how much the text changes (100 x (1 - ROUGE-L F1)), User→ how "
                    "far it moves toward that user's profile (MiniLM cosine x100). A template scores 0 on both.")


def _chance_note(results: list[RunResult]) -> str | None:
    """The chance levels of pair retrieval, from the runs' metrics.json (they depend on the number of candidates)."""
    found = {}
    for r in results:
        if r.done is None:
            continue
        m = read_json(r.planned.run_dir / "metrics.json") or {}
        spec, chance = (m.get("config") or {}).get("specificity"), m.get("chance") or {}
        if isinstance(spec, dict) and all(k in chance for k in RETRIEVAL):
            found[spec.get("candidates")] = chance
    if not found:
        return None
    parts = [f"N = {n}: " + ", ".join(f"{METRICS[k][0]} {c[k]:.2f}" for k in RETRIEVAL)
             for n, c in sorted(found.items(), key=lambda x: (x[0] is None, x[0] or 0))]
    return ("Pair retrieval ranks each pair's own reference among the N distinct references of the pairs its run "
            "explained (MiniLM cosine to the prediction); chance levels (a random ranking): " + "; ".join(parts) + ".")


def _n(done: list[RunResult], bucket: str | None) -> str:
    ns = {((r.done.get("buckets") or {}).get(bucket) or {}).get("n") if bucket else r.done.get("n") for r in done}
    return "/".join(str(x) for x in sorted(x for x in ns if x is not None)) or "–"


# ---------------------------------------------------------------------------------------------------- figures


def bar_chart(groups: list[tuple[str, list[RunResult]]], path: Path, title: str, buckets: list[str] | None = None) -> Path | None:
    """One panel per metric of FIGURE_METRICS: a bar per run (grouped by bucket when given), seed std as error bars."""
    names = [m for m in FIGURE_METRICS if any(metric_values(rs, m) for _, rs in groups)]
    if not names:
        return None
    plt = pyplot()
    import numpy as np

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 0.8, 3.8), dpi=110, squeeze=False)
    cmap = plt.get_cmap("tab10")
    xs = buckets or [None]
    width = 0.8 / max(len(groups), 1)
    for ax, m in zip(axes[0], names):
        for j, (run, rs) in enumerate(groups):
            means, errs = [], []
            for b in xs:
                v = metric_values(rs, m, b)
                mean, std = seed_stats(v) if v else (np.nan, None)
                means.append(mean)
                errs.append(std or 0.0)
            pos = np.arange(len(xs)) + (j - (len(groups) - 1) / 2) * width
            ax.bar(pos, means, width, yerr=errs if any(errs) else None, capsize=3, color=cmap(j % 10), label=run)
        if buckets:
            ax.set_xticks(np.arange(len(xs)), xs)
        else:  # one group: name each bar
            ax.set_xticks([(j - (len(groups) - 1) / 2) * width for j in range(len(groups))],
                          [run for run, _ in groups], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_title(METRICS[m][0], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if buckets:
        axes[0][0].legend(fontsize=8, loc="best")
    return save_figure(fig, path, title)


def section_main(cfg, results, runs, out) -> list[str]:
    lines = ["## Main comparison (Table 2)", ""]
    for ds in datasets(cfg, results):
        lines += [f"### {ds}", ""] + _metric_table(groups(results, ds, runs))
    return lines


def _settings(run: dict) -> str:
    """A run's entry of the config in words: its method, then the options it sets (or that it sets none)."""
    options = run.get("options") or {}
    return f"{run['method']}" + (f", {json.dumps(options, sort_keys=True)}" if options else ", its defaults")


def section_ablation(cfg, results, runs, out) -> list[str]:
    lines = ["## Ablation (Figure 3)", "", "What each run sets (its method and options; the config's `defaults:` "
             "apply beneath):", ""]
    lines += [f"- `{name}`: {_settings(cfg['runs'][name])}" for name in runs if name in cfg["runs"]] + [""]
    for ds in datasets(cfg, results):
        found = groups(results, ds, runs)
        lines += [f"### {ds}", ""] + _metric_table(found)
        fig = bar_chart(found, out / FIGURES / f"ablation_{ds}.png", f"Ablation on {ds}")
        if fig:
            lines += [f"![ablation on {ds}]({FIGURES}/{fig.name})", ""]
    return lines


def section_sparsity(cfg, results, runs, out) -> list[str]:
    lines = ["## Sparsity (Figure 4)", "",
             "The explained pairs sorted by their user's number of train interactions and cut into three equal parts: "
             "ds1 = the most active users, ds3 = the sparsest. Corpus metrics are computed on each bucket's rows; pair "
             "retrieval keeps the whole split's references as its candidates in every bucket.", ""]
    for ds in datasets(cfg, results):
        found = groups(results, ds, runs)
        buckets = sorted({b for _, rs in found for r in rs if r.done for b in (r.done.get("buckets") or {})})
        lines += [f"### {ds}", ""]
        if not buckets:
            lines += ["_No finished run with buckets yet._", ""]
            continue
        for b in buckets:
            lines += [f"**{b}**", ""] + _metric_table(found, bucket=b)
        fig = bar_chart(found, out / FIGURES / f"sparsity_{ds}.png", f"Metrics per user-activity bucket on {ds}",
                        buckets=buckets)
        if fig:
            lines += [f"![sparsity on {ds}]({FIGURES}/{fig.name})", ""]
    return lines


def section_decoding(cfg, results, runs, out) -> list[str]:
    """Greedy against the decoding chosen on the valid split (``tune_decoding``), both scored once on the split."""
    keys = DECODING_METRICS
    lines = ["## Decoding chosen on the validation split", "",
             f"Each run's candidates (greedy, repetition penalty, n-gram blocking, beams, sampling) explained the first "
             f"{(cfg.get('tune_decoding') or {}).get('limit', 100)} validation pairs; the best by "
             f"{(cfg.get('tune_decoding') or {}).get('rule', 'rougeL+bertscore')} was then applied once to the "
             f"{cfg.get('split', 'test')} split. Cells: greedy → chosen.", ""]
    for ds in datasets(cfg, results):
        lines += [f"### {ds}", "", "| run | chosen | " + " | ".join(label(k) for k in keys) + " |",
                  "|---|---|" + "---:|" * len(keys)]
        for run, rs in groups(results, ds, runs):
            done = [r for r in rs if r.done and r.done.get("tuned")]
            if not done:
                lines.append(f"| {run}{missing_note(rs)} | – | " + " | ".join("–" for _ in keys) + " |")
                continue
            chosen = "; ".join(sorted({json.dumps(r.done["tuned"]["chosen"], sort_keys=True) for r in done}))
            cells = []
            for k in keys:
                g = metric_values(done, k)
                t = [r.done["tuned"]["metrics"][k] for r in done if k in r.done["tuned"]["metrics"]]
                cells.append(f"{cell(k, g)} → {cell(k, t)}" if g and t else "–")
            lines.append(f"| {run} | `{chosen}` | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _valid_curve(r: RunResult, metric: str = "valid_nll") -> list[tuple[int, float]]:
    """``(pairs seen, value)`` points of a run: the validation NLL of its training log, or a text metric of its
    curve texts (done.json's ``curve``: the valid pairs explained at each validation, see ``curve_pairs``)."""
    if r.state != "done":
        return []
    if metric != "valid_nll":
        return [(int(c["pairs"]), float(c[metric])) for c in (r.done or {}).get("curve") or []
                if c.get("pairs") is not None and c.get(metric) is not None]
    log = r.planned.run_dir / "train_log.jsonl"
    if not log.is_file():
        return []
    rows = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [(int(v["pairs"]), float(v["valid_nll"])) for v in rows
            if v.get("kind") == "valid" and "pairs" in v and "valid_nll" in v]


# what a learning curve shows: the validation NLL, then overlap and specificity of the curve texts
CURVE_PANELS = (("valid_nll", "validation NLL"), ("rougeL", "ROUGE-L (valid texts)"),
                ("ret_mrr", "Ret-MRR (valid texts)"), ("distinct2", "Distinct-2 (valid texts)"))


def section_curves(cfg, results, runs, out) -> list[str]:
    """Learning curves, mean over seeds (a band of +-1 std): validation NLL, and where runs wrote curve texts, their
    overlap and specificity (does the text turn into a template as ROUGE-L rises?)."""
    lines = ["## Learning curves", "",
             "Against the training pairs seen, mean over the seeds with a band of one standard deviation: the "
             "validation NLL of the explanations (the first `max_valid_pairs` valid pairs) and, for runs trained with "
             "`curve_pairs`, the greedy explanations of the first valid pairs written at each validation, scored like "
             "a test split (Ret-MRR ranks each text's reference among all references of the valid split).", ""]
    plt = None
    for ds in datasets(cfg, results):
        panels = []  # (metric, label, [(run, seeds, [(pairs, mean, std)])])
        for metric, label in CURVE_PANELS:
            curves = []
            for run, rs in groups(results, ds, runs):
                per_seed = [c for r in rs if (c := _valid_curve(r, metric))]
                if not per_seed:
                    continue
                common = sorted(set.intersection(*(set(p for p, _ in c) for c in per_seed)))
                curves.append((run, len(per_seed), [(p, *seed_stats([dict(c)[p] for c in per_seed])) for p in common]))
            if curves:
                panels.append((metric, label, curves))
        if not panels:
            continue
        plt = plt or pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=110, squeeze=False)
        for ax, (metric, label, curves) in zip(axes[0], panels):
            for run, n, points in curves:
                xs, means, stds = zip(*points)
                ax.plot(xs, means, marker="o", label=f"{run} ({n} seed{'s' if n > 1 else ''})")
                ax.fill_between(xs, [m - (s or 0.0) for m, s in zip(means, stds)],
                                [m + (s or 0.0) for m, s in zip(means, stds)], alpha=0.2)
            ax.set_xlabel("training pairs seen")
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        path = save_figure(fig, out / "figures" / f"curves-{ds}.png", f"{ds}: learning curves", fontsize=10)
        lines += [f"### {ds}", ""]
        for metric, label, curves in panels:
            columns = sorted({p for _, _, points in curves for p, _, _ in points})
            digits = 3 if metric == "valid_nll" else 2
            lines += [f"{label}:", "", "| run | seeds | " + " | ".join(f"{p:,} pairs" for p in columns) + " |",
                      "|---|---:|" + "---:|" * len(columns)]
            for run, n, points in curves:
                cells = {p: f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd else "") for p, m, sd in points}
                lines.append(f"| {run} | {n} | " + " | ".join(cells.get(p, "") for p in columns) + " |")
            lines.append("")
        lines += [f"![learning curves, {ds}](figures/{path.name})", ""]
    return lines


SECTIONS = {"main": section_main, "decoding": section_decoding, "ablation": section_ablation,
            "sparsity": section_sparsity, "curves": section_curves}  # the bench's own (bench.config.EXPERIMENTS)


def render_section(kind: str, cfg: dict, results: list[RunResult], runs: list[str], out: Path) -> list[str]:
    """An experiment's section: the bench's own, or the one a registered method declares under that name."""
    if kind in SECTIONS:
        return SECTIONS[kind](cfg, results, runs, out)
    from explainrec.methods import registry

    return registry.report_sections()[kind].render(cfg, results, runs, out)


def section_costs(results: list[RunResult]) -> list[str]:
    lines = ["## Cost per run", "",
             "Train steps and time: the method's own optimizer steps and training clock, its stages excluded (a stage "
             "that trains epoch by epoch counts epochs). Valid NLL: the explanation NLL on the validation pairs at "
             "the last validation. Wall: the last call that finished the run (train / explain / evaluate), including "
             "model loading.", "",
             "| Run | state | train steps | train time | valid NLL | explained | new tokens | tokens/s | explanations/s | wall (train / explain / evaluate) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        p, d = r.planned, r.done or {}
        gen = d.get("generation") or {}
        wall = d.get("seconds_this_call") or {}

        def num(x, f="{:.1f}"):
            return "–" if x is None else f.format(x)

        steps = num(d.get("train_steps"), "{}") if d.get("train_steps") is not None or d.get("train_epochs") is None \
            else f"{d['train_epochs']} epochs"
        last_valid = (r.train.metrics.get("last_valid") if r.train is not None else None) or {}
        lines.append(
            f"| {p.dataset}/{p.run}/seed{p.seed} | {r.state} | {steps} | "
            f"{num(d.get('train_seconds'), '{:.0f} s')} | {num(last_valid.get('valid_nll'), '{:.3f}')} | "
            f"{num(gen.get('explanations'), '{}')} | "
            f"{num(gen.get('new_tokens'), '{}')} | {num(gen.get('tokens_per_s'))} | {num(gen.get('explanations_per_s'), '{:.2f}')} | "
            + (" / ".join(f"{wall.get(k, 0):.0f}" for k in ("train", "explain", "evaluate")) + " s" if wall else "–") + " |")
    return lines + [""]


def _read_log(out: Path) -> list[dict]:
    path = out / LOG_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def section_setup(cfg: dict, results: list[RunResult], out: Path) -> list[str]:
    log = _read_log(out)
    last = log[-1] if log else None
    machine = (last or {}).get("machine") or machine_info()
    lines = ["## How this was run", ""]
    if last:
        lines += ["```bash", last["command"], "```", "",
                  f"- Started {last['started']} (UTC); wall time of that invocation: **{fmt_seconds(last['seconds'])}**"
                  + (" (interrupted)" if last.get("interrupted") else "")
                  + f"; it ran {last.get('done', 0)} run(s), skipped {last.get('skipped', 0)} finished before, "
                  f"{last.get('failed', 0)} failed."]
        if len(log) > 1:
            total = sum(x.get("seconds", 0) for x in log)
            lines.append(f"- All {len(log)} invocations recorded in `{out / 'bench_log.jsonl'}`: {fmt_seconds(total)} in total.")
    else:
        lines.append("- No bench invocation recorded yet (report built from the run folders alone).")
    cpu = machine.get("cpu", "unknown CPU")
    usable = machine.get("cpus_usable", machine.get("cpu_count"))
    lines += [
        f"- Machine: {cpu}, {machine.get('cpu_count')} CPUs ({usable} usable), "
        f"GPU: {machine.get('gpu') or 'none'}; {machine.get('platform')}; Python {machine.get('python')}, "
        f"torch {machine.get('torch')} ({machine.get('torch_threads')} threads, OMP_NUM_THREADS={machine.get('omp_num_threads')}); "
        f"load average at start {machine.get('load_average_at_start')}.",
        f"- Code: git {machine.get('git') or 'unknown'}.",
        f"- Config: `{cfg['_path']}` (below); run folders under `{out}`.",
    ]
    counts = {s: sum(r.state == s for r in results) for s in ("done", "failed", "partial", "todo", "stale")}
    lines.append("- Runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(results)}.")
    bs = _bertscore_note(results)
    if bs:
        lines.append(f"- BERTScore: {bs}")
    return lines + [""]


def _bertscore_note(results: list[RunResult]) -> str | None:
    for r in results:
        if r.done is None:
            continue
        m = read_json(r.planned.run_dir / "metrics.json") or {}
        bs = (m.get("config") or {}).get("bertscore")
        if isinstance(bs, dict):
            note = f"{bs.get('encoder')}, layer {bs.get('num_layers')}, rescale_with_baseline={bs.get('rescale_with_baseline')}"
            return note + (f" -- {bs['note']}" if bs.get("note") else "")
    return None


def section_failures(results: list[RunResult]) -> list[str]:
    failed = [r for r in results if r.state == "failed"]
    if not failed:
        return []
    lines = ["## Failed runs", ""]
    for r in failed:
        lines.append(f"- `{r.planned.dataset}/{r.planned.run}/seed{r.planned.seed}`: {r.error} "
                     f"(traceback: `{r.planned.run_dir / 'error.txt'}`)")
    return lines + [""]


def write_report(cfg: dict, planned: list[PlannedRun], out: str | Path) -> Path:
    """Write ``out/report.md`` (and figures under ``out/figures``) from whatever the run folders hold."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = collect(planned)
    lines = [f"# Bench report: {cfg.get('name', 'bench')}", ""]
    if cfg.get("description"):
        lines += [str(cfg["description"]).strip(), ""]
    lines += section_setup(cfg, results, out)
    lines += section_failures(results)
    experiments = cfg.get("experiments") or {"main": list(cfg["runs"])}
    for kind, runs in experiments.items():
        lines += render_section(kind, cfg, results, runs, out)
    lines += section_costs(results)
    lines += ["## Config", "", f"`{cfg['_path']}`:", "", "```" + ("toml" if cfg["_path"].endswith(".toml") else "yaml"),
              Path(cfg["_path"]).read_text(encoding="utf-8").rstrip(), "```", ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report
