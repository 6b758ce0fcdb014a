"""RecExplainer training: the recommender (stage) -> alignment data from its answers -> the LLM aligned to it.

    explainrec train recexplainer --data ../shared/data/xrec/google --out runs/recx-h variant=hybrid

Run folder: ``recommender/`` (the stage), ``alignment/`` (``{variant}.train.jsonl`` / ``.test.jsonl`` +
``manifest.json``: every row the LLM trains and is tested on, inspectable), ``warmup/`` (the projector warm-up's
``checkpoint/`` and ``train_log.jsonl``, when ``warmup.steps`` > 0), ``checkpoint/``, ``model/`` (merged LLM,
projectors, the recommender's tensors and item names: all an explainer needs), ``train_log.jsonl``, ``curve/``
(``alignment-stepNNNNNN.json`` with ``curve_alignment_rows``).

Both stages run in the shared loop (:func:`explainrec.methods.llm_method.fit`), each with its own checkpoint folder,
so each resumes as any training does: an interrupted warm-up continues where it stopped, a finished one is read
back from its checkpoint, and once the joint stage has a checkpoint the warm-up is not looked at again.
"""
from __future__ import annotations

import json
from pathlib import Path

from explainrec.data.schema import Dataset
from explainrec.methods import llm_method
from explainrec.methods.model_folder import ModelFolderError
from explainrec.methods.recexplainer.config import RecExplainerConfig
from explainrec.methods.recexplainer.modeling import RecExplainerModel
from explainrec.training.loop_utils import seed_everything

ALIGNMENT = "alignment"
WARMUP = "warmup"
NAMES_FILE = "item_names.json"
REC_WEIGHTS = "recommender.safetensors"


def allowed_items(dataset: Dataset, cfg: RecExplainerConfig):
    """The items the alignment questions may be about (None: all): see ``AlignmentSettings.named_items_only``."""
    from explainrec.methods.recexplainer.alignment_data import named_items

    if not cfg.alignment.named_items_only:
        return None
    named = named_items(dataset)
    return None if named.all() or not named.any() else named


def alignment_rows(dataset: Dataset, rec, cfg: RecExplainerConfig, out: Path, *, llm=None, tokenizer=None,
                   echo=print) -> tuple[list[dict], list[dict]]:
    """``(train rows, test rows)`` of the run's variant, written once into ``out/alignment`` (reused on resume)."""
    from explainrec.methods.recexplainer.alignment_data import read_rows, replay_rows, write_alignment_data

    folder = out / ALIGNMENT
    train_file, test_file = folder / f"{cfg.variant}.train.jsonl", folder / f"{cfg.variant}.test.jsonl"
    if not (train_file.exists() and test_file.exists() and (folder / "manifest.json").exists()):
        a = cfg.alignment
        replay = replay_rows(llm, tokenizer, n=a.replay, seed=cfg.seed) if a.replay and llm is not None else None
        manifest = write_alignment_data(dataset, rec, folder, variants=(cfg.variant,), seed=cfg.seed,
                                        max_users=a.max_users, max_items=a.max_items, holdout_frac=a.holdout_frac,
                                        next_items_per_user=a.next_items_per_user, replay=replay,
                                        max_title_chars=a.max_title_chars, allowed=allowed_items(dataset, cfg))
        counts = manifest["variants"][cfg.variant]
        echo(f"[recexplainer] alignment data ({cfg.variant}): {counts['train']} train / {counts['test']} test rows "
             f"from the recommender's answers for {manifest['users']} users about "
             f"{manifest['items_asked_about']} items -> {folder}")
    return read_rows(train_file), read_rows(test_file)


def weigh_tasks(rows: list[dict], weights: dict[str, float], seed: int) -> list[dict]:
    """The train mixture of ``AlignmentSettings.task_weights``: each task's rows ``floor(w)`` times plus a seeded
    share ``w - floor(w)`` of them once more (in file order: the loop shuffles). Why repeat rather than weigh the
    loss: the loop, its batches and its resume stay those of every method, and the file says what was trained on."""
    import numpy as np

    if not weights:
        return rows
    out = []
    for k, task in enumerate(dict.fromkeys(r["task"] for r in rows)):
        mine = [r for r in rows if r["task"] == task]
        w = float(weights.get(task, 1.0))
        whole = int(w)
        extra = np.random.default_rng([seed, k]).permutation(len(mine))[: round((w - whole) * len(mine))]
        out += mine * whole + [mine[i] for i in sorted(extra)]
    return out


