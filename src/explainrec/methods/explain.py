"""Explaining a dataset split with any loaded explainer, and the one prediction-row format every method writes.

A row is ``{user, item, prediction, reference, features, bucket, method, cold_start, ...}`` plus what the method
knows about the pair (GaVaMoE: cluster and top experts); :mod:`explainrec.metrics` reads exactly these files.
"""
from __future__ import annotations

from pathlib import Path

from explainrec.config import ConfigError
from explainrec.data.schema import SPLITS, DataError, Dataset

SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}


def normalise_split(split: str) -> str:
    """``validation``/``val`` -> ``valid``; a clear error for anything else."""
    value = SPLIT_ALIASES.get(str(split).strip().lower())
    if value is None:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} (or validation/val)")
    return value


def explain_split(explainer, dataset: Dataset, split: str = "test", *, limit: int | None = None,
                  out: str | Path | None = None, generation=None, progress: bool = True):
    """Explain the first ``limit`` (default: all) pairs of ``split``; write JSONL to ``out`` when given.

    Returns ``(rows, stats)`` (:class:`~explainrec.llm.generate.GenerationStats`).
    """
    from explainrec.data.splits import sparsity_buckets
    from explainrec.io import atomic_write_jsonl
    from explainrec.llm.generate import GenerationStats

    split = normalise_split(split)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    examples = dataset.split_examples(split)[:limit]
    if not examples:
        raise DataError(f"dataset {dataset.name!r} has no explained pairs in split {split!r}")
    stats = GenerationStats()
    rows = explainer.explain([dataset.pair_of(e) for e in examples], generation, stats=stats, progress=progress)
    for row, ex, bucket in zip(rows, examples, sparsity_buckets(dataset, examples)):
        row.update(reference=ex.explanation, features=list(ex.features), bucket=bucket, method=explainer.method)
    if out is not None:
        atomic_write_jsonl(out, [prediction_row(r) for r in rows])
    return rows, stats


ROW_ORDER = ("user", "item", "prediction", "reference", "features", "bucket", "method", "cold_start")


def prediction_row(row: dict) -> dict:
    """The row with the shared fields first (stable, readable JSONL), method-specific fields after."""
    return {**{k: row[k] for k in ROW_ORDER if k in row}, **{k: v for k, v in row.items() if k not in ROW_ORDER}}
