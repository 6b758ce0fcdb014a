"""XRec: LightGCN embeddings (a ``lightgcn`` stage in ``RUN/lightgcn``) -> MoE adaptors on a frozen LLM -> save.

    explainrec train xrec --data ../shared/data/xrec/google --out runs/xrec-google

The model folder keeps the adaptors and the LightGCN tables; the LLM is rebuilt from its name unless it was
trained (LoRA), in which case its merged weights are saved too.
"""
from __future__ import annotations

from pathlib import Path

from explainrec.data.schema import Dataset
from explainrec.methods import llm_method
from explainrec.methods.model_folder import ModelFolderError
from explainrec.methods.xrec.config import XRecConfig
from explainrec.methods.xrec.modeling import XRecModel
from explainrec.methods.xrec.prompting import xrec_prompt
from explainrec.training.loop_utils import seed_everything


def build_model(cfg: XRecConfig, llm, ids: dict[str, int], gcn) -> XRecModel:
    """Frozen LLM (+ LoRA adapters when ``cfg.lora.r > 0``) + two adaptors over the LightGCN tables."""
    from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
    from explainrec.training.settings import apply_lora

    llm = apply_lora(llm, cfg.lora)
    model = XRecModel.from_lightgcn(llm, gcn, user_token_id=ids[USER_TOKEN], item_token_id=ids[ITEM_TOKEN],
                                    n_experts=cfg.n_experts, dropout=cfg.dropout, freeze_llm=True)
    if cfg.lora.r > 0:
        for n, p in model.llm.named_parameters():
            p.requires_grad_("lora_" in n)
    return model


def train(dataset: Dataset, out: Path, cfg: XRecConfig, lightgcn: Path, *, resume: bool = False,
          progress: bool = True, echo=print, method: str = "xrec"):
    """Train the adaptors on ``dataset``'s train split over the LightGCN stage in ``lightgcn``; save ``out/model``."""
    from explainrec.methods.xrec.lightgcn_method import load_lightgcn

    gcn = load_lightgcn(lightgcn)
    seed_everything(cfg.seed)
    llm, tokenizer, ids = llm_method.load_llm_for_training(cfg.model)
    model = build_model(cfg, llm, ids, gcn)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    echo(f"[xrec] trainable parameters: {trainable / 1e6:.2f}M (adaptors{' + LoRA' if cfg.lora.r else ''}); LLM frozen")
    rows = llm_method.encode_splits(dataset, tokenizer, xrec_prompt, cfg)
    from explainrec.methods.xrec.explainer import xrec_explainer

    def explainer_for(m: XRecModel):
        return xrec_explainer(m, tokenizer, dataset.users, dataset.items, method=method,
                              info=llm_method.memory_info(method, out, cfg, dataset))

    raw, state, acc = llm_method.fit(model, rows, tokenizer, cfg, out, resume=resume, progress=progress, echo=echo,
                                     tag="xrec", curve=llm_method.curve_texts(cfg, dataset, out, explainer_for, echo=echo))
    result = llm_method.summary(state, cfg, trainable=trainable, lightgcn=gcn.metrics)
    return llm_method.finish(
        acc, result, lambda: save_xrec(raw, tokenizer, out / "model", cfg, dataset, method),
        lambda: explainer_for(raw))


def save_xrec(model: XRecModel, tokenizer, path: Path, cfg: XRecConfig, dataset: Dataset, method: str) -> Path:
    """Adaptors + LightGCN tables (+ the merged LLM only when LoRA trained it) + tokenizer + id maps."""
    from explainrec.training.settings import merge_lora

    model.llm = merge_lora(model.llm)
    llm_saved = cfg.lora.r > 0
    arch = {"llm_config": model.llm.config.to_dict(), "llm_saved": llm_saved, "n_users": model.n_users,
            "n_items": model.n_items, "embed_dim": int(model.user_table.shape[1]),
            "user_token_id": model.user_token_id, "item_token_id": model.item_token_id}
    return llm_method.save_weights(path, method=method, config=cfg, dataset=dataset, module=model, tokenizer=tokenizer,
                                   keep=lambda k: llm_saved or not k.startswith("llm."), arch=arch)


def load_xrec(folder: Path, manifest: dict) -> XRecModel:
    """The XRecModel of a model folder (float32, CPU, eval mode)."""
    import torch

    from explainrec.llm.load import grow_embeddings, load_llm

    arch = manifest.get("arch") or {}
    cfg = XRecConfig.from_dict(manifest.get("config"), f"{folder}/explainrec.json config")
    try:
        if arch["llm_saved"]:
            llm = llm_method.rebuild_llm(arch["llm_config"])
        else:
            llm, _ = load_llm(cfg.model, device="cpu", dtype="float32")
            grow_embeddings(llm, arch["llm_config"]["vocab_size"])
        zeros_u = torch.zeros(arch["n_users"], arch["embed_dim"])
        zeros_i = torch.zeros(arch["n_items"], arch["embed_dim"])
        model = XRecModel(llm, zeros_u, zeros_i, user_token_id=arch["user_token_id"],
                          item_token_id=arch["item_token_id"], n_experts=cfg.n_experts, dropout=cfg.dropout)
    except (KeyError, TypeError) as err:
        raise ModelFolderError(f"{folder}: unreadable XRec description in explainrec.json ({err})") from None
    llm_method.load_weights(folder, model, manifest, may_miss=lambda k: not arch["llm_saved"] and k.startswith("llm."))
    return model.eval()