def warmup_config(cfg: RecExplainerConfig, n_rows: int) -> RecExplainerConfig:
    """The loop settings of the warm-up: its steps and learning rate, epochs enough to reach them, no time budget
    (it is short; the run's ``max_minutes`` is the joint stage's), no text curve."""
    import math

    per_epoch = max(1, math.ceil(n_rows / (cfg.batch_size * cfg.grad_accum)))
    return cfg.replace(lr=cfg.warmup.lr, max_steps=cfg.warmup.steps, epochs=math.ceil(cfg.warmup.steps / per_epoch),
                       max_minutes=None, curve_pairs=0)


def build_model(cfg: RecExplainerConfig, llm, ids: dict, rec) -> RecExplainerModel:
    """The LLM (+ LoRA) with the two projectors over the recommender's vectors; ``cfg.tuning`` decides what trains."""
    from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
    from explainrec.methods.recexplainer.modeling import configure_trainable
    from explainrec.training.settings import apply_lora

    model = RecExplainerModel.from_recommender(llm, rec, user_token_id=ids[USER_TOKEN], item_token_id=ids[ITEM_TOKEN])
    if cfg.tuning == "lora":
        model.llm = apply_lora(model.llm, cfg.lora)
    configure_trainable(model, cfg.tuning)
    return model


