"""Registry entry ``xrec``: LightGCN (a ``lightgcn`` stage in ``RUN/lightgcn``), then the adaptors."""
from __future__ import annotations

from pathlib import Path

from explainrec.methods.base import Method, StageUse, Trained
from explainrec.methods.xrec.config import XRecConfig


class XRec(Method):
    name = "xrec"
    description = ("XRec: LightGCN embeddings through MoE adaptors, injected into every layer of a frozen LLM "
                   "(arXiv 2406.02377)")
    config_class = XRecConfig

    def stages(self, config: XRecConfig) -> list[StageUse]:
        return [StageUse("lightgcn", "lightgcn", config.lightgcn_config())]

    def train(self, dataset, out: Path, config: XRecConfig, *, stages, resume, progress, echo) -> Trained:
        from explainrec.methods.xrec.recipe import train

        return train(dataset, out, config, stages["lightgcn"], resume=resume, progress=progress, echo=echo,
                     method=self.name)

    def load(self, folder: Path, manifest: dict, *, device=None, dtype=None):
        from explainrec.methods.llm_method import load_tokenizer, place, run_info
        from explainrec.methods.model_folder import read_id_maps
        from explainrec.methods.xrec.explainer import xrec_explainer
        from explainrec.methods.xrec.recipe import load_xrec

        model = place(load_xrec(folder, manifest), device, dtype)
        users, items = read_id_maps(folder)
        return xrec_explainer(model, load_tokenizer(folder), users, items, method=self.name,
                        info=run_info(self.name, folder, manifest))
