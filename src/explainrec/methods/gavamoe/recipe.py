"""GaVaMoE stage 2: LLM + surgery + the stage-1 VAE-GMM -> joint training -> the model folder.

    explainrec train gavamoe --data synthetic --out runs/gavamoe clusters=4

Written on accelerate, so the same command runs on CPU (float32), one GPU (bf16 where supported) or many
(`accelerate launch -m explainrec.cli train gavamoe ...`). Routing data (cluster ids, user/item ids) travels in
the batch, never in module state, so data-parallel sharding and shuffling are safe. Only the main process writes.
Stage 1 is trained (or reused) by the run machinery before :func:`train` runs (see :class:`GaVaMoE.stages`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from explainrec.data.schema import Dataset
from explainrec.methods import llm_method
from explainrec.methods.gavamoe.config import GaVaMoEConfig
from explainrec.methods.gavamoe.modeling import GaVaMoE
from explainrec.methods.gavamoe.prompting import prompt_for
from explainrec.training.loop_utils import seed_everything

_GROUP_RULES = {
    "experts": lambda n: ".mlp.experts." in n,
    "gates": lambda n: ".mlp.router." in n,
    "ffn": lambda n: n.startswith("llm.") and ".mlp." in n,  # the dense MLPs of the "base" variant
    "soft": lambda n: n.startswith(("user_proj.", "item_proj.")),
    "vae": lambda n: n.startswith("vae."),
    "attention": lambda n: n.startswith("llm.") and ".self_attn." in n,
    "lora": lambda n: "lora_" in n,
    "all": lambda n: True,
}


def select_trainable(model: GaVaMoE, groups: tuple[str, ...]) -> dict[str, int]:
    """Freeze everything, then unfreeze the named groups; return trainable parameter counts per group."""
    counts = {g: 0 for g in groups}
    for name, p in model.named_parameters():
        hit = [g for g in groups if _GROUP_RULES[g](name)]
        p.requires_grad_(bool(hit))
        if hit:
            counts[hit[0]] += p.numel()
    return counts


def build_model(cfg: GaVaMoEConfig, vae, llm, tokenizer, ids: dict[str, int]):
    """LLM (+ surgery, + LoRA) + VAE-GMM -> GaVaMoE. Returns ``(model, surgery report or None)``."""
    from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
    from explainrec.methods.gavamoe.surgery import moe_upcycle
    from explainrec.training.settings import apply_lora

    surgery = cfg.moe.surgery_kwargs(cfg.clusters)
    report = moe_upcycle(llm, **surgery) if surgery else None
    llm = apply_lora(llm, cfg.lora)
    model = GaVaMoE(
        llm, vae, user_token_id=ids[USER_TOKEN], item_token_id=ids[ITEM_TOKEN], alpha=cfg.alpha, beta=cfg.beta,
        multi_gate=cfg.moe.variant in ("full", "coarse"),
        load_balance_coef=cfg.moe.load_balance_coef, router_z_coef=cfg.moe.router_z_coef,
    )
    return model, report


def initial_model(cfg: GaVaMoEConfig, stage1: Path):
    """The model as training starts it (stage 1's VAE-GMM, the seed, the LLM and its surgery), before any step;
    ``scripts/gate_usage.py --init`` measures it as the untrained control. Returns ``(model, tokenizer, report)``."""
    from explainrec.methods.gavamoe.stage1_method import load_vae_gmm

    vae, _, _ = load_vae_gmm(stage1)
    seed_everything(cfg.seed)  # the init must not depend on whether stage 1 ran in this process
    llm, tokenizer, ids = llm_method.load_llm_for_training(cfg.model)
    model, report = build_model(cfg, vae, llm, tokenizer, ids)
    return model, tokenizer, report


def train(dataset: Dataset, out: Path, cfg: GaVaMoEConfig, stage1: Path, *, resume: bool = False,
          progress: bool = True, echo=print, method: str = "gavamoe"):
    """Train stage 2 on ``dataset``'s train split with the VAE-GMM in ``stage1``; save ``out/model``."""
    from explainrec.methods.gavamoe.persist import save_gavamoe
    from explainrec.methods.gavamoe.vae_gmm import InteractionSampler

    model, tokenizer, report = initial_model(cfg, stage1)
    groups = tuple("ffn" if g == "experts" and cfg.moe.variant == "base" else g for g in cfg.trainable)
    counts = select_trainable(model, groups + (("lora",) if cfg.lora.r > 0 else ()))
    total = sum(p.numel() for p in model.parameters())
    if report is not None:
        echo(f"[gavamoe] surgery: {report}")
    echo(f"[gavamoe] variant={cfg.moe.variant} parameters: {total / 1e6:.1f}M, trainable "
         + ", ".join(f"{g}={n / 1e6:.2f}M" for g, n in counts.items()))

    rows = llm_method.encode_splits(dataset, tokenizer, prompt_for(cfg.profiles), cfg)
    graph = dataset.interactions.of_split("train")
    sampler = InteractionSampler(graph.user, graph.item, dataset.n_users, dataset.n_items)

    def negatives(batch: dict, gen: torch.Generator) -> dict:
        """The interaction-vector targets of eq. 7 for the joint ELBO, as in stage 1."""
        context, negative = sampler.sample(batch["user"], batch["item"], 1, gen)
        return {"context_items": context, "negative_items": negative}

    from explainrec.methods.gavamoe.explainer import gavamoe_explainer

    def explainer_for(m: GaVaMoE):
        return gavamoe_explainer(m, tokenizer, dataset.users, dataset.items, method=method, profiles=cfg.profiles,
                                 info=llm_method.memory_info(method, out, cfg, dataset))

    raw, state, acc = llm_method.fit(model, rows, tokenizer, cfg, out, resume=resume, progress=progress, echo=echo,
                                     tag="gavamoe", extra=negatives,
                                     curve=llm_method.curve_texts(cfg, dataset, out, explainer_for, echo=echo))
    result = llm_method.summary(state, cfg, trainable=counts, parameters=total)
    return llm_method.finish(
        acc, result, lambda: save_gavamoe(raw, tokenizer, out / "model", cfg, dataset, method=method),
        lambda: explainer_for(raw))
