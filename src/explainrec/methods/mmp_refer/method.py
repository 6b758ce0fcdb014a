"""Registry entry ``mmp-refer``: the ``mmp-graph`` stage (in ``RUN/graph``), then the LLM with the path text and
the graph soft prompt (arXiv 2604.03666)."""
from __future__ import annotations

from pathlib import Path

from explainrec.methods.base import Method, StageUse, Trained
from explainrec.methods.mmp_refer.config import MMPReferConfig


class MMPRefer(Method):
    name = "mmp-refer"
    description = ("MMP-Refer: retrieval paths between the user and the item (multimodal codes, pruned graph) given "
                   "to the LLM as text and as a graph soft prompt (arXiv 2604.03666)")
    config_class = MMPReferConfig
    row_fields = {"paths": (list[str], "the retrieved user-item paths, as text"),
                  "path_nodes": (list[list[str]], "the same paths as node ids")}

    def stages(self, config: MMPReferConfig) -> list[StageUse]:
        return [StageUse("graph", "mmp-graph", config.stage_config())]

    def train(self, dataset, out: Path, config: MMPReferConfig, *, stages, resume, progress, echo) -> Trained:
        from explainrec.methods.mmp_refer.recipe import train

        return train(dataset, out, config, stages["graph"], resume=resume, progress=progress, echo=echo,
                     method=self.name)

    def load(self, folder: Path, manifest: dict, *, device=None, dtype=None):
        from explainrec.methods.llm_method import load_tokenizer, place, run_info
        from explainrec.methods.mmp_refer.config import MMPReferConfig
        from explainrec.methods.mmp_refer.explainer import mmp_explainer
        from explainrec.methods.mmp_refer.recipe import load_mmp
        from explainrec.methods.model_folder import read_id_maps

        model, stage, texts = load_mmp(folder, manifest)
        users, items = read_id_maps(folder)
        cfg = MMPReferConfig.from_dict(manifest["config"], f"{folder}/explainrec.json config")
        return mmp_explainer(place(model, device, dtype), load_tokenizer(folder), stage, texts, users, items, cfg=cfg,
                             method=self.name, info=run_info(self.name, folder, manifest))
