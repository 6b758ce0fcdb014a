"""Item content in several views (step 1): the input of the RQ-VAEs and of the item tower.

MMP-Refer encodes every item's text and image with LLM2CLIP. XRec's data has text only and no images, so the
default is **two text views** of each item -- its title and its profile -- each through the embedded MiniLM
(mean pooling over the tokens, then unit length, as sentence-transformers' all-MiniLM-L6-v2 pipeline; float32).
Both views live in one encoder space, as LLM2CLIP's do; they are correlated, so aligning them is easier than
aligning text and images. Reports call this "two text views", never images.

A user with real multimodal features passes a file of per-item vectors (:func:`read_feature_file`), any number
of modalities, keyed by raw item id:

* ``.safetensors`` or ``.npz`` with one 1-D vector per key: ``"<raw item id>"`` (one modality, named
  ``features``) or ``"<modality>/<raw item id>"`` (split at the first ``/``);
* ``.npz`` in columns: ``ids`` (1-D string array of raw item ids) plus one ``(n, d)`` array per modality;
* ``.npy``: a structured array with a string field ``id`` and one float field of shape ``(d,)`` per modality.

Nothing is unpickled (``np.load(..., allow_pickle=False)``); every error names the file and the bad key or shape.

Items without content. XRec's data carries titles and profiles only on explained pairs (``Dataset.examples``):
on google 2.5k of 16.6k items have them. Such an item's vector, per view, is in this order of preference:

1. (text views only) its other text view -- both views are MiniLM vectors of the same item;
2. ``fallback="neighbours"``: the mean of that view over the items that share a train user with it, weighted by
   the number of shared users (the item's 2-hop neighbourhood in the train graph);
3. the mean of that view over all items that have it.

``ItemContent.present`` marks the items that had their own vector, and the report counts each source. Filled
text vectors are scaled back to unit length like the encoded ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from explainrec.data.schema import DataError, Dataset, IdMap
from explainrec.methods.mmp_refer.config import ContentConfig

TEXT_VIEWS = ("title", "profile")
SINGLE_MODALITY = "features"


@dataclass
class ItemContent:
    """Per-view item vectors (rows = contiguous item ids) and where each came from."""

    views: dict[str, np.ndarray]  # name -> (n_items, d_view) float32
    present: dict[str, np.ndarray]  # name -> (n_items,) bool: the item had its own vector
    source: str  # e.g. "two text views (title, profile) via minilm" or "file /path/x.npz"
    report: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(next(iter(self.views.values())).shape[0])

    @property
    def names(self) -> list[str]:
        return list(self.views)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``view.<name>`` / ``present.<name>`` arrays (for safetensors or npz); ``source`` and ``report``
        go beside them as JSON."""
        out = {f"view.{k}": v for k, v in self.views.items()}
        out.update({f"present.{k}": v.astype(np.uint8) for k, v in self.present.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: str, report: dict | None = None) -> "ItemContent":
        views = {k[5:]: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k.startswith("view.")}
        present = {k[8:]: np.asarray(v).astype(bool) for k, v in arrays.items() if k.startswith("present.")}
        return cls(views=views, present=present, source=source, report=report or {})


# ---------------------------------------------------------------------------------------------------- text


def item_texts(dataset: Dataset) -> tuple[list[str | None], list[str | None]]:
    """Each item's title and profile from the explained pairs (the first non-empty one seen; None if none)."""
    titles: list[str | None] = [None] * dataset.n_items
    profiles: list[str | None] = [None] * dataset.n_items
    for ex in dataset.examples:
        if titles[ex.item] is None and ex.title and ex.title.strip():
            titles[ex.item] = ex.title.strip()
        if profiles[ex.item] is None and ex.item_profile and ex.item_profile.strip():
            profiles[ex.item] = ex.item_profile.strip()
    return titles, profiles


def encode_texts(texts: Sequence[str], tokenizer, model, *, batch_size: int = 64, max_length: int = 128,
                 progress: bool = False) -> np.ndarray:
    """Sentence vectors ``(n, d)`` float32: masked mean of the last hidden states, scaled to unit length.

    Identical texts are encoded once; batches hold texts of similar length (sorted), so little is padded.
    """
    import torch

    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
    out = np.zeros((len(unique), model.config.hidden_size), dtype=np.float32)
    device = next(model.parameters()).device
    from explainrec.training.loop_utils import progress as bar

    starts = range(0, len(order), batch_size)
    with torch.inference_mode():
        for lo in bar(starts, enabled=progress, desc="encode", total=len(starts)):
            idx = order[lo: lo + batch_size]
            enc = tokenizer([unique[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state.float()  # (b, T, d)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.cpu().numpy()
    row = {t: i for i, t in enumerate(unique)}
    return out[[row[t] for t in texts]]


HASHING = "hashing"


def hashing_encode(texts: Sequence[str], dim: int = 128) -> np.ndarray:
    """A fast, model-free text encoder: lower-cased words hashed (CRC32) into ``dim`` signed buckets, unit length.

    Why: tests and quick runs need text views without loading a neural encoder; items sharing words still land
    near each other. Not a substitute for MiniLM in reported results (the reports name the encoder).
    """
    import re
    import zlib

    out = np.zeros((len(texts), dim), dtype=np.float32)
    for r, text in enumerate(texts):
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            h = zlib.crc32(word.encode())
            out[r, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norm > 0, norm, 1.0)


def text_views(dataset: Dataset, cfg: ContentConfig | None = None, *, encode: Callable | None = None,
               device: str | None = "cpu", progress: bool = False) -> ItemContent:
    """Two text views of every item (title, profile), each encoded by ``cfg.encoder`` (MiniLM by default).

    ``encode(texts) -> (n, d)`` replaces the encoder (tests pass random vectors). Items without a view are
    filled as described in the module docstring.
    """
    cfg = cfg or ContentConfig()
    encoder_name = cfg.encoder if encode is None else "a custom encoder"
    if encode is None and cfg.encoder == HASHING:
        encode = hashing_encode
    elif encode is None:
        from explainrec.llm.load import load_encoder

        tokenizer, model = load_encoder(cfg.encoder, device=device)

        def encode(texts):
            return encode_texts(texts, tokenizer, model, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                progress=progress)

    titles, profiles = item_texts(dataset)
    views, present = {}, {}
    for name, texts in zip(TEXT_VIEWS, (titles, profiles)):
        have = np.array([t is not None for t in texts], dtype=bool)
        if not have.any():
            continue
        vecs = np.asarray(encode([t for t in texts if t is not None]), dtype=np.float32)
        full = np.zeros((dataset.n_items, vecs.shape[1]), dtype=np.float32)
        full[have] = vecs
        views[name], present[name] = full, have
    if not views:
        raise DataError(f"dataset {dataset.name!r}: no item has a title or a profile, so there is no text to encode; "
                        "pass a feature file (ContentConfig.features) instead")
    own = {k: v.copy() for k, v in present.items()}
    # 1. the other text view of the same item (same encoder space)
    if len(views) == 2:
        a, b = TEXT_VIEWS
        only_b, only_a = present[b] & ~present[a], present[a] & ~present[b]
        views[a][only_b], views[b][only_a] = views[b][only_b], views[a][only_a]
        filled = {a: only_b, b: only_a}
        present = {k: present[k] | filled[k] for k in views}
    report = fill_missing(views, present, dataset, cfg.fallback, unit=True)
    for name in views:
        report[name]["own"] = int(own[name].sum())
        report[name]["other_view"] = int(present[name].sum() - own[name].sum())
    return ItemContent(views=views, present=own,
                       source=f"two text views ({', '.join(views)}) via {encoder_name}", report=report)


# ---------------------------------------------------------------------------------------------------- fill


def fill_missing(views: dict[str, np.ndarray], present: dict[str, np.ndarray], dataset: Dataset, fallback: str,
                 *, unit: bool = False) -> dict[str, dict]:
    """Fill, in place, the rows of items without a vector: neighbour mean, then global mean (module docstring).

    Returns per view how many rows came from each source. ``unit`` rescales filled rows to length 1.
    """
    from scipy.sparse import csr_matrix

    train = dataset.interactions.of_split("train")
    adj = csr_matrix((np.ones(len(train), dtype=np.float64), (train.item, train.user)),
                     shape=(dataset.n_items, dataset.n_users))
    adj.data[:] = 1.0  # duplicate edges count once
    report = {}
    for name, x in views.items():
        have = present[name]
        missing = ~have
        counts = {"neighbours": 0, "mean": 0}
        if missing.any() and fallback == "neighbours":
            weights = adj @ (adj.T @ have.astype(np.float64))  # (I,) shared-user weight of items with the view
            sums = adj @ (adj.T @ (x.astype(np.float64) * have[:, None]))  # (I, d)
            use = missing & (weights > 0)
            x[use] = (sums[use] / weights[use, None]).astype(np.float32)
            counts["neighbours"] = int(use.sum())
            missing = missing & ~use
        if missing.any():
            x[missing] = x[have].mean(axis=0)
            counts["mean"] = int(missing.sum())
        if unit:
            filled = ~have
            norm = np.linalg.norm(x[filled], axis=1, keepdims=True)
            x[filled] = np.divide(x[filled], norm, out=np.zeros_like(x[filled]), where=norm > 0)
        report[name] = counts
    return report


# ---------------------------------------------------------------------------------------------------- files


def _check_vector(path: Path, key: str, value: np.ndarray) -> np.ndarray:
    if value.dtype.kind not in "fiu":
        raise DataError(f"{path}: key '{key}': expected numbers, got dtype {value.dtype}")
    if value.ndim != 1 or value.shape[0] < 1:
        raise DataError(f"{path}: key '{key}': expected a non-empty 1-D vector, got shape {tuple(value.shape)}")
    out = value.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: key '{key}': holds NaN or infinite values")
    return out


def _per_key(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{modality: {raw id: vector}}`` from one-vector-per-key files."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        modality, sep, raw = key.partition("/")
        if not sep:
            modality, raw = SINGLE_MODALITY, key
        if not modality or not raw:
            raise DataError(f"{path}: key '{key}': expected '<raw item id>' or '<modality>/<raw item id>'")
        out.setdefault(modality, {})[raw] = _check_vector(path, key, np.asarray(value))
    return out


def _columns(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    ids = arrays.pop("ids")
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        raise DataError(f"{path}: key 'ids': expected a 1-D array of strings (raw item ids), got dtype {ids.dtype} "
                        f"and shape {tuple(ids.shape)}")
    raw = [str(r) for r in ids.tolist()]
    if len(set(raw)) != len(raw):
        dup = next(r for r in raw if raw.count(r) > 1)
        raise DataError(f"{path}: key 'ids': raw item id {dup!r} appears more than once")
    if not arrays:
        raise DataError(f"{path}: only 'ids' found; add one (n, d) array per modality")
    out = {}
    for key, value in arrays.items():
        if value.ndim != 2 or value.shape[0] != len(raw):
            raise DataError(f"{path}: key '{key}': expected shape ({len(raw)}, d) to match 'ids', "
                            f"got {tuple(value.shape)}")
        if value.dtype.kind not in "fiu":
            raise DataError(f"{path}: key '{key}': expected numbers, got dtype {value.dtype}")
        mat = value.astype(np.float32)
        if not np.isfinite(mat).all():
            bad = int(np.flatnonzero(~np.isfinite(mat).all(axis=1))[0])
            raise DataError(f"{path}: key '{key}': row {bad} (id {raw[bad]!r}) holds NaN or infinite values")
        out[key] = dict(zip(raw, mat))
    return out


def _structured(path: Path, arr: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    names = arr.dtype.names
    if not names or "id" not in names or arr.ndim != 1:
        raise DataError(f"{path}: a .npy feature file must hold a 1-D structured array with a string field 'id' and "
                        f"one float field per modality; got dtype {arr.dtype} and shape {tuple(arr.shape)}")
    columns = {"ids": arr["id"]}
    for name in names:
        if name != "id":
            field_ = arr[name]
            if field_.ndim == 1:  # a field of shape () is a 1-d "vector" per item
                field_ = field_[:, None]
            columns[name] = field_
    return _columns(path, columns)


def read_feature_file(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{modality: {raw item id: (d,) float32}}`` from a feature file (formats in the module docstring).

    Raises :class:`DataError` naming the file and the bad key or shape: unknown suffix, unreadable file, object
    arrays (pickles are never loaded), non-numeric or non-1-D vectors, NaN/inf, and modalities whose vectors
    differ in width.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                table = _per_key(path, load_file(str(path)))
            except SafetensorError as err:
                raise DataError(f"{path}: not a readable safetensors file ({err})") from err
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {}
                for key in z.files:
                    try:
                        arrays[key] = z[key]
                    except ValueError as err:  # object arrays need pickle
                        raise DataError(f"{path}: key '{key}': cannot be read without unpickling ({err}); store "
                                        "plain numeric arrays") from err
            table = _columns(path, arrays) if "ids" in arrays else _per_key(path, arrays)
        elif suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError as err:
                raise DataError(f"{path}: cannot be read without unpickling ({err}); store a structured array") from err
            table = _structured(path, arr)
        else:
            raise DataError(f"{path}: unknown feature file type {suffix!r}; expected .safetensors, .npz or .npy")
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    except Exception as err:  # zip/format errors from numpy
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: not a valid {suffix} file ({type(err).__name__}: {err})") from err
    if not table:
        raise DataError(f"{path}: holds no vectors")
    for modality, vecs in table.items():
        widths = {v.shape[0] for v in vecs.values()}
        if len(widths) > 1:
            first = next(iter(vecs))
            bad = next(r for r, v in vecs.items() if v.shape[0] != vecs[first].shape[0])
            raise DataError(f"{path}: modality '{modality}': vectors differ in width (id {first!r}: "
                            f"{vecs[first].shape[0]}, id {bad!r}: {vecs[bad].shape[0]})")
    return table


def file_views(dataset: Dataset, path: str | Path, cfg: ContentConfig | None = None) -> ItemContent:
    """Views from a feature file, aligned to the dataset's items; ids the dataset lacks are ignored (counted).

    A modality that covers none of the dataset's items raises :class:`DataError`; other gaps are filled
    (neighbour mean, then global mean; never across modalities, whose spaces differ).
    """
    cfg = cfg or ContentConfig()
    table = read_feature_file(path)
    items: IdMap = dataset.items
    views, present, extra = {}, {}, {}
    for modality, vecs in table.items():
        width = next(iter(vecs.values())).shape[0]
        x = np.zeros((dataset.n_items, width), dtype=np.float32)
        have = np.zeros(dataset.n_items, dtype=bool)
        unknown = 0
        for raw, v in vecs.items():
            idx = items.encode(raw, default=-1)
            if idx < 0:
                unknown += 1
                continue
            x[idx], have[idx] = v, True
        if not have.any():
            sample = next(iter(vecs))
            raise DataError(f"{path}: modality '{modality}': none of its {len(vecs)} ids is an item of dataset "
                            f"{dataset.name!r} (first id {sample!r}, first dataset item {items.raw[0]!r})")
        views[modality], present[modality], extra[modality] = x, have, unknown
    own = {k: v.copy() for k, v in present.items()}
    report = fill_missing(views, present, dataset, cfg.fallback)
    for name in views:
        report[name].update(own=int(own[name].sum()), ids_not_in_dataset=extra[name])
    return ItemContent(views=views, present=own, source=f"file {path}", report=report)


def item_content(dataset: Dataset, cfg: ContentConfig | None = None, *, device: str | None = "cpu",
                 progress: bool = False) -> ItemContent:
    """Step 1 as configured: ``cfg.features`` set -> :func:`file_views`, else :func:`text_views` (encoder on
    ``device``; None = CUDA when available)."""
    cfg = cfg or ContentConfig()
    if cfg.features:
        return file_views(dataset, cfg.features, cfg)
    return text_views(dataset, cfg, device=device, progress=progress)
