"""MMP-Refer training: the ``mmp-graph`` stage (content, codes, vectors, paths) -> the LLM with the path text and
the graph soft prompt -> the model folder.

    explainrec train mmp-refer --data ../shared/data/xrec/google --out runs/mmp-google

The model folder holds the LLM (merged LoRA) or only the graph prompt when the LLM stayed frozen, the vectors, the
train graph, every explained pair's paths and the node texts: an explainer needs nothing else, and a pair the
stage never saw gets its paths computed on the fly.
"""
from __future__ import annotations

import json
from pathlib import Path

from explainrec.data.schema import Dataset
from explainrec.methods import llm_method
from explainrec.methods.mmp_refer.config import MMPReferConfig
from explainrec.methods.model_folder import ModelFolderError

GRAPH_FILE = "graph.safetensors"
TEXTS_FILE = "node_texts.json"


def build_model(cfg: MMPReferConfig, llm, graph_token_id: int, vectors):
    """LLM (+ LoRA) + the graph soft prompt over the stage's vectors."""
    from explainrec.methods.mmp_refer.modeling import MMPReferModel
    from explainrec.training.settings import apply_lora

    model = MMPReferModel.from_vectors(llm, vectors, graph_token_id=graph_token_id, k=cfg.k, cfg=cfg.graph,
                                       freeze_llm=True)
    model.use_graph = cfg.graph_prompt
    if cfg.lora.r > 0:
        model.llm = apply_lora(model.llm, cfg.lora)
        for n, p in model.llm.named_parameters():
            p.requires_grad_("lora_" in n)
    if not cfg.graph_prompt:
        for p in model.graph_prompt.parameters():
            p.requires_grad_(False)
    return model


def train(dataset: Dataset, out: Path, cfg: MMPReferConfig, graph_stage: Path, *, resume: bool = False,
          progress: bool = True, echo=print, method: str = "mmp-refer"):
    """Train on ``dataset``'s train split over the stage in ``graph_stage``; save ``out/model``."""
    from explainrec.methods.mmp_refer.batching import encode_rows, make_collate
    from explainrec.methods.mmp_refer.explainer import mmp_explainer
    from explainrec.methods.mmp_refer.graph_method import load_graph_stage
    from explainrec.methods.mmp_refer.modeling import GRAPH_TOKEN
    from explainrec.methods.mmp_refer.prompting import NodeTexts, prompt_fn
    from explainrec.training.loop_utils import seed_everything

    stage = load_graph_stage(graph_stage)
    texts = NodeTexts.from_dataset(dataset)
    seed_everything(cfg.seed)
    llm, tokenizer, ids = llm_method.load_llm_for_training(cfg.model, tokens=(GRAPH_TOKEN,))
    model = build_model(cfg, llm, ids[GRAPH_TOKEN], stage.vectors)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    echo(f"[mmp-refer] k={cfg.k} {cfg.graph.gnn} graph prompt={cfg.graph_prompt} LoRA r={cfg.lora.r}: "
         f"{trainable / 1e6:.2f}M trainable parameters")
    width = stage.config.paths.max_hops + 1
    rows = {s: encode_rows(dataset.split_examples(s), tokenizer, prompt_fn(cfg, texts), stage.paths, stage.graph,
                           k=cfg.k, width=width, max_neighbours=cfg.graph.max_neighbours, seed=cfg.graph.sample_seed,
                           max_prompt_tokens=cfg.max_prompt_tokens, max_target_tokens=cfg.max_target_tokens)
            for s in ("train", "valid")}

    def explainer_for(m):
        return mmp_explainer(m, tokenizer, stage, texts, dataset.users, dataset.items, cfg=cfg, method=method,
                             info=llm_method.memory_info(method, out, cfg, dataset))

    raw, state, acc = llm_method.fit(model, rows, tokenizer, cfg, out, resume=resume, progress=progress, echo=echo,
                                     tag="mmp-refer", collate=make_collate(tokenizer.pad_token_id),
                                     curve=llm_method.curve_texts(cfg, dataset, out, explainer_for, echo=echo))
    result = llm_method.summary(state, cfg, trainable=trainable, paths=stage.metrics.get("paths"))
    return llm_method.finish(
        acc, result, lambda: save_mmp(raw, tokenizer, stage, texts, out / "model", cfg, dataset, method),
        lambda: explainer_for(raw))


