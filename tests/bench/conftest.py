"""Bench test fixtures: a copy of configs/mini.yaml pointed at a temporary folder, one torch thread."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "configs" / "mini.yaml"


@pytest.fixture(scope="session")
def write_config():
    """``write_config(path, out, runs=None, **top_level_changes) -> path``."""
    return _write_config


def _write_config(path: Path, out: Path, runs: list[str] | None = None, **changes) -> Path:
    """configs/mini.yaml with ``out`` replaced, optionally only some of its runs, and top-level keys changed."""
    cfg = yaml.safe_load(MINI.read_text())
    cfg["out"] = str(out)
    if runs is not None:
        cfg["runs"] = {name: cfg["runs"][name] for name in runs}
        experiments = {kind: [r for r in names if r in runs] for kind, names in cfg["experiments"].items()}
        cfg["experiments"] = {kind: names for kind, names in experiments.items() if names}
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
