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

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from explainrec.data.collate import encode_examples as encode_rows
from explainrec.data.collate import make_collate
from explainrec.data.schema import Dataset, Example
from explainrec.io import atomic_write_json
from explainrec.methods.gavamoe.modeling import GaVaMoE, MoEConfig
from explainrec.methods.gavamoe.prompting import gavamoe_prompt
from explainrec.methods.gavamoe.vae_gmm import InteractionSampler
from explainrec.train.loop import make_accelerator, run_loop
from explainrec.train.loop_utils import seed_everything

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
    max_valid_pairs: int | None = None  # validate on the first N valid pairs (None: all); a CPU budget saver
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
    """Examples -> token rows with GaVaMoE's prompt (soft tokens included)."""
    return encode_rows(examples, tokenizer, gavamoe_prompt, max_prompt_tokens=cfg.max_prompt_tokens,
                       max_target_tokens=cfg.max_target_tokens)


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
    from explainrec.methods.gavamoe.stage1 import fit_clusters, load_stage1

    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.grad_accum)

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
    graph = dataset.interactions.of_split("train")
    sampler = InteractionSampler(graph.user, graph.item, dataset.n_users, dataset.n_items)

    def negatives(batch: dict, gen: torch.Generator) -> dict:
        """The interaction-vector targets of eq. 7 for the joint ELBO, as in stage 1."""
        context, negative = sampler.sample(batch["user"], batch["item"], 1, gen)
        return {"context_items": context, "negative_items": negative}

    raw, state = run_loop(model, train_rows, valid_rows, make_collate(tokenizer.pad_token_id), cfg, out, acc=acc,
                          extra=negatives, resume=resume, progress_bar=progress_bar, echo=echo, tag="gavamoe")
    summary = {"steps": state["step"], "train_seconds": round(state["seconds"], 1), "epochs_done": state["epoch"],
               "budget_hit": state["budget_hit"], "trainable": counts, "parameters": total, "config": cfg.to_dict(),
               "last_valid": state["valid"][-1] if state["valid"] else None}
    if acc.is_main_process:
        from explainrec.methods.gavamoe.persist import save_pretrained

        save_pretrained(raw, tokenizer, out / "model", config=cfg.to_dict(), dataset=dataset)
        atomic_write_json(out / "train_summary.json", summary)
    acc.wait_for_everyone()
    return summary
