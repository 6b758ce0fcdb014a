"""XRec recipe: LightGCN (reused when the run folder has it) -> adaptors on a frozen LLM -> save -> explain.

    explainrec xrec train --data ../shared/data/xrec/google --out runs/xrec-google

Run folder::

    lightgcn/        collaborative embeddings (+ Recall@20 / NDCG@20 on the test split)
    checkpoint/      last training state (--resume continues it)
    model/           adaptors, LightGCN tables, tokenizer, id maps, xrec.json (the LLM is rebuilt from its name
                     unless it was trained, e.g. with LoRA, in which case its weights are saved too)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from explainrec.data.collate import encode_examples, make_collate
from explainrec.data.schema import DataError, Dataset, load_id_maps
from explainrec.io import atomic_dir, atomic_write_json
from explainrec.llm.generate import GenerationStats, generate_texts
from explainrec.methods.xrec.modeling import XRecModel
from explainrec.methods.xrec.prompting import xrec_prompt
from explainrec.train.loop import make_accelerator, run_loop
from explainrec.train.loop_utils import seed_everything

META_FILE = "xrec.json"


@dataclass
class XRecConfig:
    """XRec settings; LLaMA-2-7B-chat in the paper, SmolLM2-135M on CPU here."""

    model: str = "smollm2-135m"
    lightgcn: dict = field(default_factory=dict)  # keyword arguments of lightgcn.train_lightgcn
    n_experts: int = 8  # adaptor experts (paper: 8)
    dropout: float = 0.2
    lr: float = 1e-3  # only the two adaptors train: a larger step than full fine-tuning
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    clip: float = 1.0
    max_minutes: float | None = None
    max_steps: int | None = None
    max_valid_pairs: int | None = None  # validate on the first N valid pairs (None: all); a CPU budget saver
    lora_r: int = 0
    max_prompt_tokens: int = 384
    max_target_tokens: int = 96
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train(dataset: Dataset, out_dir: str | Path, cfg: XRecConfig | None = None, *, resume: bool = False,
          progress_bar: bool = True, echo=print) -> dict:
    """Train XRec on ``dataset``'s train split and save it to ``out_dir/model``."""
    from explainrec.llm.load import load_llm
    from explainrec.methods.xrec.lightgcn import LightGCNResult, train_lightgcn

    cfg = cfg or XRecConfig()
    out = Path(out_dir)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.grad_accum)

    gcn_dir = out / "lightgcn"
    if not (gcn_dir / "lightgcn.json").exists():
        echo(f"[xrec] collaborative tokenizer: LightGCN on {len(dataset.interactions.of_split('train'))} train edges")
        result = train_lightgcn(dataset, seed=cfg.seed, progress=progress_bar, **cfg.lightgcn)
        if acc.is_main_process:
            result.save(gcn_dir)
        echo(f"[xrec] LightGCN test metrics: {result.metrics}")
    result = LightGCNResult.load(gcn_dir)
    if result.users.raw != dataset.users.raw or result.items.raw != dataset.items.raw:
        raise ValueError(f"{gcn_dir}: its id maps differ from dataset {dataset.name!r}; use a fresh run folder")

    seed_everything(cfg.seed)
    llm, tokenizer = load_llm(cfg.model)
    model, tokenizer = _build(cfg, llm, tokenizer, result)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    echo(f"[xrec] trainable parameters: {trainable / 1e6:.2f}M (adaptors{' + LoRA' if cfg.lora_r else ''}); LLM frozen")

    rows = {s: encode_examples(dataset.split_examples(s), tokenizer, xrec_prompt, max_prompt_tokens=cfg.max_prompt_tokens,
                               max_target_tokens=cfg.max_target_tokens) for s in ("train", "valid")}
    raw, state = run_loop(model, rows["train"], rows["valid"], make_collate(tokenizer.pad_token_id), cfg, out, acc=acc,
                          resume=resume, progress_bar=progress_bar, echo=echo, tag="xrec")
    summary = {"steps": state["step"], "train_seconds": round(state["seconds"], 1), "epochs_done": state["epoch"],
               "budget_hit": state["budget_hit"], "trainable": trainable, "lightgcn": result.metrics,
               "last_valid": state["valid"][-1] if state["valid"] else None, "config": cfg.to_dict()}
    if acc.is_main_process:
        save_pretrained(raw, tokenizer, out / "model", cfg, dataset)
        atomic_write_json(out / "train_summary.json", summary)
    acc.wait_for_everyone()
    return summary


