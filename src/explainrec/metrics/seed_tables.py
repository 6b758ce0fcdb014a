"""Tables and figures over runs and their seeds: what the bench report's sections are built from.

The generic sections (``explainrec.bench.report``) and the sections a method declares for itself
(:class:`explainrec.methods.base.ReportSection`, e.g. GaVaMoE's gates and latent space) read the same
:class:`RunResult` records and format their cells with the same helpers, so a method's section looks like the rest
of the report without importing the bench. A cell over several seeds is ``mean ± std`` (sample std, ddof=1).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explainrec.metrics.report import METRICS

FRACTIONS = {"usr", "fmr", "fcr"}  # shown with 4 decimals, as in explainrec.metrics
# pair retrieval (metrics.specificity) and user sensitivity (methods.sensitivity): read beside the overlap metrics
RETRIEVAL = ("ret_r1", "ret_mrr")
SPECIFICITY = (*RETRIEVAL, "user_change", "user_toward")
FIGURES = "figures"  # the report's figures go to OUT/figures/


@dataclass
class RunResult:
    """One planned run of a bench as found on disk.

    ``planned`` is the bench's plan of it (``dataset``, ``run``, ``seed``, ``spec``, ``run_dir``); ``stages`` maps the
    registry name of each stage the run trained (or, for a stage-only run, its own method) to that stage's folder.
    """

    planned: Any
    state: str  # done | failed | partial | todo | stale
    done: dict | None = None  # RUN/done.json
    train: Any = None  # RUN/train_summary.json as a TrainSummary (trained methods)
    error: str | None = None  # last line of RUN/error.txt
    stages: dict[str, Path] = field(default_factory=dict)

    def stage_metrics(self, method: str) -> dict | None:
        """``metrics.json`` of the run's stage trained by registry entry ``method`` (None: no such stage yet)."""
        folder = self.stages.get(method)
        return read_json(folder / "metrics.json") if folder is not None else None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def seed_stats(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (None for one value) of the finite values."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def fmt(name: str, value: float) -> str:
    return f"{value:.4f}" if name in FRACTIONS else f"{value:.2f}"


def cell(name: str, values: list[float]) -> str:
    """``mean`` or ``mean ± std`` of one metric over seeds, in that metric's precision."""
    mean, std = seed_stats(values)
    return fmt(name, mean) + ("" if std is None else f" ± {fmt(name, std)}")


def label(name: str) -> str:
    """A metric's column label with its direction (↑ higher is better, ↓ lower)."""
    text, higher, _ = METRICS.get(name, (name, None, ""))
    return text + ("↑" if higher else "↓" if higher is False else "")


def metric_values(results: list[RunResult], name: str, bucket: str | None = None) -> list[float]:
    """The finite values of one text metric over the finished runs (of one sparsity bucket when given)."""
    out = []
    for r in results:
        if r.done is None:
            continue
        block = r.done if bucket is None else (r.done.get("buckets") or {}).get(bucket) or {}
        value = (block.get("metrics") or {}).get(name)
        if value is not None and math.isfinite(value):
            out.append(value)
    return out


def missing_note(results: list[RunResult]) -> str:
    """'' when every seed finished, else why a cell is short (e.g. ' (seed1 failed)')."""
    notes = [f"seed{r.planned.seed} {r.state}" for r in results if r.done is None]
    return f" ({', '.join(notes)})" if notes else ""


def datasets(cfg: dict, results: list[RunResult]) -> list[str]:
    """The config's datasets that have a run in this report (a report on some runs leaves the others out)."""
    return [ds for ds in cfg["datasets"] if any(r.planned.dataset == ds for r in results)]


def groups(results: list[RunResult], dataset: str, runs: list[str]) -> list[tuple[str, list[RunResult]]]:
    """Each run's results (its seeds) on one dataset; a run the config does not plan on that dataset has no row."""
    found = [(run, [r for r in results if r.planned.dataset == dataset and r.planned.run == run]) for run in runs]
    return [(run, rs) for run, rs in found if rs]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (figures are written, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, title: str, *, fontsize: int = 11) -> Path:
    """Title, lay out and write ``fig`` to ``path`` (PNG, written atomically), then free it."""
    import io as _io

    from explainrec.io import atomic_write_bytes

    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
