"""GaVaMoE recipe: setup -> stage 1 (VAE-GMM, reused when the run folder has it) -> stage 2 -> save.

    explainrec gavamoe train --data synthetic --clusters 4 --out runs/gavamoe

Written on accelerate, so the same command runs on CPU (float32), one GPU (bf16 where supported) or many
(`accelerate launch -m explainrec.cli gavamoe train ...`). Routing data (cluster ids, user/item ids) travels in the
batch, never in module state, so data-parallel sharding and shuffling are safe. Only the main process writes.

Run folder::

    stage1/            the VAE-GMM (weights, config, id maps, clusters, plots)   -- explainrec gavamoe fit-clusters
    checkpoint/        last training state (atomic; --resume continues from it)
    model/             the finished model: explainrec.methods.gavamoe.load(RUN_DIR)
    train_log.jsonl    one line per logged step / validation; loss_curves.png
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from explainrec.data.collate import collate, encode_pair
from explainrec.data.schema import Dataset, Example
from explainrec.io import atomic_write_json
from explainrec.methods.gavamoe.modeling import GaVaMoE, MoEConfig
from explainrec.methods.gavamoe.prompting import gavamoe_prompt
from explainrec.train.checkpoint import is_complete, load_checkpoint, save_checkpoint
from explainrec.train.loop_utils import progress, seed_everything

TRAINABLE_GROUPS = ("experts", "gates", "soft", "vae", "ffn", "attention", "all")


@dataclass
class TrainConfig:
    """Stage-2 settings. CPU defaults for SmolLM2-135M; the paper's LLaMA-3.1-8B settings are in the comments."""

    model: str = "smollm2-135m"  # paper: meta-llama/Llama-3.1-8B
    clusters: int = 4
    moe: MoEConfig = field(default_factory=MoEConfig)
    alpha: float = 0.1  # eq. 13 (unspecified in the paper)
    beta: float = 0.1  # KL weight (paper)
    lr: float = 1e-4  # paper: 3e-5 with accumulation 8 over 3 epochs; a CPU hour is ~1 epoch, so a larger step
    weight_decay: float = 0.0
    epochs: int = 1  # paper: 3
    batch_size: int = 8  # paper: 1
    grad_accum: int = 1  # paper: 8
    clip: float = 0.3  # paper
    max_minutes: float | None = None  # wall-clock budget for stage 2; stops cleanly (and saves) when reached
    max_steps: int | None = None
    trainable: tuple[str, ...] = ("experts", "gates", "soft", "vae")
    lora_r: int = 0  # >0: LoRA on q/k/v/o through peft
    max_prompt_tokens: int = 384
    max_target_tokens: int = 96
    checkpoint_every: int = 100  # optimizer steps
    log_every: int = 10
    seed: int = 0
    stage1: dict = field(default_factory=dict)  # keyword arguments of stage1.fit_clusters

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["moe"] = MoEConfig(**d.get("moe", {}))
        d["trainable"] = tuple(d.get("trainable", cls.trainable))
        return cls(**d)


# ---------------------------------------------------------------------------------------------------- setup


def select_trainable(model: GaVaMoE, groups: tuple[str, ...]) -> dict[str, int]:
    """Freeze everything, then unfreeze the named groups; return trainable parameter counts per group."""
    unknown = set(groups) - set(TRAINABLE_GROUPS) - {"lora"}
    if unknown:
        raise ValueError(f"unknown trainable group(s) {sorted(unknown)}; choose from {TRAINABLE_GROUPS}")
    rules = {
        "experts": lambda n: ".mlp.experts." in n,
        "gates": lambda n: ".mlp.router." in n,
        "ffn": lambda n: n.startswith("llm.") and ".mlp." in n,  # the dense MLPs of the "base" variant
        "soft": lambda n: n.startswith(("user_proj.", "item_proj.")),
        "vae": lambda n: n.startswith("vae."),
        "attention": lambda n: n.startswith("llm.") and ".self_attn." in n,
        "lora": lambda n: "lora_" in n,
        "all": lambda n: True,
    }
    counts = {g: 0 for g in groups}
    for name, p in model.named_parameters():
        hit = [g for g in groups if rules[g](name)]
        p.requires_grad_(bool(hit))
        if hit:
            counts[hit[0]] += p.numel()
    return counts


