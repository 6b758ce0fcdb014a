"""Atomic, pickle-free training checkpoints that any recipe can reuse.

A checkpoint is a folder, written through :func:`explainrec.io.atomic_dir` so that it appears whole or not at all::

    model.safetensors        model.state_dict()
    optimizer.safetensors    every tensor of optimizer.state_dict(), flattened as ``state.<param>.<name>``
    optimizer.json           the rest of optimizer.state_dict() (param_groups, non-tensor state)
    rng.safetensors          torch RNG states (global CPU/CUDA and any named torch.Generator)
    rng.json                 numpy's and python's global RNG states
    extra.safetensors        recipe-specific tensors (e.g. the best weights so far)
    state.json               recipe counters: epoch, step, best loss, history ...
    config.json              the run's configuration, compared on resume
    COMPLETE                 completion marker listing the files above with their SHA-256

Nothing is unpickled on load (``torch.load`` is never called), so a checkpoint from an untrusted source
can only fail, not execute code. Every failure raises :class:`CheckpointError` naming the file at fault; the
checksums in ``COMPLETE`` catch files whose bytes changed after the save (a resume would otherwise continue
from garbage, e.g. NaN weights).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from explainrec.data.schema import DataError
from explainrec.io import atomic_dir, recover_dir, sha256_file
from explainrec.training.loop_utils import rng_restore, rng_snapshot

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
RNG_META = "rng.json"
EXTRA_FILE = "extra.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
MARKER_FILE = "COMPLETE"


class CheckpointError(DataError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model/optimizer/config it is loaded into."""


# ---------------------------------------------------------------------------------------------------- save


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: Mapping[str, Any],
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    config: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically (an existing one is replaced only once the new one is whole).

    Args:
        model: its ``state_dict()`` goes to ``model.safetensors``.
        optimizer: optional; its state is split into tensors (safetensors) and structure (JSON).
        state: JSON-serialisable recipe counters (epoch, step, best loss, history ...).
        extra_tensors: optional named tensors (e.g. best weights) stored in ``extra.safetensors``.
        config: optional JSON-serialisable run configuration; :func:`load_checkpoint` can compare it.
        generators: named ``torch.Generator`` objects (data shuffling, negative sampling) whose states are saved
            next to the global torch/numpy/python RNG states.
    """
    path = Path(path)
    files = [MODEL_FILE, RNG_TENSORS, RNG_META, STATE_FILE]
    with atomic_dir(path) as tmp:
        save_file(_cpu_tensors(model.state_dict()), str(tmp / MODEL_FILE))
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_TENSORS))
            _write_json(tmp / OPTIMIZER_META, meta)
            files += [OPTIMIZER_TENSORS, OPTIMIZER_META]
        rng_tensors, rng_meta = rng_snapshot()
        for name, gen in (generators or {}).items():
            rng_tensors[f"generator.{name}"] = gen.get_state()
        save_file(_cpu_tensors(rng_tensors), str(tmp / RNG_TENSORS))
        _write_json(tmp / RNG_META, rng_meta)
        if extra_tensors:
            save_file(_cpu_tensors(extra_tensors), str(tmp / EXTRA_FILE))
            files.append(EXTRA_FILE)
        _write_json(tmp / STATE_FILE, dict(state))
        if config is not None:
            _write_json(tmp / CONFIG_FILE, dict(config))
            files.append(CONFIG_FILE)
        # The marker goes last: a folder without it was never finished.
        _write_json(tmp / MARKER_FILE, {"format": FORMAT_VERSION, "files": files,
                                        "sha256": {name: sha256_file(tmp / name) for name in files}})
    from explainrec import interrupt

    label = next((f"{k} {state[k]}" for k in ("step", "epoch") if k in state), "saved")
    interrupt.checkpoint_written(path, label)  # a stop from now on loses nothing: it may end the command at once
    return path


# ---------------------------------------------------------------------------------------------------- load


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    expected_config: Mapping[str, Any] | None = None,
    ignore_config_keys: Iterable[str] = (),
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``); return its state.

    Args:
        expected_config: when given, the saved ``config.json`` must match it (nested keys compared as dotted
            paths, ``ignore_config_keys`` skipped), so that a resume never silently continues another run.
        generators: ``torch.Generator`` objects whose saved states (same names as when saving) are restored.
        restore_rng: also restore the global torch/numpy/python RNG states (what makes a resume bit-identical).

    Raises:
        CheckpointError: naming the file when the folder is missing or incomplete, a file is corrupt, tensor
            names/shapes do not fit ``model``/``optimizer``, or the config differs from ``expected_config``.
    """
    path = Path(path)
    files = _check_complete(path)
    if expected_config is not None:
        check_config(path, expected_config, ignore_keys=ignore_config_keys)

    model_file = path / MODEL_FILE
    _load_model_state(model, _read_tensors(model_file), model_file)

    if optimizer is not None:
        if OPTIMIZER_TENSORS not in files:
            raise CheckpointError(f"{path / OPTIMIZER_TENSORS}: checkpoint holds no optimizer state")
        _load_optimizer(optimizer, path)

    rng_file = path / RNG_TENSORS
    rng_tensors = _read_tensors(rng_file)
    for name, gen in (generators or {}).items():
        key = f"generator.{name}"
        if key not in rng_tensors:
            raise CheckpointError(f"{rng_file}: no state for generator {name!r}")
        gen.set_state(rng_tensors[key])
    if restore_rng:
        rng_restore(rng_tensors, _read_json(path / RNG_META))
    return _read_json(path / STATE_FILE)


