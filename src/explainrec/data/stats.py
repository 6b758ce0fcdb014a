"""Summary numbers of a dataset, for ``explainrec data stats`` and for reports."""
from __future__ import annotations

from collections import Counter

from explainrec.data.schema import SPLITS, Dataset


def dataset_stats(ds: Dataset) -> dict:
    """Users, items, interactions and explained pairs (total and per split), density, feedback kind."""
    inter = ds.interactions
    n_inter = len(inter)
    split_counts = Counter(inter.split.tolist())
    example_counts = Counter(e.split for e in ds.examples)
    cells = ds.n_users * ds.n_items
    out = {
        "name": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": n_inter,
        "interactions_per_split": {s: int(split_counts.get(s, 0)) for s in SPLITS},
        "explained_pairs": len(ds.examples),
        "explained_pairs_per_split": {s: int(example_counts.get(s, 0)) for s in SPLITS},
        "density": n_inter / cells if cells else 0.0,
        "feedback": "implicit" if ds.implicit else "explicit",
    }
    if not ds.implicit and n_inter:
        out["rating_min"] = float(inter.rating.min())
        out["rating_max"] = float(inter.rating.max())
    if ds.user_types is not None:
        out["user_types"] = int(len(set(ds.user_types.tolist())))
    return out


def format_stats(stats: dict) -> str:
    """A small two-column table of :func:`dataset_stats`; per-split counts as ``train / valid / test``."""
    def per_split(d: dict) -> str:
        return " / ".join(f"{d.get(s, 0):,}" for s in SPLITS)

    rows = [
        ("dataset", str(stats.get("name", ""))),
        ("users", f"{stats['users']:,}"),
        ("items", f"{stats['items']:,}"),
        ("interactions", f"{stats['interactions']:,}"),
        ("  train / valid / test", per_split(stats["interactions_per_split"])),
        ("explained pairs", f"{stats['explained_pairs']:,}"),
        ("  train / valid / test", per_split(stats["explained_pairs_per_split"])),
        ("density", f"{stats['density']:.3g}"),
        ("feedback", stats["feedback"]),
    ]
    if "rating_min" in stats:
        rows.append(("rating range", f"{stats['rating_min']:g} .. {stats['rating_max']:g}"))
    if "user_types" in stats:
        rows.append(("latent user types", str(stats["user_types"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
