"""Small helpers every training recipe needs: seeding, RNG snapshots, device choice, a progress bar.

Functions, not a base Trainer: a recipe writes its own loop and calls these where it needs them.
"""
from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and, if present, CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; anything else is taken as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def rng_snapshot() -> tuple[dict[str, torch.Tensor], dict]:
    """The global RNG states as (tensors, JSON-able dict), so a checkpoint can hold them without pickle.

    Tensors: torch CPU state (and one per CUDA device). JSON: numpy's legacy global state and python ``random``.
    """
    tensors = {"torch.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch.cuda.{i}"] = state
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    meta = {
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    return tensors, meta


def rng_restore(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`rng_snapshot`."""
    torch.set_rng_state(tensors["torch.cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def progress(iterable: Iterable[T], *, enabled: bool = True, desc: str | None = None, total: int | None = None) -> Iterator[T]:
    """A tqdm bar when ``enabled``, else the iterable itself.

    Off a terminal (a log file, CI) the bar redraws at most once a minute, so logs show progress without growing
    by a line per step.
    """
    if not enabled:
        return iter(iterable)
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=not interactive, dynamic_ncols=interactive,
                mininterval=0.1 if interactive else 60.0)
