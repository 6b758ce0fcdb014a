"""Registry entry ``zero-shot``: the pair's prompt (title, profiles, features, rating) to the untrained LLM.

The floor every trained method must beat, and a smoke test of the whole prompt -> generate -> evaluate chain. It
needs no training: ``explainrec explain --method zero-shot --model LLM`` builds it from a config, and
``explainrec train zero-shot --out RUN`` writes a model folder holding only that config (so a bench or a server
opens it like any other run).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from explainrec.config import Config, option
from explainrec.data.prompts import PROMPT_FIELDS, build_messages
from explainrec.methods.base import Explainer, Method, Trained, TrainSummary


@dataclass
class ZeroShotConfig(Config):
    model: str = option("smollm2-135m", "LLM: smollm2-135m (embedded), tiny (tests), an HF id or a local folder")
    system: str | None = option(None, "system prompt (null: the built-in explanation instruction)")
    include: tuple[str, ...] = option(lambda: PROMPT_FIELDS, "pair fields the prompt may show (comma list)",
                                      choices=PROMPT_FIELDS)


class ZeroShot(Method):
    name = "zero-shot"
    description = "the untrained LLM prompted with the pair's title, profiles and features (the baseline)"
    config_class = ZeroShotConfig
    trains = False

    def train(self, dataset, out: Path, config: ZeroShotConfig, *, stages, resume, progress, echo) -> Trained:
        from explainrec.methods.model_folder import write_model_folder

        with write_model_folder(out / "model", method=self.name, config=config, dataset=None):
            pass
        echo(f"[zero-shot] nothing to train; {out / 'model'} records the config")
        return Trained(TrainSummary(seconds=0.0, steps=0, config=config.to_dict()),
                       self.load(out / "model", {"config": config.to_dict()}))

    def load(self, folder: Path, manifest: dict, *, device=None, dtype=None) -> Explainer:
        config = ZeroShotConfig.from_dict(manifest.get("config"), f"{folder}/explainrec.json config")
        explainer = self.untrained(config, device=device, dtype=dtype)
        explainer.info.update(folder=str(folder))
        return explainer

    def untrained(self, config: ZeroShotConfig, *, device=None, dtype=None) -> Explainer:
        from explainrec.llm.load import load_llm

        llm, tokenizer = load_llm(config.model, device=device, dtype=dtype)
        return Explainer(method=self.name, llm=llm, tokenizer=tokenizer, model=llm,
                         prompt=lambda pair: build_messages(pair, system=config.system, include=config.include),
                         info={"method": self.name, "model": config.model, "config": config.to_dict()})