def save_mmp(model, tokenizer, stage, texts, path: Path, cfg: MMPReferConfig, dataset: Dataset, method: str) -> Path:
    """The model (merged LLM only when LoRA trained it) + the stage's vectors, paths and graph + node texts."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from explainrec.training.settings import merge_lora

    model.llm = merge_lora(model.llm)
    llm_saved = cfg.lora.r > 0
    arch = {"llm_config": model.llm.config.to_dict(), "llm_saved": llm_saved, "graph_token_id": model.graph_token_id,
            "n_users": stage.graph.n_users, "n_items": stage.graph.n_items,
            "node_vectors": list(stage.vectors.node_table().shape), "paths": stage.paths.config,
            "vectors": stage.vectors.meta(),
            "stage": stage.config.to_dict()}

    def write_more(folder: Path) -> None:
        tensors = {f"vectors.{k}": v for k, v in stage.vectors.tensors().items()}
        tensors.update({f"paths.{k}": torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in stage.paths.to_arrays().items()})
        rows = np.repeat(np.arange(stage.graph.n_nodes), np.diff(stage.graph.indptr))
        keep = rows < stage.graph.n_users  # user -> item half of the symmetric CSR: each edge once
        tensors["graph.users"] = torch.from_numpy(rows[keep].astype(np.int64))
        tensors["graph.items"] = torch.from_numpy(stage.graph.indices[keep].astype(np.int64) - stage.graph.n_users)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / GRAPH_FILE))
        (folder / TEXTS_FILE).write_text(json.dumps(texts.__dict__, ensure_ascii=False), encoding="utf-8")

    return llm_method.save_weights(path, method=method, config=cfg, dataset=dataset, module=model, tokenizer=tokenizer,
                                   keep=lambda k: llm_saved or not k.startswith("llm."), arch=arch,
                                   write_more=write_more)


def load_mmp(folder: Path, manifest: dict):
    """``(model, stage, node texts)`` of a model folder (float32, CPU, eval mode)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from explainrec.llm.load import grow_embeddings, load_llm
    from explainrec.methods.mmp_refer.config import MMPGraphConfig
    from explainrec.methods.mmp_refer.graph_method import GraphStage
    from explainrec.methods.mmp_refer.modeling import MMPReferModel
    from explainrec.methods.mmp_refer.paths import PathSet, TrainGraph
    from explainrec.methods.mmp_refer.prompting import NodeTexts
    from explainrec.methods.mmp_refer.sequence import UserItemVectors

    arch = manifest.get("arch") or {}
    cfg = MMPReferConfig.from_dict(manifest.get("config"), f"{folder}/explainrec.json config")
    try:
        tensors = load_file(str(folder / GRAPH_FILE))
        part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        vectors = UserItemVectors.from_tensors(part("vectors."), arch["vectors"])
        graph = TrainGraph(tensors["graph.users"].numpy(), tensors["graph.items"].numpy(), arch["n_users"],
                           arch["n_items"])
        paths = PathSet.from_arrays({k: v.numpy() for k, v in part("paths.").items()}, arch["n_users"],
                                    arch["n_items"], arch["paths"])
        texts = NodeTexts(**json.loads((folder / TEXTS_FILE).read_text(encoding="utf-8")))
        if arch["llm_saved"]:
            llm = llm_method.rebuild_llm(arch["llm_config"])
        else:
            llm, _ = load_llm(cfg.model, device="cpu", dtype="float32")
            grow_embeddings(llm, arch["llm_config"]["vocab_size"])
        model = MMPReferModel(llm, torch.zeros(*arch["node_vectors"]), arch["n_users"],
                              graph_token_id=arch["graph_token_id"], k=cfg.k, cfg=cfg.graph)
        model.use_graph = cfg.graph_prompt
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{folder}: unreadable MMP-Refer model folder ({err})") from None
    llm_method.load_weights(folder, model, manifest, may_miss=lambda k: not arch["llm_saved"] and k.startswith("llm."))
    stage = GraphStage(vectors=vectors, paths=paths, graph=graph,
                       config=MMPGraphConfig.from_dict(arch["stage"], "stage"), metrics={})
    return model.eval(), stage, texts
