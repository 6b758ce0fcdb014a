"""The method contract: what every method (and every reusable upstream stage) provides, described once.

A method is one folder under ``explainrec/methods/`` and one entry in :mod:`explainrec.methods.registry`. The CLI,
the bench harness, the demo and the server only ever look a method up by name there and call these members:

    name, description      what ``explainrec methods`` prints
    config_class           a :class:`explainrec.config.Config` dataclass (defaults, limits, help per key)
    presets                YAML files shipped beside the method (``configs/<preset>.yaml``): tiny, cpu, paper
    check(dataset, config) what training would reject, raised before any work (stages are checked too)
    stages(config)         upstream stages trained first into sub-folders and shareable between runs
    train(...)             fit on a dataset's train split into a run folder (resumable), write ``model/``;
                           returns a :class:`Trained` (its :class:`TrainSummary` + an explainer on the in-memory
                           model)
    load(...)              open ``model/`` and return an :class:`Explainer` holding the loaded model
    evaluations            what a method evaluates beside the text metrics (:class:`Evaluation`): ``explainrec
                           evaluate RUN --extra NAME`` and the bench run them
    report_sections        sections it adds to a bench report (:class:`ReportSection`): a bench config names them
                           as experiment kinds

A stage-only entry (a clustering or an embedding a method starts from) has ``explains = False``: it trains and
saves, and the methods that build on it name it in :meth:`Method.stages`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from explainrec.config import Config, ConfigError, merge_dicts, read_config_file
from explainrec.llm.hooks import GenerationHooks


@dataclass(frozen=True)
class StageUse:
    """An upstream stage of a run: trained by registry entry ``method`` with ``config`` into ``RUN/<folder>``.

    Two runs whose stages have the same method, config and data may share the stage's folder (the bench copies it).
    """

    folder: str
    method: str
    config: Config


@dataclass
class TrainSummary:
    """What a training reports, in the same fields for every method and stage, zero-shot included.

    :func:`explainrec.methods.runs.train_run` writes it to ``RUN/train_summary.json`` (a stage's to
    ``RUN/<stage>/train_summary.json``); the bench's ``done.json`` and cost table read it from there.

    seconds   the method's own training clock (its stages excluded: each reports its own)
    steps     optimizer steps taken; None where the method counts epochs only (a stage trained epoch by epoch)
    epochs    passes over the train split; None where the method does not count them
    metrics   the method's own figures: the last validation, whether a budget stopped it, trainable parameters,
              a stage's test metrics (what ``RUN/<stage>/metrics.json`` holds)
    config    the resolved settings
    """

    seconds: float
    steps: int | None = None
    epochs: int | None = None
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"seconds": round(float(self.seconds), 1), "steps": self.steps, "epochs": self.epochs,
                "metrics": self.metrics, "config": self.config}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSummary":
        """A summary as written by :meth:`to_dict`, or by explainrec before it was typed (flat, with
        ``train_seconds`` / ``seconds_total`` and ``epochs_done`` / ``epochs_run``, or a stage's metrics.json):
        run folders written then are still read."""
        if isinstance(data.get("metrics"), dict) and "seconds" in data:
            return cls(seconds=float(data["seconds"] or 0.0), steps=data.get("steps"), epochs=data.get("epochs"),
                       metrics=dict(data["metrics"]), config=dict(data.get("config") or {}))
        seconds = next((data[k] for k in ("train_seconds", "seconds_total", "seconds") if data.get(k) is not None), 0.0)
        epochs = next((data[k] for k in ("epochs_done", "epochs_run") if data.get(k) is not None), None)
        metrics = {k: v for k, v in data.items() if k not in ("steps", "config")}
        return cls(seconds=float(seconds), steps=data.get("steps"), epochs=epochs, metrics=metrics,
                   config=dict(data.get("config") or {}))


@dataclass(frozen=True)
class Evaluation:
    """An evaluation a method brings beside the text metrics, run on one of its trained run folders.

    ``explainrec evaluate RUN --extra NAME --data D [KEY=VALUE ...]`` (and :func:`explainrec.evaluate`) runs it, and
    the bench runs it on every run of the method (options under the config's ``evaluations: {NAME: {...}}``); both
    write ``NAME.json`` and ``NAME.md``. ``run(run, dataset, options, echo) -> (report, markdown)`` gets the run
    folder, the dataset it was trained on and an instance of ``options``, a :class:`~explainrec.config.Config` whose
    keys carry their defaults, limits and help. Names are unique across the registry.
    """

    name: str
    description: str
    options: type[Config]
    run: Callable[[Path, Any, Config, Callable[..., None]], tuple[dict, str]]

    @property
    def files(self) -> tuple[str, str]:
        """What it writes: ``NAME.json`` (the report) and ``NAME.md`` (the same, readable)."""
        return f"{self.name}.json", f"{self.name}.md"


@dataclass(frozen=True)
class ReportSection:
    """A section a method adds to the bench report; a bench config lists it as an experiment kind
    (``experiments: {NAME: [run, ...]}``) and the report renders it there, looked up through the registry.

    ``render(cfg, results, runs, out) -> markdown lines``: ``cfg`` is the bench config, ``results`` every planned run
    as found on disk (:class:`explainrec.metrics.seed_tables.RunResult`), ``runs`` the run names the experiment
    lists and ``out`` the report's folder (figures go to ``out/figures``); the helpers of
    :mod:`explainrec.metrics.seed_tables` make its cells look like the rest of the report. Names are unique across
    the registry and differ from the bench's own kinds.
    """

    name: str
    description: str
    render: Callable[[dict, list, list[str], Path], list[str]]


@dataclass
class Trained:
    """What training returns: its :class:`TrainSummary` and, for methods that explain, an :class:`Explainer` on the
    model still in memory (the same weights ``model/`` holds)."""

    summary: TrainSummary
    explainer: "Explainer | None" = None


class Method:
    """Base of every registry entry; subclasses set the class attributes and implement train/load."""

    name: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type[Config]]
    explains: ClassVar[bool] = True  # False: a stage-only entry (no explanations)
    trains: ClassVar[bool] = True  # False: usable without a run folder (zero-shot)
    preset_folder: ClassVar[str] = "configs"  # beside the entry's module
    evaluations: ClassVar[tuple["Evaluation", ...]] = ()  # run on a trained run: explainrec evaluate --extra NAME
    report_sections: ClassVar[tuple["ReportSection", ...]] = ()  # bench report sections: experiments: {NAME: [...]}
    headline: ClassVar[tuple[str, ...]] = ()  # keys of its summary's metrics a one-line report shows (the bench's)
    # what it adds to each explanation row, for the server's API schema: field -> (type, what it means)
    row_fields: ClassVar[dict[str, tuple[Any, str]]] = {}

    # ------------------------------------------------------------------ config

    @classmethod
    def presets_dir(cls) -> Path:
        import importlib

        module = importlib.import_module(cls.__module__)
        return Path(module.__file__).resolve().parent / cls.preset_folder

    @classmethod
    def presets(cls) -> list[str]:
        folder = cls.presets_dir()
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    @classmethod
    def make_config(cls, preset: str | Path | None = None, overrides: list[str] | dict | None = None,
                    where: str | None = None) -> Config:
        """The config from a preset name or YAML file, then ``key=value`` overrides; validated."""
        data: dict = {}
        label = where or cls.name
        if preset is not None:
            path = Path(preset)
            if str(preset) in cls.presets():
                path = cls.presets_dir() / f"{preset}.yaml"
            elif not path.is_file():
                raise ConfigError(f"--config {preset}: neither a preset of {cls.name} "
                                  f"({', '.join(cls.presets()) or 'none'}) nor a YAML file")
            data = read_config_file(path)
            label = str(path)
        if isinstance(overrides, list):
            from explainrec.config import parse_overrides

            overrides = parse_overrides(overrides)
        if not overrides:
            return cls.config_class.from_dict(data, label)
        cls.config_class.from_dict(data, label)  # the file alone must be valid: an error past this is the settings'
        try:
            return cls.config_class.from_dict(merge_dicts(data, overrides), "")
        except ConfigError as err:
            on_top = f" (on top of {label})" if preset is not None else ""
            raise ConfigError(f"key=value settings: {err}{on_top}") from None

    # ------------------------------------------------------------------ the contract

    def check(self, dataset, config: Config) -> None:
        """Raise what training on ``dataset`` with ``config`` would reject, before any folder is written (a failed
        start must leave nothing that blocks the corrected rerun). By default a method that learns to explain
        needs explained training pairs; a method adds what its recipe refuses."""
        if self.explains and self.trains and not any(e.explanation.strip() for e in dataset.split_examples("train")):
            from explainrec.data.schema import DataError

            raise DataError(f"dataset {dataset.name!r}: no explained pairs in split 'train' ({self.name} learns to "
                            "write explanations from them); give data with an 'explanation' field")
        from explainrec.training.settings import LLMTrainConfig

        if isinstance(config, LLMTrainConfig):
            from explainrec.llm.load import check_llm_name

            check_llm_name(config.model)

    def stages(self, config: Config) -> list[StageUse]:
        """Upstream stages this run trains first (each into ``RUN/<folder>``); none by default."""
        return []

    def train(self, dataset, out: Path, config: Config, *, stages: dict[str, Path], resume: bool, progress: bool,
              echo: Callable[..., None]) -> Trained:
        """Fit on ``dataset``'s train split into ``out``; write ``out/model``."""
        raise NotImplementedError

    def load(self, folder: Path, manifest: dict, *, device=None, dtype=None) -> "Explainer":
        """The :class:`Explainer` of a model folder this method wrote (``manifest`` is its explainrec.json)."""
        raise NotImplementedError

    def evaluation(self, name: str) -> "Evaluation":
        """The evaluation called ``name`` this method declares; a clear error naming the ones it has."""
        for evaluation in self.evaluations:
            if evaluation.name == name:
                return evaluation
        has = ", ".join(e.name for e in self.evaluations) or "none"
        raise ConfigError(f"{self.name} has no evaluation {name!r} (its evaluations: {has})")

    def untrained(self, config: Config, *, device=None, dtype=None) -> "Explainer":
        """For methods with ``trains = False``: an explainer straight from a config (no run folder)."""
        raise ConfigError(f"{self.name} needs a trained run folder: train one with `explainrec train {self.name} ...`")


@dataclass
class Prepared:
    """What an explainer needs to generate one call's pairs: the generation hooks and per-pair extras.

    ``hooks`` (:class:`~explainrec.llm.generate.GenerationHooks`) go to ``generate_texts`` as they are: soft-token
    embeddings, a per-batch context (routing, injection) and the shared-prompt-prefix settings only the method can
    vouch for. ``extras(i, text)`` is called after generation (so it can report what the generation did, e.g. the
    most used experts, or what the method decided first, e.g. a yes/no) and adds fields to pair ``i``'s row.
    ``messages``: per-pair chat messages when the prompt depends on what the model said first (a method that asks
    for a decision first, then why); None = ``Explainer.prompt`` of each pair.
    """

    cold_start: list[bool]
    hooks: GenerationHooks = field(default_factory=GenerationHooks)
    extras: Callable[[int, str], dict] = field(default=lambda i, text: {})
    messages: list[list[dict]] | None = None


@dataclass
class Explainer:
    """A loaded model that explains batches of pairs on the model it holds (no reload between calls).

    ``prompt(pair) -> chat messages`` and ``prepare(pairs) -> Prepared`` are the method's; the generation path is
    shared. ``model`` is the root module (for device moves and quantisation); ``info`` is what the server's
    ``/v1/model`` and the prediction files report (method, config, LLM name, data fingerprint).
    """

    method: str
    llm: Any
    tokenizer: Any
    prompt: Callable[[Any], list[dict]]
    prepare: Callable[[Sequence[Any]], Prepared] | None = None
    model: Any = None
    info: dict = field(default_factory=dict)
    known_users: Any = None  # IdMap of the users the model was trained with (None: any id is fine)
    known_items: Any = None

    def explain(self, pairs: Sequence[Any], generation=None, *, stats=None, progress: bool = False,
                streamer_for: Callable | None = None) -> list[dict]:
        """One row per pair: ``user``, ``item`` (raw ids), ``prediction``, ``cold_start`` and the method's extras.

        ``streamer_for`` joins the method's generation hooks (per-batch streamers: the server streams each
        request's text while its batch generates).
        """
        from explainrec.data.prompts import render_prompt
        from explainrec.llm.decoding import GenerationConfig
        from explainrec.llm.generate import generate_texts

        pairs = list(pairs)
        if not pairs:
            return []
        generation = generation or GenerationConfig()
        if generation.candidates > 1:
            if streamer_for is not None:
                raise ConfigError("candidates > 1 cannot stream: the text is chosen after all candidates are written")
            from explainrec.methods.rerank import explain_reranked

            return explain_reranked(self, pairs, generation, stats=stats, progress=progress)
        prepared = self.prepare(pairs) if self.prepare is not None else Prepared(cold_start=self.cold_start(pairs))
        messages = prepared.messages if prepared.messages is not None else [self.prompt(p) for p in pairs]
        prompts = [render_prompt(self.tokenizer, m) for m in messages]
        hooks = prepared.hooks if streamer_for is None else replace(prepared.hooks, streamer_for=streamer_for)
        texts = generate_texts(self.llm, self.tokenizer, prompts, stats=stats, progress=progress, hooks=hooks,
                               **generation.generate_kwargs())
        return [{"user": p.user, "item": p.item, "prediction": text, "cold_start": bool(cold), **prepared.extras(i, text)}
                for i, (p, text, cold) in enumerate(zip(pairs, texts, prepared.cold_start))]

    def cold_start(self, pairs: Sequence[Any]) -> list[bool]:
        """Pairs whose user or item the model never saw (always False for a model without id maps)."""
        return [(self.known_users is not None and p.user not in self.known_users)
                or (self.known_items is not None and p.item not in self.known_items) for p in pairs]
