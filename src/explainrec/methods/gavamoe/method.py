"""Registry entry ``gavamoe``: stage 1 (VAE-GMM, a ``vae-gmm`` stage in ``RUN/stage1``) then stage 2."""
from __future__ import annotations

from pathlib import Path

from explainrec.methods.base import Method, ReportSection, StageUse, Trained
from explainrec.methods.gavamoe.config import GaVaMoEConfig


def _gates(cfg, results, runs, out) -> list[str]:
    from explainrec.methods.gavamoe.report import section_gates

    return section_gates(cfg, results, runs, out)


def _latent(cfg, results, runs, out) -> list[str]:
    from explainrec.methods.gavamoe.report import section_latent

    return section_latent(cfg, results, runs, out)


class GaVaMoE(Method):
    name = "gavamoe"
    description = ("GaVaMoE: VAE-GMM pair clusters pick one gate per cluster in a fine-grained MoE in every LLaMA "
                   "layer; soft user/item tokens (arXiv 2410.11841)")
    config_class = GaVaMoEConfig
    report_sections = (
        ReportSection("gates", "Table 3: per number of clusters K, the cluster sizes, stage 1's test AUC and the text "
                      "metrics (runs of gavamoe or vae-gmm with different clusters)", _gates),
        ReportSection("latent", "Figure 5: each run's stage-1 latent plot, coloured by cluster", _latent),
    )
    row_fields = {"cluster": (int, "the VAE-GMM cluster whose gate routed the pair"),
                  "top_experts": (list[int], "the experts used most for this pair")}

    def stages(self, config: GaVaMoEConfig) -> list[StageUse]:
        return [StageUse("stage1", "vae-gmm", config.stage1_config())]

    def train(self, dataset, out: Path, config: GaVaMoEConfig, *, stages, resume, progress, echo) -> Trained:
        from explainrec.methods.gavamoe.recipe import train

        return train(dataset, out, config, stages["stage1"], resume=resume, progress=progress, echo=echo,
                     method=self.name)

    def load(self, folder: Path, manifest: dict, *, device=None, dtype=None):
        from explainrec.methods.gavamoe.explainer import gavamoe_explainer
        from explainrec.methods.gavamoe.persist import load_gavamoe
        from explainrec.methods.llm_method import load_tokenizer, place, run_info
        from explainrec.methods.model_folder import read_id_maps

        model = place(load_gavamoe(folder, manifest), device, dtype)
        users, items = read_id_maps(folder)
        profiles = (manifest.get("config") or {}).get("profiles", True)
        return gavamoe_explainer(model, load_tokenizer(folder), users, items, method=self.name,
                                 info=run_info(self.name, folder, manifest), profiles=profiles)