def train(dataset: Dataset, out: Path, cfg: RecExplainerConfig, recommender: Path, *, resume: bool = False,
          progress: bool = True, echo=print, method: str = "recexplainer"):
    """Align an LLM to the recommender in ``recommender`` on ``dataset``; save ``out/model``."""
    from explainrec.methods.recexplainer.alignment_curve import alignment_curve, chain
    from explainrec.methods.recexplainer.alignment_data import item_names
    from explainrec.methods.recexplainer.explainer import recexplainer_explainer
    from explainrec.methods.recexplainer.modeling import configure_trainable, encode_rows, make_collate
    from explainrec.methods.recexplainer.recommender_method import load_recommender
    from explainrec.training.checkpoint import checkpoint_exists

    rec, _, _, _ = load_recommender(recommender)
    seed_everything(cfg.seed)
    llm, tokenizer, ids = llm_method.load_llm_for_training(cfg.model)
    train_rows, test_rows = alignment_rows(dataset, rec, cfg, out, llm=llm, tokenizer=tokenizer, echo=echo)
    seed_everything(cfg.seed)  # the model's init must not depend on whether the data was just built
    model = build_model(cfg, llm, ids, rec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    echo(f"[recexplainer] variant={cfg.variant} tuning={cfg.tuning}: {trainable / 1e6:.2f}M trainable parameters")
    enc = dict(max_prompt_tokens=cfg.max_prompt_tokens, max_target_tokens=cfg.max_target_tokens)
    mixed = weigh_tasks(train_rows, cfg.alignment.task_weights, cfg.seed)
    rows = {"train": encode_rows(tokenizer, mixed, **enc), "valid": encode_rows(tokenizer, test_rows, **enc)}
    names = item_names(dataset, max_title_chars=cfg.alignment.max_title_chars)
    collate = make_collate(tokenizer.pad_token_id)

    def explainer_for(m: RecExplainerModel):
        return recexplainer_explainer(m, tokenizer, rec, names, dataset.users, dataset.items, variant=cfg.variant,
                                      method=method, info=llm_method.memory_info(method, out, cfg, dataset))

    def alignment_points(stage: str):
        return alignment_curve(test_rows, rows["valid"], tokenizer, names, out, rows_per_task=cfg.curve_alignment_rows,
                               collate=collate, batch_size=cfg.batch_size, stage=stage, echo=echo)

    warm = None
    if cfg.warmup.steps and not (resume and checkpoint_exists(out / "checkpoint")):
        warm = warm_up(model, rows, mixed, test_rows, tokenizer, cfg, out, resume=resume, progress=progress,
                       echo=echo, collate=collate, curve=alignment_points(WARMUP))
        configure_trainable(model, cfg.tuning)
        seed_everything(cfg.seed)  # the joint stage's random streams: the same whatever the warm-up's length
    raw, state, acc = llm_method.fit(model, rows, tokenizer, cfg, out, resume=resume, progress=progress, echo=echo,
                                     tag="recexplainer", collate=collate,
                                     curve=chain(llm_method.curve_texts(cfg, dataset, out, explainer_for, echo=echo),
                                                 alignment_points(ALIGNMENT)))
    result = llm_method.summary(state, cfg, trainable=trainable, alignment_rows={"train": len(mixed),
                                                                                 "test": len(test_rows)},
                                **({"warmup": warm} if warm is not None else {}))
    return llm_method.finish(
        acc, result, lambda: save_recexplainer(raw, tokenizer, rec, names, out / "model", cfg, dataset, method),
        lambda: explainer_for(raw))


def warm_up(model: RecExplainerModel, rows: dict, train_rows: list[dict], test_rows: list[dict], tokenizer,
            cfg: RecExplainerConfig, out: Path, *, resume: bool, progress: bool, echo, collate, curve) -> dict:
    """Train the projectors alone (the LLM and its adapters frozen) on the warm-up's tasks, in the shared loop with
    its checkpoint in ``out/warmup``; the model keeps the warmed projectors. Returns the stage's figures."""
    from explainrec.methods.recexplainer.modeling import configure_trainable

    tasks = set(cfg.warmup.tasks)
    train = [e for e, r in zip(rows["train"], train_rows) if r["task"] in tasks and r.get("soft_ids")]
    valid = [e for e, r in zip(rows["valid"], test_rows) if r["task"] in tasks and r.get("soft_ids")]
    if not train:
        from explainrec.config import ConfigError

        raise ConfigError(f"warmup.tasks: the {cfg.variant} alignment data has no {sorted(tasks)} rows with a "
                          "recommender vector to warm the projectors on")
    configure_trainable(model, "projectors")
    wcfg = warmup_config(cfg, len(train))
    echo(f"[recexplainer] projector warm-up: {wcfg.max_steps} steps at lr {wcfg.lr:g} on {len(train)} rows "
         f"({', '.join(sorted(tasks))}), the LLM frozen -> {out / WARMUP}")
    (out / WARMUP).mkdir(parents=True, exist_ok=True)
    _, state, _ = llm_method.fit(model, {"train": train, "valid": valid}, tokenizer, wcfg, out / WARMUP,
                                 resume=resume, progress=progress, echo=echo, tag="recexplainer-warmup",
                                 collate=collate, curve=curve)
    return {"steps": state["step"], "seconds": round(state["seconds"], 1), "rows": len(train),
            "last_valid": state["valid"][-1] if state["valid"] else None}


def save_recexplainer(model: RecExplainerModel, tokenizer, rec, names: list[str], path: Path,
                      cfg: RecExplainerConfig, dataset: Dataset, method: str) -> Path:
    """The merged LLM + projectors + the recommender's tensors + item names: an explainer needs nothing else."""
    from safetensors.torch import save_file

    from explainrec.training.settings import merge_lora

    model.llm = merge_lora(model.llm)
    arch = {"llm_config": model.llm.config.to_dict(), "user_token_id": model.user_token_id,
            "item_token_id": model.item_token_id, "user_table": list(model.user_table.shape),
            "item_table": list(model.item_table.shape), "recommender": rec.config, "variant": cfg.variant}
    def write_more(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in rec.tensors().items()}, str(folder / REC_WEIGHTS))
        (folder / NAMES_FILE).write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")

    return llm_method.save_weights(path, method=method, config=cfg, dataset=dataset, module=model,
                                   tokenizer=tokenizer, arch=arch, write_more=write_more)


def load_recexplainer(folder: Path, manifest: dict):
    """``(model, recommender, item names)`` of a model folder (float32, CPU, eval mode)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from explainrec.methods.recexplainer.recommenders import recommender_from_tensors

    arch = manifest.get("arch") or {}
    try:
        llm = llm_method.rebuild_llm(arch["llm_config"])
        model = RecExplainerModel(llm, torch.zeros(*arch["user_table"]), torch.zeros(*arch["item_table"]),
                                  user_token_id=arch["user_token_id"], item_token_id=arch["item_token_id"])
        rec = recommender_from_tensors(load_file(str(folder / REC_WEIGHTS)), arch["recommender"])
        names = json.loads((folder / NAMES_FILE).read_text(encoding="utf-8"))
    except (KeyError, TypeError, ValueError, OSError, SafetensorError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{folder}: unreadable RecExplainer model folder ({err})") from None
    llm_method.load_weights(folder, model, manifest)
    return model.eval(), rec, names