def load_extra_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``extra_tensors`` saved with a checkpoint (empty when none were)."""
    path = Path(path)
    files = _check_complete(path)
    return _read_tensors(path / EXTRA_FILE) if EXTRA_FILE in files else {}


def read_checkpoint_config(path: str | Path) -> dict:
    """The saved ``config.json`` (empty when none was saved)."""
    path = Path(path)
    files = _check_complete(path)
    return _read_json(path / CONFIG_FILE) if CONFIG_FILE in files else {}


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a checkpoint folder with its completion marker."""
    return (recover_dir(path) / MARKER_FILE).is_file()


def checkpoint_exists(path: str | Path) -> bool:
    """True when anything stands at ``path`` (complete or not): a resume must load it or say why it cannot,
    never silently start again and overwrite it."""
    return recover_dir(path).exists()


def check_config(path: str | Path, expected: Mapping[str, Any], *, ignore_keys: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointError` listing every key where the saved config differs from ``expected``."""
    cfg_file = Path(path) / CONFIG_FILE
    saved = _flatten_dict(_read_json(cfg_file)) if cfg_file.is_file() else {}
    want = _flatten_dict(json.loads(json.dumps(dict(expected))))  # normalise tuples -> lists like the saved side
    ignore = set(ignore_keys)
    # a key the saved config lacks is a setting added since the checkpoint was written: it takes its current value
    keys = sorted(k for k in saved if not any(k == i or k.startswith(i + ".") for i in ignore))
    diffs = [f"{k}: saved {saved.get(k, '<missing>')!r} != expected {want.get(k, '<missing>')!r}"
             for k in keys if saved.get(k, "<missing>") != want.get(k, "<missing>")]
    if diffs:
        raise CheckpointError(f"{cfg_file}: config mismatch ({'; '.join(diffs)})")


# ---------------------------------------------------------------------------------------------------- helpers


def _check_complete(path: Path) -> list[str]:
    recover_dir(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no checkpoint folder")
    marker = path / MARKER_FILE
    if not marker.is_file():
        raise CheckpointError(f"{marker}: missing completion marker: the checkpoint is incomplete or not a "
                              f"checkpoint; it was left as it is -- move it away to start the run again")
    meta = _read_json(marker)
    if meta.get("format") != FORMAT_VERSION or not isinstance(meta.get("files"), list):
        raise CheckpointError(f"{marker}: unsupported checkpoint format {meta.get('format')!r}")
    for name in meta["files"]:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: file listed in {MARKER_FILE} is missing")
    for name, digest in (meta.get("sha256") or {}).items():
        if sha256_file(path / name) != digest:
            raise CheckpointError(f"{path / name}: contents changed since the checkpoint was written (checksum "
                                  "mismatch); the checkpoint is damaged -- restore it or start the run again")
    return meta["files"]



def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors ({e})") from e


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read JSON ({e})") from e


def _write_json(file: Path, obj: Any) -> None:
    file.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights, views of one buffer).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _load_model_state(model: torch.nn.Module, saved: dict[str, torch.Tensor], file: Path) -> None:
    current = model.state_dict()
    problems = []
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for k in sorted(set(saved) & set(current)):
        if saved[k].shape != current[k].shape:
            problems.append(f"{k}: saved shape {tuple(saved[k].shape)} != model shape {tuple(current[k].shape)}")
    if problems:
        raise CheckpointError(f"{file}: does not fit {type(model).__name__} ({'; '.join(problems)})")
    model.load_state_dict(saved, strict=True)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                state_meta.setdefault(str(pid), {})[name] = _to_json(value)
    groups = []
    for gi, group in enumerate(sd["param_groups"]):
        g = {}
        for name, value in group.items():
            if isinstance(value, torch.Tensor):  # e.g. a tensor lr
                tensors[f"param_groups.{gi}.{name}"] = value
                g[name] = {"__tensor__": True}
            else:
                g[name] = _to_json(value)
        groups.append(g)
    meta = {"class": type(optimizer).__name__, "state": state_meta, "param_groups": groups,
            "tensor_params": sorted({str(pid) for pid in sd["state"]})}
    return _cpu_tensors(tensors), meta


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    tfile, mfile = path / OPTIMIZER_TENSORS, path / OPTIMIZER_META
    tensors, meta = _read_tensors(tfile), _read_json(mfile)
    if meta.get("class") != type(optimizer).__name__:
        raise CheckpointError(f"{mfile}: saved optimizer {meta.get('class')!r} != {type(optimizer).__name__}")
    groups = [{k: (tensors[f"param_groups.{gi}.{k}"] if isinstance(v, dict) and v.get("__tensor__") else _from_json(v))
               for k, v in g.items()} for gi, g in enumerate(meta["param_groups"])]
    current = optimizer.param_groups
    if len(groups) != len(current) or any(len(g["params"]) != len(c["params"]) for g, c in zip(groups, current)):
        raise CheckpointError(
            f"{mfile}: saved parameter groups {[len(g['params']) for g in groups]} "
            f"!= optimizer's {[len(c['params']) for c in current]}")
    params = {pid: p for g, c in zip(groups, current) for pid, p in zip(g["params"], c["params"])}
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["state"].items():
        state.setdefault(int(pid), {}).update({k: _from_json(v) for k, v in entries.items()})
    for pid, entries in state.items():
        if pid not in params:
            raise CheckpointError(f"{tfile}: state for unknown parameter {pid}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[pid].shape:
                raise CheckpointError(f"{tfile}: state.{pid}.{name} has shape {tuple(value.shape)} "
                                      f"but the parameter has {tuple(params[pid].shape)}")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"optimizer state value of type {type(value).__name__} cannot be stored without pickle")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_dict(v, key + "."))
        else:
            out[key] = v
    return out
