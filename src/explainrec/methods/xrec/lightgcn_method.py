"""Registry entry ``lightgcn``: XRec's collaborative tokenizer on its own, and the stage XRec runs train first.

    explainrec train lightgcn --data ../shared/data/xrec/google --out runs/lightgcn

Run folder: ``model/`` (user/item embeddings + known masks + id maps), ``checkpoint/`` (last epoch; ``--resume``),
``metrics.json`` (test Recall@k / NDCG@k, timings), ``history.json`` (loss per epoch).
"""
from __future__ import annotations

from pathlib import Path

from explainrec.io import atomic_write_json
from explainrec.methods.base import Method, Trained, TrainSummary
from explainrec.methods.model_folder import ModelFolderError, open_model_folder, read_id_maps, write_model_folder
from explainrec.methods.xrec.config import LightGCNConfig

WEIGHTS = "embeddings.safetensors"


class LightGCNStage(Method):
    name = "lightgcn"
    description = "LightGCN + BPR user/item embeddings of the train graph (XRec's stage 1; no explanations)"
    config_class = LightGCNConfig
    explains = False
    preset_folder = "configs/lightgcn"

    def train(self, dataset, out: Path, config: LightGCNConfig, *, stages, resume: bool, progress: bool, echo) -> Trained:
        from safetensors.torch import save_file

        from explainrec.modules.lightgcn import train_lightgcn

        echo(f"[lightgcn] {len(dataset.interactions.of_split('train'))} train edges")
        result = train_lightgcn(dataset, **config.to_dict(), progress=progress, echo=echo,
                                checkpoint_dir=out / "checkpoint", resume=resume)
        atomic_write_json(out / "metrics.json", result.metrics)
        atomic_write_json(out / "history.json", result.history)
        with write_model_folder(out / "model", method=self.name, config=config, dataset=dataset,
                                extra={"metrics": result.metrics}) as tmp:
            save_file(result.tensors(), str(tmp / WEIGHTS))
        echo(f"[lightgcn] test metrics: {result.metrics}")
        return Trained(TrainSummary(seconds=result.metrics["train_seconds"], epochs=result.metrics["epochs_done"],
                                    metrics=result.metrics, config=config.to_dict()))


def load_lightgcn(path: str | Path):
    """The :class:`~explainrec.modules.lightgcn.LightGCNResult` of a lightgcn run or stage folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from explainrec.modules.lightgcn import LightGCNResult

    folder, manifest = open_model_folder(path, expect=LightGCNStage.name)
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise ModelFolderError(f"{folder / WEIGHTS}: cannot read safetensors ({err})") from None
    users, items = read_id_maps(folder)
    result = LightGCNResult.from_tensors(tensors, str(folder / WEIGHTS), metrics=manifest.get("metrics") or {},
                                         config=manifest.get("config") or {}, users=users, items=items)
    if result.user_emb.shape[0] != len(users) or result.item_emb.shape[0] != len(items):
        raise ModelFolderError(f"{folder}: the embeddings do not match the id maps ({len(users)} users, {len(items)} items)")
    return result
