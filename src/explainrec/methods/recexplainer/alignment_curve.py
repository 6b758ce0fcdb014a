"""Alignment learning curves: at every validation, how far the LLM follows its recommender on a small fixed sample
of held-out alignment rows, into ``RUN/curve/alignment-stepNNNNNN.json`` (``warmup-stepNNNNNN.json`` during the
projector warm-up).

Why these three figures: the training loss falls while the model can still answer at chance (the loop's own
validation NLL reads only the first held-out rows, all Task 1), so a curve must show the answers themselves --
Task 3 accuracy on balanced Yes/No pairs (the decision an explanation states), Task 1 HR@5 (what the recommender
would suggest) -- beside the NLL of every held-out task, to say whether a flat accuracy is a model that learns
nothing or one that learns the form first. The metrics are :mod:`alignment_eval`'s, on the same rows every time.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from explainrec.methods.llm_method import CURVE_FOLDER

HELD_OUT_TASKS = ("next_item", "ranking", "interest", "history", "summary")


def alignment_curve_file(out: Path, step: int, stage: str = "alignment") -> Path:
    """Where the alignment figures of optimizer step ``step`` of ``stage`` (alignment / warmup) are written."""
    return Path(out) / CURVE_FOLDER / f"{stage}-step{step:06d}.json"


def curve_sample(test_rows: Sequence[dict], n: int) -> list[dict]:
    """The first ``n`` held-out rows of every task; Task 3 in whole Yes/No pairs (``n`` rounded up to even), so
    its accuracy stays on balanced pairs and a model that always says Yes scores 0.5."""
    out = []
    for task in HELD_OUT_TASKS:
        rows = [r for r in test_rows if r["task"] == task and r.get("split", "test") == "test"]
        out += rows[: n + n % 2] if task == "interest" else rows[:n]
    return out


def decision_figures(model, tokenizer, rows: Sequence[dict], *, batch_size: int = 8) -> dict:
    """Task 3 on the sample's interest rows: accuracy and Yes rate (:func:`alignment_eval.interest_accuracy`'s
    reading of the Yes/No next-token logits) and the decision loss, -log p(the recommender's answer | Yes or No):
    the part of the Task 3 loss a projector can move (the rest is the answer's form, which LoRA learns)."""
    from explainrec.methods.recexplainer.alignment_data import YES
    from explainrec.methods.recexplainer.alignment_eval import (next_token_logits, prompts_of, yes_no_from_logits,
                                                                yes_no_token_ids)

    rows = [r for r in rows if r["task"] == "interest"]
    if not rows:
        return {"accuracy": float("nan"), "yes_rate": float("nan"), "decision_nll": float("nan"), "n": 0}
    yes_id, no_id = yes_no_token_ids(tokenizer)
    logits = next_token_logits(model, tokenizer, prompts_of(tokenizer, rows), [r["soft_ids"] for r in rows],
                               batch_size=batch_size)
    pred = yes_no_from_logits(logits, yes_id, no_id)
    truth = torch.tensor([r["target"] == YES for r in rows])
    pair = torch.log_softmax(logits[:, [yes_id, no_id]], -1)  # (N, 2)
    nll = -torch.where(truth, pair[:, 0], pair[:, 1])
    return {"accuracy": float((pred == truth).float().mean()), "yes_rate": float(pred.float().mean()),
            "decision_nll": float(nll.mean()), "n": len(rows)}


@torch.no_grad()
def nll_by_task(model, rows: Sequence[dict], collate: Callable, batch_size: int) -> dict[str, float]:
    """Mean answer NLL per task (each batch one task, its token-mean loss weighted by its rows) and ``all``."""
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        for lo in range(0, len(mine), batch_size):
            batch = collate(mine[lo: lo + batch_size])
            out = model(**{k: v.to(device) for k, v in batch.items()})
            size = batch["input_ids"].shape[0]
            sums[task] = sums.get(task, 0.0) + float(out.loss) * size
            counts[task] = counts.get(task, 0) + size
    result = {t: sums[t] / counts[t] for t in sums}
    if counts:
        result["all"] = sum(sums.values()) / sum(counts.values())
    return result


def _plain(value):
    """JSON without NaN (a task absent from the sample reads null)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def alignment_curve(test_rows: Sequence[dict], encoded: Sequence[dict] | None, tokenizer, names: Sequence[str],
                    out: Path, *, rows_per_task: int, collate: Callable, batch_size: int = 8, stage: str = "alignment",
                    echo=print):
    """The ``after_validation`` hook of :func:`explainrec.training.loop.run_loop` (None when ``rows_per_task`` is 0).

    ``test_rows``: the held-out alignment rows; ``encoded``: the same rows as :func:`modeling.encode_rows` gave
    them (index for index), for the NLL. The sample is fixed at construction, so every point of a run, and every
    run of one seed and data, scores the same rows. Idempotent (an existing file is kept) and leaves the training's
    random streams and the model's mode as it found them, as the loop asks.
    """
    from explainrec.io import atomic_write_json
    from explainrec.methods.recexplainer.alignment_eval import next_item_metrics

    if not rows_per_task:
        return None
    sample = curve_sample(test_rows, rows_per_task)
    if not sample:
        return None
    if encoded is None:
        from explainrec.methods.recexplainer.modeling import encode_rows

        encoded = encode_rows(tokenizer, sample)
    else:
        position = {id(r): k for k, r in enumerate(test_rows)}
        encoded = [encoded[position[id(r)]] for r in sample]

    def write(model: torch.nn.Module, step: int) -> None:
        path = alignment_curve_file(out, step, stage)
        if path.exists():
            return
        start = time.perf_counter()
        was = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            interest = decision_figures(model, tokenizer, sample, batch_size=batch_size)
            first = [r for r in sample if r["task"] == "next_item"]
            next_item = next_item_metrics(model, tokenizer, first, names) if first else {"hr@5": float("nan"), "n": 0}
            nll = nll_by_task(model, encoded, collate, batch_size)
        model.train(was)
        record = {"step": step, "stage": stage, "task3_accuracy": interest["accuracy"],
                  "task1_hr@5": next_item["hr@5"], "alignment_nll": nll.get("all", float("nan")),
                  "interest": interest, "next_item": next_item, "nll_by_task": nll,
                  "seconds": round(time.perf_counter() - start, 1)}
        atomic_write_json(path, _plain(record))
        echo(f"[curve] {stage} step {step}: Task 3 accuracy {interest['accuracy']:.3f} (n {interest['n']}), "
             f"Task 1 HR@5 {next_item['hr@5']:.3f}, alignment NLL {record['alignment_nll']:.3f} "
             f"({record['seconds']:.0f}s) -> {path}")

    return write


def chain(*hooks):
    """One ``after_validation`` hook running each given one in turn (None ones skipped; None when none is left)."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None

    def run(model: torch.nn.Module, step: int) -> None:
        for hook in live:
            hook(model, step)

    return run