def build_model(cfg: TrainConfig, dataset: Dataset, vae, *, llm=None, tokenizer=None):
    """LLM (+ surgery) + VAE-GMM -> GaVaMoE, with the placeholder tokens added. Returns (model, tokenizer, report)."""
    from explainrec.llm.load import load_llm
    from explainrec.llm.surgery import moe_upcycle

    if llm is None:
        llm, tokenizer = load_llm(cfg.model)
    user_id, item_id = GaVaMoE.prepare_tokenizer(llm, tokenizer)
    surgery = cfg.moe.surgery_kwargs(cfg.clusters)
    report = moe_upcycle(llm, **surgery) if surgery else None
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        llm = get_peft_model(llm, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model = GaVaMoE(
        llm, vae, user_token_id=user_id, item_token_id=item_id, alpha=cfg.alpha, beta=cfg.beta,
        multi_gate=cfg.moe.variant == "full" or cfg.moe.variant == "coarse",
        load_balance_coef=cfg.moe.load_balance_coef, router_z_coef=cfg.moe.router_z_coef,
    )
    return model, tokenizer, report


def encode_examples(examples: list[Example], tokenizer, cfg: TrainConfig) -> list[dict]:
    """Examples -> token ids with labels on the explanation only, plus the routing data of each pair."""
    from explainrec.data.prompts import render_prompt

    out = []
    for ex in examples:
        enc = encode_pair(
            tokenizer, render_prompt(tokenizer, gavamoe_prompt(ex)), ex.explanation,
            max_prompt_tokens=cfg.max_prompt_tokens, max_target_tokens=cfg.max_target_tokens,
        )
        out.append({"enc": enc, "user": ex.user, "item": ex.item, "rating": ex.rating if ex.rating is not None else float("nan")})
    return out


def make_collate(pad_id: int):
    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([r["enc"] for r in rows], pad_id)
        batch["user"] = torch.tensor([r["user"] for r in rows], dtype=torch.long)
        batch["item"] = torch.tensor([r["item"] for r in rows], dtype=torch.long)
        batch["target"] = torch.tensor([r["rating"] for r in rows], dtype=torch.float32)
        return batch

    return fn


# ---------------------------------------------------------------------------------------------------- train


def train(
    dataset: Dataset,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress_bar: bool = True,
    echo=print,
    llm=None,
    tokenizer=None,
) -> dict:
    """Train GaVaMoE on ``dataset``'s train split and save it to ``out_dir/model``. Returns a summary dict."""
    from accelerate import Accelerator

    from explainrec.methods.gavamoe.stage1 import fit_clusters, load_stage1

    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    seed_everything(cfg.seed)
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision="bf16" if use_bf16 else "no")

    # -- stage 1: reuse the run folder's VAE-GMM when present
    stage1_dir = out / "stage1"
    if not (stage1_dir / "model.safetensors").exists():
        echo(f"[gavamoe] stage 1: fitting the VAE-GMM with {cfg.clusters} clusters -> {stage1_dir}")
        fit_clusters(dataset, cfg.clusters, stage1_dir, seed=cfg.seed, progress=progress_bar, **cfg.stage1)
    vae, s1_users, s1_items = load_stage1(stage1_dir)
    if s1_users.raw != dataset.users.raw or s1_items.raw != dataset.items.raw:
        raise ValueError(f"{stage1_dir}: its id maps differ from dataset {dataset.name!r}; "
                         "stage 1 was trained on other data -- use a fresh run folder")

    # -- stage 2 model; re-seeded so its init does not depend on whether stage 1 ran in this process
    seed_everything(cfg.seed)
    model, tokenizer, report = build_model(cfg, dataset, vae, llm=llm, tokenizer=tokenizer)
    groups = tuple("ffn" if g == "experts" and cfg.moe.variant == "base" else g for g in cfg.trainable)
    counts = select_trainable(model, groups + (("lora",) if cfg.lora_r > 0 else ()))
    total = sum(p.numel() for p in model.parameters())
    if report is not None:
        echo(f"[gavamoe] surgery: {report}")
    echo(f"[gavamoe] variant={cfg.moe.variant} parameters: {total / 1e6:.1f}M, trainable "
         + ", ".join(f"{g}={n / 1e6:.2f}M" for g, n in counts.items()))

    train_rows = encode_examples(dataset.split_examples("train"), tokenizer, cfg)
    valid_rows = encode_examples(dataset.split_examples("valid"), tokenizer, cfg)
    if not train_rows:
        raise ValueError(f"dataset {dataset.name!r} has no training explanations")
    collate_fn = make_collate(tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = acc.prepare(model, optimizer)
    raw = acc.unwrap_model(model)

    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "seconds": 0.0, "history": [], "valid": []}
    ckpt_dir = out / "checkpoint"
    neg_gen = torch.Generator().manual_seed(cfg.seed + 1)
    if resume and is_complete(ckpt_dir):
        state = load_checkpoint(ckpt_dir, model=raw, optimizer=optimizer, expected_config=cfg.to_dict(),
                                ignore_config_keys=("max_minutes", "max_steps", "epochs"), generators={"neg": neg_gen})
        echo(f"[gavamoe] resumed from {ckpt_dir}: epoch {state['epoch']}, batch {state['batch_in_epoch']}, step {state['step']}")

    def checkpoint() -> None:
        if acc.is_main_process:
            save_checkpoint(ckpt_dir, model=raw, optimizer=optimizer, state=state, config=cfg.to_dict(), generators={"neg": neg_gen})

    start = time.perf_counter() - state["seconds"]
    budget_hit = False
    n_items = dataset.n_items
    while state["epoch"] < cfg.epochs and not budget_hit:
        epoch = state["epoch"]
        order = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(train_rows, batch_size=cfg.batch_size, shuffle=True, generator=order, collate_fn=collate_fn)
        loader = acc.prepare(loader)
        skip = state["batch_in_epoch"]
        batches = acc.skip_first_batches(loader, skip) if skip else loader
        model.train()
        for batch in progress(batches, enabled=progress_bar, desc=f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader) - skip):
            neg = torch.randint(0, n_items, batch["user"].shape, generator=neg_gen).to(batch["user"].device)
            with acc.accumulate(model):
                out_ = model(**batch, neg_item=neg)
                acc.backward(out_.loss)
                if acc.sync_gradients and cfg.clip > 0:
                    acc.clip_grad_norm_(params, cfg.clip)
                optimizer.step()
                optimizer.zero_grad()
            state["batch_in_epoch"] += 1
            if acc.sync_gradients:
                state["step"] += 1
                state["seconds"] = time.perf_counter() - start
                if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                    row = {"step": state["step"], "epoch": epoch + state["batch_in_epoch"] / len(loader),
                           "seconds": round(state["seconds"], 1), "loss": out_.loss.item(),
                           **{k: v.item() for k, v in out_.parts.items()}}
                    state["history"].append(row)
                    echo(f"[gavamoe] step {row['step']} loss {row['loss']:.4f} nll {row['nll']:.4f} ({row['seconds']:.0f}s)")
                if state["step"] % cfg.checkpoint_every == 0:
                    checkpoint()
                over_time = cfg.max_minutes is not None and state["seconds"] > 60 * cfg.max_minutes
                over_steps = cfg.max_steps is not None and state["step"] >= cfg.max_steps
                if over_time or over_steps:
                    budget_hit = True
                    echo(f"[gavamoe] budget reached after {state['step']} steps ({state['seconds'] / 60:.1f} min)")
                    break
        if not budget_hit:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
        if valid_rows:
            v = validation_loss(model, valid_rows, collate_fn, cfg, acc)
            state["valid"].append({"step": state["step"], "epoch": state["epoch"], **v})
            echo(f"[gavamoe] validation: " + " ".join(f"{k}={x:.4f}" for k, x in v.items()))
        checkpoint()

    summary = {"steps": state["step"], "train_seconds": round(state["seconds"], 1), "epochs_done": state["epoch"],
               "budget_hit": budget_hit, "trainable": counts, "parameters": total, "config": cfg.to_dict(),
               "last_valid": state["valid"][-1] if state["valid"] else None}
    if acc.is_main_process:
        from explainrec.methods.gavamoe.persist import save_pretrained

        save_pretrained(raw, tokenizer, out / "model", config=cfg.to_dict(), dataset=dataset)
        atomic_write_json(out / "train_summary.json", summary)
        _write_log_and_plot(out, state)
    acc.wait_for_everyone()
    return summary


