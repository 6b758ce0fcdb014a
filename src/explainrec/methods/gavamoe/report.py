"""GaVaMoE's sections of a bench report, declared on its registry entry (:attr:`GaVaMoE.report_sections`):

    gates    Table 3: per number of clusters K, the cluster sizes, stage 1's test AUC and the text metrics
    latent   Figure 5: each run's stage-1 latent plot (its VAE-GMM stage's latent.png), copied into figures/

A run's clustering is its ``vae-gmm`` stage (a GaVaMoE run's ``stage1/``, a vae-gmm run's own ``stage/``), found
by the stage's registry name.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from explainrec.methods.gavamoe.stage1_method import VaeGmmStage
from explainrec.metrics.report import METRICS
from explainrec.metrics.seed_tables import (
    FIGURES,
    SPECIFICITY,
    cell,
    datasets,
    groups,
    label,
    metric_values,
    missing_note,
    pyplot,
    save_figure,
    seed_stats,
)

GATES_METRICS = ("bleu4", "rougeL", "bertscore_f1", *SPECIFICITY, "usr")
STAGE = VaeGmmStage.name


def _clusters(r) -> int | None:
    """K of a run: its clustering stage's, else its settings' (a run whose stage is not trained yet)."""
    stage = r.stage_metrics(STAGE) or {}
    if "n_clusters" in stage:
        return int(stage["n_clusters"])
    return getattr(r.planned.spec.config(), "clusters", None)


def gates_chart(rows: list[tuple[int, list]], path: Path, title: str) -> Path | None:
    """Stage 1's test AUC and the text metrics against the number of clusters K (panels with two K or more)."""
    def series(name):
        points = []
        for k, rs in rows:
            if name == "test_auc":
                v = [s["test_auc"] for r in rs if (s := r.stage_metrics(STAGE)) and s.get("test_auc") is not None]
            else:
                v = metric_values(rs, name)
            if v:
                points.append((k, *seed_stats(v)))
        return points

    panels = [(m, pts) for m in ("test_auc", *GATES_METRICS) if len(pts := series(m)) >= 2]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 0.6, 3.2), dpi=110, squeeze=False)
    for ax, (m, pts) in zip(axes[0], panels):
        ks, means, errs = zip(*pts)
        errs = [e or 0.0 for e in errs]
        ax.errorbar(ks, means, yerr=errs if any(errs) else None, marker="o", capsize=3)
        ax.set_xticks(ks)
        ax.set_xlabel("clusters K")
        ax.set_title("stage-1 test AUC" if m == "test_auc" else METRICS[m][0], fontsize=10)
        ax.grid(alpha=0.3)
    return save_figure(fig, path, title)


def section_gates(cfg, results, runs, out) -> list[str]:
    lines = ["## Number of gates K (Table 3)", "",
             "Cluster sizes count all interactions (train, valid, test) per cluster, then the pairs that have a "
             "reference explanation (all splits). AUC: stage 1's test positives against one sampled item per user.", ""]
    for ds in datasets(cfg, results):
        found = groups(results, ds, runs)
        names = [m for m in GATES_METRICS if any(metric_values(rs, m) for _, rs in found)]
        lines += [f"### {ds}", "",
                  "| Run | K | cluster sizes | pairs with an explanation per cluster | test AUC | "
                  + "".join(f"{label(m)} | " for m in names),
                  "|---|---:|---|---|---:|" + "---:|" * len(names)]
        rows_for_chart = []
        for run, rs in found:
            ks = {k for r in rs if (k := _clusters(r)) is not None}
            k = next(iter(ks)) if len(ks) == 1 else None
            stages = [(r, s) for r in rs if (s := r.stage_metrics(STAGE))]
            multi = len(stages) > 1

            def per_seed(key, stages=stages, multi=multi):
                parts = [(f"s{r.planned.seed}: " if multi else "") + "/".join(str(x) for x in s.get(key, []))
                         for r, s in stages if s.get(key)]
                return "<br>".join(parts) or "–"

            aucs = [s["test_auc"] for _, s in stages if s.get("test_auc") is not None]
            auc = cell("usr", aucs) if aucs else "–"
            cells = [cell(m, v) if (v := metric_values(rs, m)) else "–" for m in names]
            lines.append(f"| {run}{missing_note(rs)} | {k if k is not None else '–'} | {per_seed('cluster_sizes')} | "
                         f"{per_seed('cluster_sizes_examples')} | {auc} | " + "".join(f"{c} | " for c in cells))
            if k is not None:
                rows_for_chart.append((k, rs))
        lines.append("")
        fig = gates_chart(sorted(rows_for_chart, key=lambda x: x[0]), out / FIGURES / f"gates_{ds}.png",
                          f"Metrics per number of clusters on {ds}")
        if fig:
            lines += [f"![metrics per K on {ds}]({FIGURES}/{fig.name})", ""]
    return lines


def section_latent(cfg, results, runs, out) -> list[str]:
    lines = ["## Latent space (Figure 5)", "",
             "Stage 1's latent means q(z|x) of training pairs, coloured by cluster (each run's `latent.png` from its "
             "clustering stage).", ""]
    for ds in datasets(cfg, results):
        lines += [f"### {ds}", ""]
        cells = []
        for run, rs in groups(results, ds, runs):
            for r in rs:
                folder = r.stages.get(STAGE)
                src = folder / "latent.png" if folder is not None else None
                name = f"{run} seed{r.planned.seed}"
                if r.state == "stale" or src is None or not src.exists():
                    cells.append((name, None, f"no latent plot yet ({r.state})"))
                    continue
                dst = out / FIGURES / f"latent_{ds}_{run}_seed{r.planned.seed}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                s1 = r.stage_metrics(STAGE) or {}
                caption = f"K={s1.get('n_clusters', _clusters(r))}"
                if s1.get("cluster_sizes"):
                    caption += ", sizes " + "/".join(map(str, s1["cluster_sizes"]))
                nmi = (s1.get("agreement_with_user_types") or {}).get("nmi")
                if nmi is not None:
                    caption += f", NMI vs. true user types {nmi:.2f}"
                cells.append((name, dst, caption))
        for name, dst, caption in cells:
            if dst is None:
                lines += [f"- {name}: {caption}"]
            else:
                lines += [f"**{name}** ({caption})", "", f"![latent space, {name}]({FIGURES}/{dst.name})", ""]
        lines.append("")
    return lines
