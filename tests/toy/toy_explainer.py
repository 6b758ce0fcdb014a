"""A toy method that lives outside the package: the zero-shot prompt plus one word learned from the training
explanations, with an evaluation of its own (``word_share``) and a bench report section (``toy-words``).

It is registered only by tests/toy/test_toy_method.py (and shown in docs/adding-a-method.md, section 6): it adds a
method with its own evaluation and report section without touching any generic file.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from explainrec.config import Config, option
from explainrec.data.prompts import build_messages
from explainrec.methods.base import Evaluation, Explainer, Method, ReportSection, Trained, TrainSummary
from explainrec.metrics.seed_tables import cell, datasets, groups, missing_note, read_json


@dataclass
class ToyConfig(Config):
    model: str = option("smollm2-135m", "LLM: smollm2-135m (embedded), tiny (tests), an HF id or a local folder")
    min_length: int = option(3, "shortest word the method may learn", min=1)


@dataclass
class WordShareOptions(Config):
    n: int = option(8, "test pairs explained for the share", min=1)
    max_new_tokens: int = option(12, "longest explanation, in tokens", min=1)


def word_share(run: Path, dataset, options: WordShareOptions, echo) -> tuple[dict, str]:
    """How often the run's explanations of test pairs use the word it learned."""
    from explainrec.llm.decoding import GenerationConfig
    from explainrec.methods.model_folder import load_run, read_manifest, find_model_folder

    word = read_manifest(find_model_folder(run))["word"]
    pairs = [dataset.pair_of(e) for e in dataset.split_examples("test")[: options.n]]
    rows = load_run(run, precision="fp32").explain(pairs, GenerationConfig(max_new_tokens=options.max_new_tokens))
    share = sum(word in r["prediction"].lower() for r in rows) / max(len(rows), 1)
    echo(f"[toy] {word!r} in {share:.0%} of {len(rows)} explanations")
    report = {"word": word, "n": len(rows), "share": share}
    return report, f"| word | n | share |\n|---|---:|---:|\n| {word} | {len(rows)} | {share:.2f} |\n"


def toy_words(cfg, results, runs, out) -> list[str]:
    """The bench report's section: each run's learned word and its share (from RUN/word_share.json)."""
    lines = ["## Toy words", "", "| run | word | share |", "|---|---|---:|"]
    for ds in datasets(cfg, results):
        for run, rs in groups(results, ds, runs):
            reports = [x for r in rs if (x := read_json(r.planned.run_dir / "word_share.json"))]
            words = "/".join(sorted({x["word"] for x in reports})) or "–"
            shares = [x["share"] for x in reports]
            lines.append(f"| {ds}/{run}{missing_note(rs)} | {words} | {cell('usr', shares) if shares else '–'} |")
    return lines + [""]


class Toy(Method):
    name = "toy"
    description = "the zero-shot prompt plus the most common word of the training explanations (a test method)"
    config_class = ToyConfig
    evaluations = (Evaluation("word_share", "share of test explanations using the learned word", WordShareOptions,
                              word_share),)
    report_sections = (ReportSection("toy-words", "each run's learned word and its share", toy_words),)

    def train(self, dataset, out: Path, config: ToyConfig, *, stages, resume, progress, echo) -> Trained:
        from explainrec.methods.model_folder import write_model_folder

        start = time.perf_counter()
        words = Counter(w.strip(".,").lower() for e in dataset.split_examples("train") for w in e.explanation.split())
        word = next(w for w, _ in words.most_common() if len(w) >= config.min_length)
        with write_model_folder(out / "model", method=self.name, config=config, dataset=dataset,
                                extra={"word": word}):
            pass
        summary = TrainSummary(seconds=time.perf_counter() - start, steps=1, metrics={"word": word},
                               config=config.to_dict())
        return Trained(summary, self.load(out / "model", json.loads((out / "model" / "explainrec.json").read_text())))

    def load(self, folder: Path, manifest: dict, *, device=None, dtype=None) -> Explainer:
        from explainrec.llm.load import load_llm

        config = ToyConfig.from_dict(manifest.get("config"), f"{folder}/explainrec.json config")
        llm, tokenizer = load_llm(config.model, device=device, dtype=dtype)
        system = f"Explain why the user would like the item; use the word '{manifest['word']}'."
        return Explainer(method=self.name, llm=llm, tokenizer=tokenizer, model=llm,
                         prompt=lambda pair: build_messages(pair, system=system),
                         info={"method": self.name, "model": config.model, "config": config.to_dict()})
