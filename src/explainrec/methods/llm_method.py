"""Pieces every LLM method's train and load share, written once: LLM + placeholder tokens, token rows, the
training loop with its summary, and the weights of a model folder.

A method's recipe reads as: ``load_llm_for_training`` -> build its model -> ``fit`` -> ``save_weights``; its
``load`` reads as: ``read_weights`` -> rebuild the model -> ``load_weights`` -> an Explainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
from explainrec.data.schema import Dataset
from explainrec.methods.model_folder import ModelFolderError, write_model_folder

WEIGHTS = "model.safetensors"


def load_llm_for_training(name: str, tokens: tuple[str, ...] = (USER_TOKEN, ITEM_TOKEN)):
    """``(llm, tokenizer, {token: id})``: the LLM (float32 on CPU, bf16 on a capable GPU via accelerate later)
    with the method's placeholder tokens added once."""
    from explainrec.llm.load import load_llm
    from explainrec.llm.soft_tokens import add_placeholder_tokens

    llm, tokenizer = load_llm(name, device="cpu", dtype="float32")
    return llm, tokenizer, add_placeholder_tokens(llm, tokenizer, tokens)


def encode_splits(dataset: Dataset, tokenizer, prompt_fn, cfg, splits=("train", "valid")) -> dict[str, list[dict]]:
    """Token rows (labels on the explanation only) of each split, with the method's prompt."""
    from explainrec.data.collate import encode_examples

    return {s: encode_examples(dataset.split_examples(s), tokenizer, prompt_fn, max_prompt_tokens=cfg.max_prompt_tokens,
                               max_target_tokens=cfg.max_target_tokens) for s in splits}


def fit(model: torch.nn.Module, rows: dict[str, list[dict]], tokenizer, cfg, out: Path, *, resume: bool,
        progress: bool, echo, tag: str, extra: Callable | None = None, acc=None, collate: Callable | None = None,
        curve: Callable[[int, torch.nn.Module], None] | None = None):
    """The shared training loop on ``rows['train']`` (validation on ``rows['valid']``); ``(raw model, state, acc)``.

    ``collate`` defaults to the explanation rows' (:func:`explainrec.data.collate.make_collate`); ``curve`` is
    :func:`curve_texts`'s hook (None: validation NLL only)."""
    from explainrec.data.collate import make_collate
    from explainrec.training.loop import make_accelerator, run_loop

    acc = acc or make_accelerator(cfg.grad_accum)
    if hasattr(model, "targets_only"):  # the method's model computes its loss through explainrec.llm.loss
        model.targets_only = getattr(cfg, "target_logits_only", True)
    raw, state = run_loop(model, rows["train"], rows["valid"], collate or make_collate(tokenizer.pad_token_id), cfg,
                          out, acc=acc, extra=extra, resume=resume, progress_bar=progress, echo=echo, tag=tag,
                          after_validation=curve)
    return raw, state, acc


CURVE_FOLDER = "curve"


def curve_file(out: Path, step: int) -> Path:
    """Where the learning-curve explanations of optimizer step ``step`` are written."""
    return Path(out) / CURVE_FOLDER / f"step{step:06d}.jsonl"


def curve_texts(cfg, dataset: Dataset, out: Path, explainer_for: Callable[[torch.nn.Module], object], *, echo=print):
    """The ``after_validation`` hook that explains the first ``cfg.curve_pairs`` valid pairs (greedy, float32) with
    the model as it is at that step, into ``RUN/curve/stepNNNNNN.jsonl`` (prediction rows, like a test split's).

    Why texts and not scores: overlap *and* specificity against training steps are what a learning curve must show
    (does the text become a template as ROUGE-L rises?), and any metric can be computed from the files later.
    None when ``cfg.curve_pairs`` is 0. ``explainer_for(model)`` is the method's explainer on the in-memory model.
    """
    pairs = getattr(cfg, "curve_pairs", 0)
    if not pairs or not dataset.split_examples("valid"):
        return None

    def write(model: torch.nn.Module, step: int) -> None:
        import time

        from explainrec.llm.decoding import GenerationConfig
        from explainrec.methods.explain import explain_split

        path = curve_file(out, step)
        if path.exists():
            return
        was_training = model.training
        start = time.perf_counter()
        # the training run's random streams must not depend on whether a curve was drawn
        with torch.random.fork_rng(devices=[]):
            explain_split(explainer_for(model), dataset, "valid", limit=pairs, out=path, progress=False,
                          generation=GenerationConfig(batch_size=cfg.curve_batch_size,
                                                      max_new_tokens=cfg.curve_max_new_tokens))
        model.train(was_training)
        echo(f"[curve] step {step}: {pairs} valid pairs explained in {time.perf_counter() - start:.0f}s -> {path}")

    return write


def summary(state: dict, cfg, **more):
    """The :class:`~explainrec.methods.base.TrainSummary` of the shared loop's final ``state``; ``more``: the
    method's own figures (trainable parameters, its stage's headline numbers)."""
    from explainrec.methods.base import TrainSummary

    return TrainSummary(seconds=state["seconds"], steps=state["step"], epochs=state["epoch"], config=cfg.to_dict(),
                        metrics={"budget_hit": state["budget_hit"],
                                 "last_valid": state["valid"][-1] if state["valid"] else None, **more})


