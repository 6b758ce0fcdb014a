"""Registry entry ``mmp-graph``: MMP-Refer's steps 1-4 -- item content in two views (or a feature file), the
RQ-VAE codes, user/item vectors in one space and the retrieval paths of every explained pair -- trained once per
data and settings, and shared by every MMP-Refer run that asks for the same (the ablations of the LLM part reuse
it; "w/o Multi-SID" and the degree-only cost ask for their own).

    explainrec train mmp-graph --data ../shared/data/xrec/google --out runs/mmp-graph

Run folder: ``model/`` (``graph.safetensors``: content views, RQ-VAE, vectors, paths and the train graph; id maps),
``metrics.json`` (codebook usage and collisions, the vectors' validation Recall/NDCG, path coverage and timings).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explainrec.io import atomic_write_json
from explainrec.methods.base import Method, Trained, TrainSummary
from explainrec.methods.mmp_refer.config import MMPGraphConfig
from explainrec.methods.model_folder import ModelFolderError, open_model_folder, read_id_maps, write_model_folder

WEIGHTS = "graph.safetensors"


@dataclass
class GraphStage:
    """What the LLM part needs from steps 1-4 (all on CPU)."""

    vectors: object  # UserItemVectors
    paths: object  # PathSet
    graph: object  # TrainGraph
    config: MMPGraphConfig
    metrics: dict


class MMPGraphStage(Method):
    name = "mmp-graph"
    description = ("MMP-Refer steps 1-4: two item views, RQ-VAE codes, user/item vectors, retrieval paths "
                   "(no explanations)")
    config_class = MMPGraphConfig
    explains = False
    preset_folder = "configs/mmp-graph"

    def train(self, dataset, out: Path, config: MMPGraphConfig, *, stages, resume: bool, progress: bool,
              echo) -> Trained:
        import torch
        from safetensors.torch import save_file

        from explainrec.methods.mmp_refer.content import item_content
        from explainrec.methods.mmp_refer.paths import TrainGraph, find_paths
        from explainrec.methods.mmp_refer.rqvae import train_rqvae
        from explainrec.methods.mmp_refer.sequence import train_vectors

        cfg = config.seeded()
        t0 = time.perf_counter()
        content = item_content(dataset, cfg.content, device=None, progress=progress)
        echo(f"[mmp-graph] content: {content.source} ({time.perf_counter() - t0:.0f} s)")
        rq = train_rqvae(content, cfg.rqvae, progress=progress, echo=echo) if cfg.vectors.use_quantised else None
        vectors = train_vectors(dataset, content, rq, cfg.vectors, progress=progress, echo=echo)
        graph = TrainGraph.from_dataset(dataset)
        pairs = sorted({(e.user, e.item) for e in dataset.examples})
        paths = find_paths(graph, pairs, cfg.paths, user_vectors=vectors.user, item_vectors=vectors.item,
                           progress=progress)
        metrics = {"content": {"source": content.source, **content.report},
                   "rqvae": rq.report if rq is not None else None, "vectors": vectors.report,
                   "paths": paths.stats(), "seconds": round(time.perf_counter() - t0, 1)}
        tensors = {f"vectors.{k}": v for k, v in vectors.tensors().items()}
        tensors.update({f"paths.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in paths.to_arrays().items()})
        tensors["graph.users"], tensors["graph.items"] = (torch.from_numpy(a.astype(np.int64)) for a in
                                                         _edges(dataset))
        if rq is not None:
            tensors.update({f"rqvae.{k}": v for k, v in rq.tensors().items()})
        tensors.update({f"content.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                        content.to_arrays().items()})
        atomic_write_json(out / "metrics.json", metrics)
        atomic_write_json(out / "history.json", [{"part": "rqvae", **r} for r in (rq.history if rq else [])]
                          + [{"part": "vectors", **r} for r in vectors.history])
        meta = {"vectors": vectors.meta(), "paths": paths.config, "rqvae": None if rq is None else
                {"report": rq.report, "history": rq.history, "config": rq.config}, "content": content.source}
        with write_model_folder(out / "model", method=self.name, config=config, dataset=dataset,
                                arch=json.loads(json.dumps(meta, default=float)), extra={"metrics": metrics}) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        p = metrics["paths"]
        echo(f"[mmp-graph] paths for {p['pairs']} pairs: {p['mean_paths']:.2f} per pair, {p['pairs_without_paths']} "
             f"without, {p['mean_hops']:.2f} hops, {p['seconds']:.0f} s")
        return Trained(TrainSummary(seconds=metrics["seconds"], metrics=metrics, config=config.to_dict()))


def _edges(dataset) -> tuple[np.ndarray, np.ndarray]:
    train = dataset.interactions.of_split("train")
    return np.asarray(train.user), np.asarray(train.item)


def load_graph_stage(path: str | Path) -> GraphStage:
    """The vectors, paths and train graph of an ``mmp-graph`` run or stage folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from explainrec.methods.mmp_refer.paths import PathSet, TrainGraph
    from explainrec.methods.mmp_refer.sequence import UserItemVectors

    folder, manifest = open_model_folder(path, expect=MMPGraphStage.name)
    arch = manifest.get("arch") or {}
    try:
        tensors = load_file(str(folder / WEIGHTS))
        part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        vectors = UserItemVectors.from_tensors(part("vectors."), arch["vectors"])
        users, items = read_id_maps(folder)
        graph = TrainGraph(tensors["graph.users"].numpy(), tensors["graph.items"].numpy(), len(users), len(items))
        paths = PathSet.from_arrays({k: v.numpy() for k, v in part("paths.").items()}, len(users), len(items),
                                    arch["paths"])
        config = MMPGraphConfig.from_dict(manifest["config"], f"{folder}/explainrec.json config")
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
        raise ModelFolderError(f"{folder}: unreadable mmp-graph stage ({err})") from None
    return GraphStage(vectors=vectors, paths=paths, graph=graph, config=config, metrics=manifest.get("metrics") or {})
