"""One model-folder format for every trained method and stage, and one :func:`load_run` that opens any of them.

    explainrec.json     the manifest: method, format version, the config it was trained with, the data it was
                        trained on (name, fingerprint of its id maps), method-specific shapes ("arch"), file hashes
    model.safetensors   the weights (what the method keeps; tied weights once)
    id_maps.json        raw user/item ids -> rows, so raw ids map to the rows they were trained with
    ...                 method-specific files (tokenizer files, clusters.csv)

A folder is written through :func:`explainrec.io.atomic_dir` (it appears whole or not at all) with the manifest
written last. A run folder holds its model in ``model/`` (stages keep theirs in ``RUN/<stage>/model``).
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from explainrec.data.schema import DataError, IdMap, load_id_maps
from explainrec.io import sha256_file

MANIFEST = "explainrec.json"
FORMAT_VERSION = 1
ID_MAPS = "id_maps.json"
# What the first releases wrote instead of a manifest, and how to get a folder this version reads.
_LEGACY = {
    "gavamoe.json": "explainrec train gavamoe",
    "xrec.json": "explainrec train xrec",
    "lightgcn.json": "explainrec train lightgcn",
}


class ModelFolderError(DataError):
    """A path is not a model/run folder, was written by another version, or its files are damaged."""


def data_fingerprint(users: IdMap, items: IdMap) -> str:
    """A short hash of the id maps: two datasets with the same raw ids in the same order get the same one."""
    h = hashlib.sha256()
    for ids in (users.raw, items.raw):
        h.update(json.dumps(ids).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def data_record(dataset) -> dict:
    return {"name": dataset.name, "fingerprint": data_fingerprint(dataset.users, dataset.items),
            "n_users": dataset.n_users, "n_items": dataset.n_items}


@contextmanager
def write_model_folder(path: str | Path, *, method: str, config, dataset=None, arch: dict | None = None,
                       extra: dict | None = None) -> Iterator[Path]:
    """Yield a temporary folder to fill; on exit add id maps + manifest and move it into place atomically."""
    from explainrec import __version__
    from explainrec.io import atomic_dir, atomic_write_json

    with atomic_dir(path) as tmp:
        yield tmp
        if dataset is not None:
            atomic_write_json(tmp / ID_MAPS, {"users": dataset.users.raw, "items": dataset.items.raw})
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.suffix == ".safetensors"}
        manifest = {
            "method": method,
            "format": FORMAT_VERSION,
            "explainrec_version": __version__,
            "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
            "data": data_record(dataset) if dataset is not None else None,
            "arch": arch or {},
            "sha256": files,
            **(extra or {}),
        }
        atomic_write_json(tmp / MANIFEST, manifest)


def find_model_folder(path: str | Path) -> Path:
    """``path`` itself when it holds a manifest, else ``path/model``; a clear error otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelFolderError(f"{path}: no such folder (expected a run folder from `explainrec train METHOD ... "
                               "--out RUN`, or its model/ folder)")
    if not path.is_dir():
        raise ModelFolderError(f"{path}: is a file, not a run or model folder")
    for folder in (path, path / "model"):
        if (folder / MANIFEST).is_file():
            return folder
    for folder in (path, path / "model"):
        for legacy, command in _LEGACY.items():
            if (folder / legacy).is_file():
                raise ModelFolderError(
                    f"{folder}: written by explainrec 0.1 ({legacy}, no {MANIFEST}); this version reads only the "
                    f"new model-folder format: train it again with `{command} --data DATA --out NEW_RUN`")
    if (path / "checkpoint").is_dir():
        from explainrec.folders import lock_holder

        holder = lock_holder(path)
        if holder is not None:  # --resume now would be a second writer
            raise ModelFolderError(f"{path}: is still being trained (pid {holder.get('pid')}: "
                                   f"`{holder.get('command', '?')}`); its model appears when that run ends")
        raise ModelFolderError(f"{path}: holds a training checkpoint but no finished model (training was "
                               f"interrupted?): continue it with `explainrec train METHOD ... --out {path} --resume`")
    raise ModelFolderError(f"{path}: not a run or model folder (no {MANIFEST} in it or in model/)")


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    file = folder / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelFolderError(f"{file}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or "method" not in manifest:
        raise ModelFolderError(f"{file}: not an explainrec manifest (no 'method')")
    if manifest.get("format") != FORMAT_VERSION:
        raise ModelFolderError(f"{file}: model-folder format {manifest.get('format')!r}; this version reads "
                               f"format {FORMAT_VERSION} -- retrain, or use the explainrec version that wrote it")
    return manifest


def verify_files(folder: Path, manifest: dict) -> None:
    """Each weights file must still have the hash the manifest recorded (bytes overwritten -> a clear error)."""
    for name, digest in (manifest.get("sha256") or {}).items():
        file = folder / name
        if not file.is_file():
            raise ModelFolderError(f"{file}: missing (listed in {MANIFEST})")
        if sha256_file(file) != digest:
            raise ModelFolderError(f"{file}: contents changed since it was written (checksum mismatch): the file is "
                                   "damaged; retrain or restore it")


def read_id_maps(folder: Path) -> tuple[IdMap, IdMap]:
    file = folder / ID_MAPS
    try:
        return load_id_maps(file)
    except OSError as err:
        raise ModelFolderError(f"{file}: cannot read ({err.strerror or err})") from None
    except (json.JSONDecodeError, KeyError, TypeError, DataError) as err:
        raise ModelFolderError(f"{file}: unreadable id maps ({err})") from None


def open_model_folder(path: str | Path, *, expect: str | None = None) -> tuple[Path, dict]:
    """``(folder, manifest)`` of a run or model folder, checked (format, file hashes, expected method)."""
    folder = find_model_folder(path)
    manifest = read_manifest(folder)
    if expect is not None and manifest["method"] != expect:
        raise ModelFolderError(f"{folder}: holds a {manifest['method']!r} model, expected {expect!r}")
    verify_files(folder, manifest)
    return folder, manifest


def load_run(path: str | Path, *, device=None, dtype=None, precision: str | None = "fp32"):
    """The :class:`~explainrec.methods.base.Explainer` of any run or model folder, through the registry
    (``precision``: see :func:`resolve_precision`; the commands pass ``auto``)."""
    from explainrec.methods import registry

    folder, manifest = open_model_folder(path)
    method = registry.get(manifest["method"])
    if not method.explains:
        raise ModelFolderError(f"{folder}: a {method.name} stage ({method.description}); it does not explain pairs "
                               "-- pass the run folder of a method that builds on it")
    explainer = method.load(folder, manifest, device=device, dtype=dtype)
    return apply_precision(explainer, precision)


PRECISIONS = ("auto", "fp32", "int8")


def resolve_precision(precision: str | None, model) -> str:
    """``auto`` (the commands' default) is int8 for a model on the CPU (2.7-3.3x the explanations/s of float32, see
    docs/results.md) and the loaded dtype elsewhere; ``fp32`` (or None) leaves the weights as loaded; ``int8`` is
    taken as asked."""
    if precision in (None, "float32"):
        return "fp32"
    if precision == "auto":
        on_cpu = model is not None and all(p.device.type == "cpu" for p in model.parameters())
        return "int8" if on_cpu else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def apply_precision(explainer, precision: str | None, channels: int | None = None):
    """Quantise the explainer's model for CPU generation when ``precision`` resolves to int8; record what was used.
    ``channels``: float input channels per projection (default ``quantize.OUTLIER_CHANNELS``; 0 = none)."""
    model = explainer.model if explainer.model is not None else explainer.llm
    resolved = resolve_precision(precision, model)
    if resolved == "int8":
        from explainrec.llm import quantize

        k = quantize.OUTLIER_CHANNELS if channels is None else channels
        found = quantize.outlier_channels(model, lambda: _calibration_run(explainer), k) if k > 0 else None
        quantize.quantize_for_cpu(model, precision="int8", outliers=found)
    else:  # as loaded: say which dtype that is (a GPU run loads bf16)
        import torch

        dtype = next((p.dtype for p in model.parameters()), torch.float32) if model is not None else torch.float32
        resolved = "fp32" if dtype == torch.float32 else str(dtype).removeprefix("torch.")
    explainer.info["precision"] = resolved
    return explainer


def _calibration_run(explainer) -> None:
    """One short explanation in float, for int8's outlier channels: a pair the model knows (its first user and
    item, fixed text), through the method's own prompt and inputs, so the forward is the one generation will run."""
    from explainrec.data.schema import Pair
    from explainrec.llm.decoding import GenerationConfig

    def first(known, fallback: str) -> str:
        return known.raw[0] if known is not None and len(known) else fallback

    pair = Pair(first(explainer.known_users, "calibration-user"), first(explainer.known_items, "calibration-item"),
                title="A well reviewed neighbourhood cafe",
                user_profile="Enjoys quiet places with good coffee, friendly staff and fair prices.",
                item_profile="A small cafe known for its espresso, fresh pastries and a calm room to read in.")
    explainer.explain([pair], GenerationConfig(max_new_tokens=2))


def describe(path: str | Path) -> str:
    """One line about a model folder, for logs."""
    folder, manifest = open_model_folder(path)
    data = manifest.get("data") or {}
    return f"{manifest['method']} model in {folder} (data {data.get('name')}, fingerprint {data.get('fingerprint')})"


__all__: list[str] = ["MANIFEST", "ModelFolderError", "data_fingerprint", "data_record", "find_model_folder",
                      "load_run", "open_model_folder", "read_id_maps", "read_manifest", "write_model_folder"]