def _build(cfg: XRecConfig, llm, tokenizer, result) -> tuple[XRecModel, object]:
    user_id, item_id = XRecModel.prepare_tokenizer(llm, tokenizer)
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        llm = get_peft_model(llm, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules=["q_proj", "v_proj"]))
    model = XRecModel.from_lightgcn(llm, result, user_token_id=user_id, item_token_id=item_id, n_experts=cfg.n_experts,
                                    dropout=cfg.dropout, freeze_llm=True)
    if cfg.lora_r > 0:
        for n, p in model.llm.named_parameters():
            p.requires_grad_("lora_" in n)
    return model, tokenizer


def save_pretrained(model: XRecModel, tokenizer, path: Path, cfg: XRecConfig, dataset: Dataset) -> Path:
    """Adaptors + LightGCN tables (+ LLM weights only when they were trained) + tokenizer + id maps."""
    if hasattr(model.llm, "merge_and_unload"):
        model.llm = model.llm.merge_and_unload()
    llm_trained = cfg.lora_r > 0
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
             if llm_trained or not k.startswith("llm.")}
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp))
        dataset.save_id_maps(tmp / "id_maps.json")
        atomic_write_json(tmp / META_FILE, {"format": 1, "config": cfg.to_dict(), "llm_saved": llm_trained,
                                            "n_users": model.n_users, "n_items": model.n_items,
                                            "embed_dim": int(model.user_table.shape[1])})
    return path


def load(path: str | Path):
    """``(model, tokenizer, users, items, config)`` from a run folder or its ``model/``."""
    from transformers import AutoTokenizer

    from explainrec.llm.load import load_llm

    path = Path(path)
    if (path / "model" / META_FILE).exists():
        path = path / "model"
    if not (path / META_FILE).exists():
        raise DataError(f"{path / META_FILE}: not found -- not an XRec model folder (train one with `explainrec xrec train`)")
    meta = json.loads((path / META_FILE).read_text())
    cfg = XRecConfig(**meta["config"])
    llm, _ = load_llm(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    zeros_u = torch.zeros(meta["n_users"], meta["embed_dim"])
    zeros_i = torch.zeros(meta["n_items"], meta["embed_dim"])
    model = XRecModel(llm, zeros_u, zeros_i, user_token_id=tokenizer.convert_tokens_to_ids("<|user_emb|>"),
                      item_token_id=tokenizer.convert_tokens_to_ids("<|item_emb|>"), n_experts=cfg.n_experts,
                      dropout=cfg.dropout)
    state = load_file(str(path / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys if not k.startswith("llm.")] + list(result.unexpected_keys)
    if bad:
        raise DataError(f"{path / 'model.safetensors'}: does not fit the XRec model ({bad[:4]})")
    users, items = load_id_maps(path / "id_maps.json")
    return model.eval(), tokenizer, users, items, cfg


def explain_split(run_dir: str | Path, dataset: Dataset, split: str = "test", *, limit: int | None = None,
                  out: str | Path | None = None, **generation) -> tuple[list[dict], GenerationStats]:
    """Explain every pair of a split with a saved XRec model (raw ids mapped through the model's id maps)."""
    from explainrec.data.prompts import render_prompt
    from explainrec.data.splits import sparsity_buckets
    from explainrec.io import atomic_write_jsonl
    from explainrec.methods.gavamoe.explain import model_ids

    model, tokenizer, users, items, _ = load(run_dir)
    examples = dataset.split_examples(split)[:limit]
    raw_u = [dataset.users.decode(e.user) for e in examples]
    raw_i = [dataset.items.decode(e.item) for e in examples]
    user, item = model_ids(raw_u, users), model_ids(raw_i, items)
    stats = GenerationStats()
    texts = generate_texts(
        model.llm, tokenizer, [render_prompt(tokenizer, xrec_prompt(e)) for e in examples], stats=stats,
        batch_context=lambda ids, idx: model.generation_context(ids, user[idx.cpu()], item[idx.cpu()]), **generation,
    )
    rows = [{"user": u, "item": i, "prediction": t, "reference": e.explanation, "features": list(e.features),
             "bucket": b, "cold_start": bool(uu < 0 or ii < 0), "method": "xrec"}
            for u, i, t, e, b, uu, ii in zip(raw_u, raw_i, texts, examples, sparsity_buckets(dataset, examples), user, item)]
    if out is not None:
        atomic_write_jsonl(out, rows)
    return rows, stats
