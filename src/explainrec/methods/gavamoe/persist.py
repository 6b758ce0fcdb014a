"""Save and load a whole GaVaMoE model: one folder, loadable on CPU or GPU without the base model's weights.

    model.safetensors   every weight (LLM with MoE blocks, VAE-GMM, soft-token projections); tied weights once
    gavamoe.json        LLM config, surgery, VAE-GMM arguments, placeholder ids, training config
    tokenizer files     with the placeholder and pad tokens
    id_maps.json        raw user/item ids -> rows, so raw ids map to the same embeddings
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from explainrec.data.schema import DataError, IdMap, load_id_maps
from explainrec.io import atomic_dir, atomic_write_json
from explainrec.methods.gavamoe.modeling import GaVaMoE, MoEConfig
from explainrec.methods.gavamoe.vae_gmm import VaeGmm

META_FILE = "gavamoe.json"
WEIGHTS_FILE = "model.safetensors"


def save_pretrained(model: GaVaMoE, tokenizer, path: str | Path, *, config: dict, dataset=None, id_maps: tuple[IdMap, IdMap] | None = None) -> Path:
    """Write ``path`` atomically. LoRA adapters (if any) are merged into the weights first."""
    if hasattr(model.llm, "merge_and_unload"):
        model.llm = model.llm.merge_and_unload()
    moe = MoEConfig(**config["moe"]) if isinstance(config.get("moe"), dict) else config["moe"]
    meta = {
        "format": 1,
        "llm_config": model.llm.config.to_dict(),
        "surgery": moe.surgery_kwargs(config["clusters"]),
        "vae_config": model.vae.config,
        "user_token_id": model.user_token_id,
        "item_token_id": model.item_token_id,
        "alpha": model.alpha,
        "beta": model.beta,
        "multi_gate": model.multi_gate,
        "train_config": config,
    }
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / META_FILE, meta)
        if dataset is not None:
            dataset.save_id_maps(tmp / "id_maps.json")
        elif id_maps is not None:
            atomic_write_json(tmp / "id_maps.json", {"users": id_maps[0].raw, "items": id_maps[1].raw})
    return path


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a saved model folder (or a run folder holding ``model/``). Returns ``(model, tokenizer, users, items, meta)``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from explainrec.llm.surgery import moe_upcycle

    path = Path(path)
    if (path / "model" / META_FILE).exists():
        path = path / "model"
    meta_file = path / META_FILE
    if not meta_file.exists():
        raise DataError(f"{meta_file}: not found -- not a GaVaMoE model folder (train one with `explainrec gavamoe train`)")
    try:
        meta = json.loads(meta_file.read_text())
        llm_cfg = dict(meta["llm_config"])
        config = AutoConfig.for_model(llm_cfg.pop("model_type"), **llm_cfg)
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise DataError(f"{meta_file}: unreadable model description ({err})") from err
    llm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if meta["surgery"]:
        moe_upcycle(llm, **{**meta["surgery"], "init": "random"})  # weights come from the file below
    vae = VaeGmm(**meta["vae_config"])
    model = GaVaMoE(llm, vae, user_token_id=meta["user_token_id"], item_token_id=meta["item_token_id"],
                    alpha=meta["alpha"], beta=meta["beta"], multi_gate=meta["multi_gate"])
    missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    # tied weights (lm_head = embed_tokens) are stored once and re-tied by the model
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise DataError(f"{path / WEIGHTS_FILE}: does not fit the model described in {META_FILE} "
                        f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    if config.tie_word_embeddings:
        llm.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    users, items = load_id_maps(path / "id_maps.json")
    model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
    return model, tokenizer, users, items, meta
