"""The supervised explanation-training loop every LLM method shares (GaVaMoE stage 2, XRec).

One function, written out: shuffled epochs (seeded per epoch), gradient accumulation and clipping through accelerate,
a wall-clock / step budget, validation each epoch, an atomic checkpoint every N steps and at every stop, and a
resume that continues the same run bit for bit (same batch order, RNG and optimizer state). The model's forward
takes the batch dict (plus ``extra(batch)``) and returns an object with ``.loss`` and ``.parts`` (unweighted named
losses, ``nll`` among them).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Protocol

import torch

from explainrec import interrupt
from explainrec.io import atomic_write_jsonl
from explainrec.training.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from explainrec.training.loop_utils import progress

# Settings that may change between a run and its resume (a budget, not the run's identity).
RESUMABLE_KEYS = ("max_minutes", "max_steps", "epochs")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what was kept and what to change."""


class LoopSettings(Protocol):
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    grad_accum: int
    clip: float
    max_minutes: float | None
    max_steps: int | None
    max_valid_pairs: int | None
    checkpoint_every: int
    log_every: int
    seed: int

    def to_dict(self) -> dict: ...


class LengthBuckets(torch.utils.data.Sampler):
    """Shuffled batches of similar lengths, so a batch carries little padding.

    Each epoch: a seeded shuffle of all rows, cut into windows of ``window`` batches; each window sorted by length
    and cut into batches; the batch order shuffled again. Every row is still seen once per epoch in a random batch
    order, but its batch mates have about its length. Deterministic per generator state (resume-safe).
    """

    def __init__(self, lengths: list[int], batch_size: int, window: int, generator: torch.Generator) -> None:
        self.lengths, self.batch_size, self.window, self.generator = lengths, batch_size, window, generator

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        perm = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.batch_size * self.window
        batches = []
        for lo in range(0, len(perm), span):
            chunk = sorted(perm[lo: lo + span], key=lambda i: self.lengths[i])
            batches += [chunk[j: j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def _row_length(row) -> int:
    enc = row.get("enc") if isinstance(row, dict) else None
    return len(enc.input_ids) if enc is not None else 0


def _on_cpu() -> bool:
    """Processes without a GPU run data-parallel on the CPU (gloo) when launched several at once."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def process_state():
    """This process's place in a launch (``is_main_process``, ``wait_for_everyone``), before any Accelerator.

    Why not a bare ``PartialState()``: created first, it would fix the launch as one process on a CPU-only machine
    (accelerate only picks gloo when told the run is on the CPU), and every later Accelerator would inherit that.
    """
    from accelerate import PartialState

    return PartialState(cpu=_on_cpu())


def make_accelerator(grad_accum: int):
    """bf16 on a GPU that supports it, float32 otherwise (CPUs are ~100x slower in bf16)."""
    from accelerate import Accelerator

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision="bf16" if bf16 else "no",
                       cpu=_on_cpu())


def run_loop(
    model: torch.nn.Module,
    train_rows: list,
    valid_rows: list,
    collate_fn: Callable,
    cfg: LoopSettings,
    out: Path,
    *,
    acc,
    extra: Callable[[dict, torch.Generator], dict] | None = None,
    resume: bool = False,
    progress_bar: bool = True,
    echo=print,
    tag: str = "train",
    after_validation: Callable[[torch.nn.Module, int], None] | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train ``model``'s trainable parameters; return ``(unwrapped model, state)``.

    ``extra(batch, generator)`` adds per-batch inputs drawn from a checkpointed generator (e.g. negative items).
    ``after_validation(unwrapped model, step)`` runs on the main process after each validation has been
    checkpointed (e.g. explanations of valid pairs for a learning curve); it must leave the model as it found it
    and be idempotent: a resume that lands on a validation step calls it again. ``state`` holds ``step``,
    ``epoch``, ``seconds``, ``budget_hit``, ``history`` and ``valid``.
    """
    if not train_rows:
        raise ValueError("no training examples")
    valid_rows = valid_rows[: cfg.max_valid_pairs]  # the split's first pairs: the same ones every epoch
    params = [p for p in model.parameters() if p.requires_grad]
    fused = getattr(cfg, "fused_adamw", False) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                                                         for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    model, optimizer = acc.prepare(model, optimizer)
    raw = acc.unwrap_model(model)

    state = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "seconds": 0.0, "budget_hit": False, "history": [], "valid": []}
    ckpt_dir = out / "checkpoint"
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if resume and checkpoint_exists(ckpt_dir):  # an incomplete or damaged one raises CheckpointError
        state = load_checkpoint(ckpt_dir, model=raw, optimizer=optimizer, expected_config=cfg.to_dict(),
                                ignore_config_keys=getattr(cfg, "RESUMABLE", RESUMABLE_KEYS), generators={"extra": gen})
        echo(f"[{tag}] resumed from {ckpt_dir}: continuing after step {state['step']} (epoch {state['epoch'] + 1}, "
             f"batch {state['batch_in_epoch']})")
        # the budget is judged against this call's settings (a resume may raise it); a spent one takes no step more
        state["budget_hit"] = ((cfg.max_steps is not None and state["step"] >= cfg.max_steps)
                               or (cfg.max_minutes is not None and state["seconds"] > 60 * cfg.max_minutes))
        if state["budget_hit"]:
            echo(f"[{tag}] the budget is already spent (step {state['step']}, {state['seconds'] / 60:.1f} min): "
                 "nothing to train; raise max_steps / max_minutes to continue")

    elif resume:
        echo(f"[{tag}] --resume: no checkpoint in {ckpt_dir} yet; training starts at step 1")

    def checkpoint() -> None:
        if acc.is_main_process:
            save_checkpoint(ckpt_dir, model=raw, optimizer=optimizer, state=state, config=cfg.to_dict(), generators={"extra": gen})

    def validated() -> None:
        """The hook after a validation (the checkpoint already holds it), on the main process; the rest wait."""
        if after_validation is None:
            return
        if acc.is_main_process:
            after_validation(raw, state["step"])
        acc.wait_for_everyone()

    if state["valid"] and state["valid"][-1]["step"] == state["step"]:
        validated()  # stopped during the hook: it finishes what it had not written

    start = time.perf_counter() - state["seconds"]
    while state["epoch"] < cfg.epochs and not state["budget_hit"]:
        epoch = state["epoch"]
        order = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        buckets = getattr(cfg, "length_buckets", 0)
        if buckets:
            sampler = LengthBuckets([_row_length(r) for r in train_rows], cfg.batch_size, buckets, order)
            # generator= too: a loader without one draws its worker base seed from the global RNG, which would
            # shift every later draw (dropout, noise) after a resume
            data = torch.utils.data.DataLoader(train_rows, batch_sampler=sampler, collate_fn=collate_fn, generator=order)
        else:
            data = torch.utils.data.DataLoader(train_rows, batch_size=cfg.batch_size, shuffle=True, generator=order,
                                               collate_fn=collate_fn)
        loader = acc.prepare(data)
        skip = state["batch_in_epoch"]
        batches = acc.skip_first_batches(loader, skip) if skip else loader
        model.train()
        for batch in progress(batches, enabled=progress_bar, desc=f"{tag} epoch {epoch + 1}/{cfg.epochs}", total=len(loader) - skip):
            inputs = {**batch, **(extra(batch, gen) if extra else {})}
            with acc.accumulate(model):
                out_ = model(**inputs)
                _check_finite(out_.loss, state, cfg, acc, ckpt_dir, tag)
                acc.backward(out_.loss)
                if acc.sync_gradients and cfg.clip > 0:
                    acc.clip_grad_norm_(params, cfg.clip)
                optimizer.step()
                optimizer.zero_grad()
            state["batch_in_epoch"] += 1
            if not acc.sync_gradients:
                continue
            state["step"] += 1
            interrupt.mark_unsaved()  # a SIGINT/SIGTERM from now on waits for the checkpoint below
            state["seconds"] = time.perf_counter() - start
            if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                row = {"step": state["step"], "epoch": epoch + state["batch_in_epoch"] / len(loader),
                       "seconds": round(state["seconds"], 1), "loss": out_.loss.item(),
                       **{k: v.item() for k, v in out_.parts.items()}}
                state["history"].append(row)
                echo(f"[{tag}] step {row['step']} loss {row['loss']:.4f} nll {row.get('nll', float('nan')):.4f} ({row['seconds']:.0f}s)")
            if state["step"] % cfg.checkpoint_every == 0:
                checkpoint()
            every = getattr(cfg, "valid_every", 0)
            if every and valid_rows and state["step"] % every == 0:  # a learning curve: NLL against pairs seen
                checkpoint()
                v = validation_loss(model, valid_rows, collate_fn, cfg.batch_size, acc, extra=extra)
                state["valid"].append({"step": state["step"], "epoch": epoch, "pairs": state["step"] *
                                       cfg.batch_size * cfg.grad_accum * acc.num_processes, **v})
                echo(f"[{tag}] validation at step {state['step']}: " + " ".join(f"{k}={x:.4f}" for k, x in v.items()))
                checkpoint()
                validated()
            over_time = cfg.max_minutes is not None and state["seconds"] > 60 * cfg.max_minutes
            signalled = interrupt.requested() is not None
            if acc.num_processes > 1:  # clocks and signals differ between processes: all must stop at the same step
                flags = torch.tensor([float(over_time), float(signalled)], device=acc.device)
                over_time, signalled = (bool(x > 0) for x in acc.reduce(flags, reduction="sum").tolist())
            if signalled:  # Ctrl-C / SIGTERM: keep this step, then stop (the message names the checkpoint)
                checkpoint()
                acc.wait_for_everyone()
                raise interrupt.stopped()
            over_steps = cfg.max_steps is not None and state["step"] >= cfg.max_steps
            if over_time or over_steps:
                state["budget_hit"] = True
                echo(f"[{tag}] budget reached after {state['step']} steps ({state['seconds'] / 60:.1f} min)")
                break
        if not state["budget_hit"]:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
        checkpoint()  # before validation: whatever happens there, the steps just taken are kept
        if valid_rows and not (state["valid"] and state["valid"][-1]["step"] == state["step"]):
            v = validation_loss(model, valid_rows, collate_fn, cfg.batch_size, acc, extra=extra)
            state["valid"].append({"step": state["step"], "epoch": state["epoch"], "pairs": state["step"] *
                                   cfg.batch_size * cfg.grad_accum * acc.num_processes, **v})
            echo(f"[{tag}] validation: " + " ".join(f"{k}={x:.4f}" for k, x in v.items()))
            checkpoint()
            validated()
        checkpoint()
    if acc.is_main_process:
        write_log_and_plot(out, state, title=tag)
    return raw, state


def _check_finite(loss: torch.Tensor, state: dict, cfg, acc, ckpt_dir: Path, tag: str) -> None:
    """Stop before a NaN/inf loss reaches the weights; the checkpoint on disk is the last good one."""
    bad = torch.tensor(float(not torch.isfinite(loss.detach()).all()), device=acc.device)
    if acc.num_processes > 1:  # every process must stop at the same step
        bad = acc.reduce(bad, reduction="sum")
    if bad.item() > 0:
        kept = f"the last good checkpoint is kept in {ckpt_dir}" if checkpoint_exists(ckpt_dir) else "no checkpoint was written yet"
        raise TrainingError(f"[{tag}] the loss became {loss.detach().float().item()} at step {state['step'] + 1} "
                            f"(epoch {state['epoch'] + 1}); training stopped and {kept}. Lower the learning rate "
                            f"(now {cfg.lr:g}) or the clipping norm and start again, or check the data.")


@torch.no_grad()
def validation_loss(model, rows: list, collate_fn, batch_size: int, acc, extra=None) -> dict[str, float]:
    """Mean explanation NLL (and ELBO where the model has one) over the validation pairs, in eval mode.

    ``extra`` adds the same per-batch inputs as in training (e.g. sampled interaction targets), drawn from a
    fixed-seed generator so every validation of a run scores the same targets.
    """
    model.eval()
    gen = torch.Generator().manual_seed(0)
    # its own generator: a DataLoader otherwise draws its base seed from the global RNG, and a resumed run would diverge
    loader = acc.prepare(torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collate_fn,
                                                     generator=torch.Generator().manual_seed(0)))
    sums: dict[str, float] = {}
    n = 0
    for batch in loader:
        out = model(**batch, **(extra(batch, gen) if extra else {}))
        size = batch["input_ids"].shape[0]
        for k in ("nll", "elbo"):
            if k in out.parts:
                sums[k] = sums.get(k, 0.0) + out.parts[k].item() * size
        n += size
    model.train()
    result = {f"valid_{k}": v / max(n, 1) for k, v in sums.items()}
    if "nll" in sums:
        result["valid_ppl"] = math.exp(min(result["valid_nll"], 50.0))
    return result


def write_log_and_plot(out: Path, state: dict, title: str) -> None:
    """``train_log.jsonl`` and ``loss_curves.png`` (train and validation NLL per optimizer step)."""
    atomic_write_jsonl(out / "train_log.jsonl", state["history"] + [{"kind": "valid", **v} for v in state["valid"]])
    if not state["history"]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in state["history"]], [r.get("nll", r["loss"]) for r in state["history"]], label="train NLL")
    if state["valid"] and "valid_nll" in state["valid"][0]:
        ax.plot([v["step"] for v in state["valid"]], [v["valid_nll"] for v in state["valid"]], "o-", label="valid NLL")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("explanation NLL")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = out / ".loss_curves.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out / "loss_curves.png")