def finish(acc, summary_, save: Callable[[], None], explainer: Callable[[], object]):
    """Main process writes the model folder; every process waits for it. Returns
    :class:`~explainrec.methods.base.Trained` with ``explainer()`` (built after saving: saving merges LoRA)."""
    from explainrec.methods.base import Trained

    if acc.is_main_process:
        save()
    acc.wait_for_everyone()
    return Trained(summary_, explainer() if acc.is_main_process else None)


# ---------------------------------------------------------------------------------------------------- weights


def save_weights(path: Path, *, method: str, config, dataset: Dataset, module: torch.nn.Module, tokenizer=None,
                 keep: Callable[[str], bool] | None = None, arch: dict | None = None,
                 write_more: Callable[[Path], None] | None = None) -> Path:
    """A model folder with ``module``'s state dict (filtered by ``keep``); tensors sharing storage are stored once.

    Tied weights (a tied LM head) are recorded in ``arch["tied"]`` as ``{dropped key: kept key}`` and restored on load.
    ``write_more(folder)`` adds method-specific files inside the folder before it is moved into place.
    """
    from safetensors.torch import save_file

    state, tied, seen = {}, {}, {}
    for key, value in module.state_dict().items():
        if keep is not None and not keep(key):
            continue
        ptr = (value.data_ptr(), tuple(value.shape), value.dtype)
        if value.numel() and ptr in seen:
            tied[key] = seen[ptr]
            continue
        seen[ptr] = key
        state[key] = value.detach().to("cpu").contiguous().clone()
    with write_model_folder(path, method=method, config=config, dataset=dataset,
                            arch={**(arch or {}), "tied": tied}) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if write_more is not None:
            write_more(tmp)
    return Path(path)


def load_weights(folder: Path, module: torch.nn.Module, manifest: dict, *,
                 may_miss: Callable[[str], bool] = lambda k: False) -> None:
    """Load ``folder``'s weights into ``module``; keys that ``may_miss`` allows (e.g. a frozen LLM rebuilt from
    its name) may be absent, anything else missing or unexpected is an error naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = folder / WEIGHTS
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ModelFolderError(f"{file}: cannot read safetensors ({err})") from None
    tied = (manifest.get("arch") or {}).get("tied") or {}
    for dropped, kept in tied.items():
        if kept in state:
            state[dropped] = state[kept]
    current = module.state_dict()
    missing = [k for k in current if k not in state and not may_miss(k)]
    unexpected = [k for k in state if k not in current]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(current[k].shape)}" for k in state
              if k in current and state[k].shape != current[k].shape]
    if missing or unexpected or shapes:
        raise ModelFolderError(f"{file}: does not fit the {manifest.get('method')} model described in explainrec.json "
                               f"(missing {missing[:4]}, unexpected {unexpected[:4]}, shapes {shapes[:2]})")
    module.load_state_dict(state, strict=False)
    for dropped, kept in tied.items():  # re-tie: one Parameter again, as before saving
        parent, _, leaf = dropped.rpartition(".")
        src_parent, _, src_leaf = kept.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        source = module.get_submodule(src_parent) if src_parent else module
        if isinstance(getattr(owner, leaf, None), torch.nn.Parameter):
            setattr(owner, leaf, getattr(source, src_leaf))


def rebuild_llm(llm_config: dict):
    """An LLM with random weights from a saved ``config.to_dict()`` (its weights come from the model folder)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(llm_config)
    try:
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    except (KeyError, ValueError) as err:
        raise ModelFolderError(f"unreadable LLM description in explainrec.json ({err})") from None
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{folder}: cannot read the tokenizer files ({err})") from None


def place(model: torch.nn.Module, device=None, dtype=None) -> torch.nn.Module:
    """Move a loaded model for inference: the caller's device (default CUDA when present) and dtype (float32 on
    CPU, bf16 on a capable GPU)."""
    from explainrec.llm.load import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return model.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()


def run_info(method: str, folder: Path, manifest: dict) -> dict:
    """What an explainer reports about itself (the server's /v1/model, logs)."""
    config = manifest.get("config") or {}
    return {"method": method, "model": config.get("model"), "config": config, "data": manifest.get("data"),
            "folder": str(folder), "explainrec_version": manifest.get("explainrec_version")}


def memory_info(method: str, out: Path, cfg, dataset: Dataset) -> dict:
    """:func:`run_info` for a model still in memory right after training (what model/ now holds)."""
    from explainrec.methods.model_folder import data_record

    return {"method": method, "model": getattr(cfg, "model", None), "config": cfg.to_dict(),
            "data": data_record(dataset), "folder": str(out / "model")}


def model_ids(raw: list[str], id_map, device=None) -> torch.Tensor:
    """Raw ids -> the model's rows; ids it never saw become -1 (its cold-start row)."""
    return torch.tensor(id_map.encode_all(raw, default=-1), dtype=torch.long, device=device)


def pair_ids(model: torch.nn.Module, pairs, users, items) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user, item)`` rows of ``pairs`` on the model's device (-1 for ids it never saw)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    device = tensor.device if tensor is not None else "cpu"
    return model_ids([p.user for p in pairs], users, device), model_ids([p.item for p in pairs], items, device)
