"""Save and load a whole GaVaMoE model: one model folder, loadable on CPU or GPU without the base model's weights.

    model.safetensors   every weight (LLM with MoE blocks, VAE-GMM, soft-token projections); tied weights once
    explainrec.json     config + arch: LLM config, surgery, VAE-GMM arguments, placeholder ids, loss weights
    tokenizer files     with the placeholder and pad tokens
    id_maps.json        raw user/item ids -> rows, so raw ids map to the same embeddings
"""
from __future__ import annotations

from pathlib import Path

from explainrec.methods import llm_method
from explainrec.methods.gavamoe.config import GaVaMoEConfig
from explainrec.methods.gavamoe.modeling import GaVaMoE
from explainrec.methods.model_folder import ModelFolderError


def save_gavamoe(model: GaVaMoE, tokenizer, path: Path, cfg: GaVaMoEConfig, dataset, *, method: str) -> Path:
    """Write ``path`` atomically. LoRA adapters (if any) are merged into the weights first."""
    from explainrec.training.settings import merge_lora

    model.llm = merge_lora(model.llm)
    arch = {
        "llm_config": model.llm.config.to_dict(),
        "surgery": cfg.moe.surgery_kwargs(cfg.clusters),
        "vae": model.vae.config,
        "user_token_id": model.user_token_id,
        "item_token_id": model.item_token_id,
        "multi_gate": model.multi_gate,
    }
    return llm_method.save_weights(path, method=method, config=cfg, dataset=dataset, module=model,
                                   tokenizer=tokenizer, arch=arch)


def load_gavamoe(folder: Path, manifest: dict) -> GaVaMoE:
    """The GaVaMoE of a model folder (float32, CPU, eval mode)."""
    from explainrec.methods.gavamoe.surgery import moe_upcycle
    from explainrec.methods.gavamoe.vae_gmm import VaeGmm

    arch = manifest.get("arch") or {}
    cfg = GaVaMoEConfig.from_dict(manifest.get("config"), f"{folder}/explainrec.json config")
    try:
        llm = llm_method.rebuild_llm(arch["llm_config"])
        if arch["surgery"]:
            moe_upcycle(llm, **{**arch["surgery"], "init": "random"})  # the weights come from the file
        vae = VaeGmm(**arch["vae"])
        model = GaVaMoE(llm, vae, user_token_id=arch["user_token_id"], item_token_id=arch["item_token_id"],
                        alpha=cfg.alpha, beta=cfg.beta, multi_gate=arch["multi_gate"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{folder}: unreadable GaVaMoE description in explainrec.json ({err})") from None
    llm_method.load_weights(folder, model, manifest)
    return model.eval()
