"""Registry entry ``recexplainer``: the recommender (a ``recommender`` stage in ``RUN/recommender``), then the LLM
aligned to it in the behaviour, intention or hybrid variant."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from explainrec.methods.base import Evaluation, Method, ReportSection, StageUse, Trained
from explainrec.methods.recexplainer.config import AlignmentEvaluationOptions, RecExplainerConfig


def _alignment(run: Path, dataset, options: AlignmentEvaluationOptions, echo) -> tuple[dict, str]:
    from explainrec.methods.recexplainer.report import alignment_report, to_markdown

    report = alignment_report(run, dataset, echo=echo, **options.to_dict())
    return report, to_markdown(report)


def _alignment_section(cfg, results, runs, out) -> list[str]:
    from explainrec.methods.recexplainer.report import section_alignment

    return section_alignment(cfg, results, runs, out)


class RecExplainer(Method):
    name = "recexplainer"
    description = ("RecExplainer: an LLM aligned to a trained recommender (behaviour / intention / hybrid) explains "
                   "that recommender's decisions (arXiv 2311.10947)")
    config_class = RecExplainerConfig
    evaluations = (Evaluation("alignment", "the paper's Table 1 (T1 HR/NDCG@5, T2 NDCG@5, T3 accuracy, T6 coverage "
                              "beside random, popularity and the untrained LLM) and automatic checks of the "
                              "explanations (decision, probe, grounding, attribution, counterfactual)",
                              AlignmentEvaluationOptions, _alignment),)
    report_sections = (ReportSection("alignment", "Table 1 and the explanation checks of each run's alignment.json",
                                     _alignment_section),)
    row_fields = {"decision": (Literal["yes", "no"], "the LLM's recommend decision"),
                  "recommender_score": (float, "the recommender's score of the item"),
                  "recommender_top_fraction": (float, "share of candidates the recommender ranks above the item"),
                  "recommender_decision": (Literal["yes", "no", "undecided"], "the recommender's verdict from that rank"),
                  "history": (list[str], "the user's history items shown to the LLM")}

    def stages(self, config: RecExplainerConfig) -> list[StageUse]:
        return [StageUse("recommender", "recommender", config.recommender_config())]

    def train(self, dataset, out: Path, config: RecExplainerConfig, *, stages, resume, progress, echo) -> Trained:
        from explainrec.methods.recexplainer.recipe import train

        return train(dataset, out, config, stages["recommender"], resume=resume, progress=progress, echo=echo,
                     method=self.name)

    def load(self, folder: Path, manifest: dict, *, device=None, dtype=None):
        from explainrec.methods.llm_method import load_tokenizer, place, run_info
        from explainrec.methods.model_folder import read_id_maps
        from explainrec.methods.recexplainer.explainer import recexplainer_explainer
        from explainrec.methods.recexplainer.recipe import load_recexplainer

        model, rec, names = load_recexplainer(folder, manifest)
        model = place(model, device, dtype)
        users, items = read_id_maps(folder)
        return recexplainer_explainer(model, load_tokenizer(folder), rec, names, users, items,
                                      variant=manifest["arch"]["variant"], method=self.name,
                                      info=run_info(self.name, folder, manifest))