@torch.no_grad()
def validation_loss(model, rows: list[dict], collate_fn, cfg: TrainConfig, acc) -> dict[str, float]:
    """Mean explanation NLL (and ELBO) over the validation pairs, in eval mode."""
    model.eval()
    # its own generator: a DataLoader otherwise draws its base seed from the global RNG, and a resumed run would diverge
    loader = acc.prepare(torch.utils.data.DataLoader(rows, batch_size=cfg.batch_size, collate_fn=collate_fn,
                                                     generator=torch.Generator().manual_seed(0)))
    sums: dict[str, float] = {}
    n = 0
    for batch in loader:
        out = model(**batch)
        for k, v in out.parts.items():
            if k in ("nll", "elbo"):
                sums[k] = sums.get(k, 0.0) + v.item() * batch["user"].shape[0]
        n += batch["user"].shape[0]
    model.train()
    return {f"valid_{k}": v / max(n, 1) for k, v in sums.items()} | ({"valid_ppl": math.exp(min(sums["nll"] / max(n, 1), 50))} if "nll" in sums else {})


def _write_log_and_plot(out: Path, state: dict) -> None:
    from explainrec.io import atomic_write_jsonl

    atomic_write_jsonl(out / "train_log.jsonl", state["history"] + [{"kind": "valid", **v} for v in state["valid"]])
    if not state["history"]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in state["history"]]
    ax.plot(steps, [r["nll"] for r in state["history"]], label="train NLL")
    if state["valid"] and "valid_nll" in state["valid"][0]:
        ax.plot([v["step"] for v in state["valid"]], [v["valid_nll"] for v in state["valid"]], "o-", label="valid NLL")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("explanation NLL")
    ax.set_title("GaVaMoE stage 2")
    ax.legend()
    fig.tight_layout()
    tmp = out / ".loss_curves.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out / "loss_curves.png")
