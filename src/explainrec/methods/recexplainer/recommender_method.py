"""Registry entry ``recommender``: the recommender RecExplainer explains, trained on its own or as the stage every
RecExplainer run trains first (so the three variants of a bench explain one and the same recommender).

    explainrec train recommender --data synthetic:ordered=1 --out runs/sasrec kind=sasrec

Run folder: ``model/`` (the recommender's tensors: vectors, weights, the train histories; id maps),
``metrics.json`` (full-ranking HR/Recall/NDCG@10/20 on the test split, beside popularity), ``history.json``.
"""
from __future__ import annotations

import time
from pathlib import Path

from explainrec.io import atomic_write_json
from explainrec.methods.base import Method, Trained, TrainSummary
from explainrec.methods.model_folder import ModelFolderError, open_model_folder, read_id_maps, write_model_folder
from explainrec.methods.recexplainer.config import RecommenderConfig

WEIGHTS = "recommender.safetensors"


class RecommenderStage(Method):
    name = "recommender"
    description = "the recommender RecExplainer explains: SASRec, MF (BPR) or LightGCN, frozen (no explanations)"
    config_class = RecommenderConfig
    explains = False
    preset_folder = "configs/recommender"

    def train(self, dataset, out: Path, config: RecommenderConfig, *, stages, resume: bool, progress: bool,
              echo) -> Trained:
        from safetensors.torch import save_file

        from explainrec.methods.recexplainer.recommenders import evaluate_recommender, fit_recommender

        t0 = time.perf_counter()
        rec = fit_recommender(dataset, config.kind, seed=config.seed, progress=progress, echo=echo,
                              **config.trainer_options())
        seconds = time.perf_counter() - t0
        metrics = {"kind": rec.kind, **evaluate_recommender(rec, dataset, "test")}
        atomic_write_json(out / "metrics.json", metrics)
        atomic_write_json(out / "history.json", rec.train_log)
        with write_model_folder(out / "model", method=self.name, config=config, dataset=dataset,
                                arch={"recommender": rec.config}, extra={"metrics": metrics}) as tmp:
            save_file({k: v.contiguous() for k, v in rec.tensors().items()}, str(tmp / WEIGHTS))
        echo(f"[recommender] {rec.kind}: " + ", ".join(
            f"{who} HR@10 {m.get('hr@10', float('nan')):.4f}" for who, m in metrics.items() if isinstance(m, dict)))
        return Trained(TrainSummary(seconds=seconds, epochs=len(rec.train_log), metrics=metrics,
                                    config=config.to_dict()))


def load_recommender(path: str | Path):
    """``(recommender, users, items, manifest)`` of a recommender run or stage folder (frozen, eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from explainrec.methods.recexplainer.recommenders import recommender_from_tensors

    folder, manifest = open_model_folder(path, expect=RecommenderStage.name)
    try:
        rec = recommender_from_tensors(load_file(str(folder / WEIGHTS)), manifest["arch"]["recommender"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as err:
        raise ModelFolderError(f"{folder / WEIGHTS}: does not hold the recommender described in explainrec.json "
                               f"({err})") from None
    users, items = read_id_maps(folder)
    return rec, users, items, manifest
