"""Registry entry ``vae-gmm``: GaVaMoE's stage 1 on its own, and the stage GaVaMoE runs train first.

    explainrec train vae-gmm --data synthetic --out runs/stage1 clusters=4

Run folder: ``model/`` (VAE-GMM weights + id maps), ``checkpoint/`` (last epoch; ``--resume``), ``clusters.csv``
(the cluster of every interaction and explained pair), ``metrics.json`` (cluster sizes and warnings, rating
RMSE/MAE, AUC, NMI against the synthetic user types), ``history.json``, ``latent.png``, ``loss.png``.
"""
from __future__ import annotations

import time
from pathlib import Path

from explainrec.io import atomic_write_json
from explainrec.methods.base import Method, Trained, TrainSummary
from explainrec.methods.gavamoe.config import VaeGmmConfig
from explainrec.methods.model_folder import ModelFolderError, open_model_folder, read_id_maps


class VaeGmmStage(Method):
    name = "vae-gmm"
    description = "GaVaMoE stage 1 alone: VAE-GMM rating reconstruction and pair clustering (no explanations)"
    config_class = VaeGmmConfig
    explains = False
    preset_folder = "configs/vae-gmm"
    headline = ("cluster_sizes", "test_auc")

    def check(self, dataset, config: VaeGmmConfig) -> None:
        from explainrec.methods.gavamoe.stage1_train import check_data

        check_data(dataset, config)

    def train(self, dataset, out: Path, config: VaeGmmConfig, *, stages, resume: bool, progress: bool, echo) -> Trained:
        from explainrec.methods.gavamoe.stage1_eval import evaluate_and_write
        from explainrec.methods.gavamoe.stage1_train import train_vae_gmm
        from explainrec.methods.llm_method import save_weights

        t0 = time.perf_counter()
        model, data, state = train_vae_gmm(dataset, out, config, resume=resume, progress=progress, echo=echo)
        metrics = evaluate_and_write(model, dataset, data, config, out, state)
        seconds = time.perf_counter() - t0
        atomic_write_json(out / "metrics.json", metrics)
        atomic_write_json(out / "history.json", state["history"])
        save_weights(out / "model", method=self.name, config=config, dataset=dataset, module=model,
                     arch={"vae": model.config})  # last: a stage with a model/ is a finished stage
        echo(f"[vae-gmm] cluster sizes {metrics['cluster_sizes']}" + "".join(f"\n[vae-gmm] warning: {w}" for w in metrics["warnings"]))
        return Trained(TrainSummary(seconds=seconds, epochs=metrics["epochs_run"], metrics=metrics,
                                    config=config.to_dict()))


def load_vae_gmm(path: str | Path, *, device="cpu"):
    """``(model, users, items)`` of a vae-gmm run or stage folder (model in eval mode)."""
    from explainrec.methods.gavamoe.vae_gmm import VaeGmm
    from explainrec.methods.llm_method import load_weights

    folder, manifest = open_model_folder(path, expect=VaeGmmStage.name)
    try:
        model = VaeGmm(**manifest["arch"]["vae"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{folder}: unreadable VAE-GMM description in explainrec.json ({err})") from None
    load_weights(folder, model, manifest)
    users, items = read_id_maps(folder)
    if len(users) != model.n_users or len(items) != model.n_items:
        raise ModelFolderError(f"{folder}: {len(users)} users / {len(items)} items in the id maps, but the model has "
                               f"{model.n_users} / {model.n_items}")
    return model.to(device).eval(), users, items
