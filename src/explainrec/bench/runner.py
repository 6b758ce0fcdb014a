"""One run of the experiment harness: train (through the registry) -> explain a split -> evaluate, resumably.

A run folder holds ``run.json`` (the run's full settings), then what each step leaves behind::

    run.json            the spec; a folder whose run.json differs is set aside (renamed *.stale-TIME) and redone
    config.yaml, <stage>/, checkpoint/, model/, train_summary.json     (see explainrec.methods.runs)
    predictions.jsonl   the explained split (atomic)
    metrics.json/.md    the evaluation (explainrec.metrics)
    NAME.json/.md       each evaluation the run's method declares (Method.evaluations)
    done.json           written last: timings and generation throughput

A stage-only method (``explains = False``) trains into ``RUN/stage/`` and its done.json carries the stage's
metrics instead.

Each step is skipped when its output exists, and training resumes from its checkpoint, so an interrupted run
picks up where it stopped and a finished one costs nothing to "rerun".
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from explainrec.config import Config, ConfigError
from explainrec.io import atomic_write_json


@dataclass
class RunSpec:
    """Everything that decides a run's result; two runs with equal specs are the same run."""

    data: str  # anything explainrec.data.load_dataset reads: "synthetic", "synthetic:users=200", a folder
    method: str  # a registered method (explainrec methods)
    seed: int = 0
    options: dict = field(default_factory=dict)  # the method's config keys (nested as in its config)
    generation: dict = field(default_factory=dict)  # explainrec.llm.decoding.GenerationConfig keys
    split: str = "test"
    limit: int | None = None  # explain only the first N pairs of the split
    precision: str = "auto"  # generation weights: auto (int8 on CPU) | fp32 | int8
    tune_decoding: dict = field(default_factory=dict)  # {limit, rule, grid}: also explain with settings chosen on valid
    sensitivity: dict = field(default_factory=dict)  # {n, seed, precision}: user sensitivity (methods.sensitivity)
    # {name: options} of every evaluation the method declares (Method.evaluations), all run; options given for
    # evaluations other methods declare are left out (a config's evaluations apply to the runs that have them)
    evaluations: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from explainrec.llm.decoding import GenerationConfig
        from explainrec.methods.evaluations import options_of

        method = self.method_entry()  # unknown method -> ConfigError listing the known ones
        given = dict(self.evaluations)
        self.evaluations = {e.name: dict(given.get(e.name) or {}) for e in method.evaluations}
        for e in method.evaluations:
            options_of(e, self.evaluations[e.name], f"evaluations.{e.name}")
        GenerationConfig.from_dict(self.generation, "generation")
        from explainrec.methods.model_folder import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    def method_entry(self):
        from explainrec.methods import registry

        return registry.get(self.method)

    def config(self, where: str | None = None) -> Config:
        """The method's config: its defaults, then ``options``; the run's seed unless ``options`` sets one."""
        cls = self.method_entry().config_class
        options = dict(self.options)
        if "seed" in cls.__dataclass_fields__:
            options.setdefault("seed", self.seed)
        return cls.from_dict(options, where or f"{self.method} options")

    def generation_config(self):
        from explainrec.llm.decoding import GenerationConfig

        return GenerationConfig.from_dict({"seed": self.seed, **self.generation}, "generation")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), sort_keys=True))  # plain JSON types, so saved == fresh

    def _saved(self, saved: dict) -> dict:
        """A saved ``run.json`` with the keys it lacks at their defaults, so a field added to RunSpec later does
        not turn every finished run stale. A run.json from before methods declared their evaluations holds each
        evaluation's options at its top level (``"NAME": {...}``): they are read as ``evaluations``."""
        import dataclasses

        from explainrec.methods import registry

        fields = {f.name for f in dataclasses.fields(self)}
        saved = dict(saved)
        legacy = {name: saved.pop(name) for name in set(registry.evaluations()) & (set(saved) - fields)}
        if "evaluations" not in saved:
            saved["evaluations"] = {e.name: legacy.get(e.name) or {} for e in self.method_entry().evaluations}
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(self)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        return json.loads(json.dumps({**defaults, **saved}, sort_keys=True))

    def matches(self, saved: dict) -> bool:
        """Whether a saved ``run.json`` describes this run."""
        return self._saved(saved) == self.to_dict()

    def trains_like(self, saved: dict) -> bool:
        """Whether a saved ``run.json`` trains the same model (only what is done with the model differs:
        generation, split, precision, evaluations), so its training can be kept."""
        full, mine = self._saved(saved), self.to_dict()
        return all(full[k] == mine[k] for k in TRAINING_FIELDS)

    def outdated_outputs(self, saved: dict) -> list[str]:
        """The files of a run folder made with ``saved``'s settings that this spec must make again (its training
        is kept: call only when :meth:`trains_like`). An evaluation's files go with the texts it reads, or alone
        when only its options changed."""
        full, mine = self._saved(saved), self.to_dict()
        evaluated = {e.name: e.files for e in self.method_entry().evaluations}
        names = set()
        for key, outputs in OUTPUTS_OF.items():
            if full[key] != mine[key]:
                names.update(outputs)
                if outputs is _EXPLAINED:
                    names.update(f for files in evaluated.values() for f in files)
        for name, files in evaluated.items():
            if full["evaluations"].get(name) != mine["evaluations"].get(name):
                names.update(files)
        order = (*_EXPLAINED, *(f for files in evaluated.values() for f in files))
        return [name for name in dict.fromkeys(order) if name in names]


# What decides the trained model; every other RunSpec field only decides what is done with it afterwards.
TRAINING_FIELDS = ("data", "method", "seed", "options")
_TUNED = ("decoding.json", "predictions_tuned.jsonl", "metrics_tuned.json", "metrics_tuned.md")
_SENSITIVITY = ("sensitivity.json", "sensitivity.md")
_SCORES = ("metrics.json", "metrics.md", "metrics_tuned.json", "metrics_tuned.md")
_EXPLAINED = ("predictions.jsonl", "generation.json", *_SCORES, *_TUNED, *_SENSITIVITY)
# The files each post-training setting decides (done.json goes with any of them; the method's evaluations' files
# with the texts: see RunSpec.outdated_outputs).
OUTPUTS_OF = {"generation": _EXPLAINED, "split": _EXPLAINED, "limit": _EXPLAINED, "precision": _EXPLAINED,
              "tune_decoding": _TUNED, "sensitivity": _SENSITIVITY}
# The user-sensitivity figures a done.json carries beside the text metrics (the report's columns).
SENSITIVITY_METRICS = {"user_change": "change", "user_toward": "toward_profile"}
# The version of what run_one computes from a run's texts (metrics and evaluations): bump it when the evaluation
# gains or changes a figure, and the bench scores finished runs again from the texts they already wrote.
EVALUATION_VERSION = 2


# ---------------------------------------------------------------------------------------------------- stages


STAGE_ONLY_FOLDER = "stage"


def stage_uses(spec: RunSpec) -> list:
    """The stages a run trains: its method's upstream stages, or, for a stage-only method, itself."""
    from explainrec.methods.base import StageUse

    method, cfg = spec.method_entry(), spec.config()
    return method.stages(cfg) if method.explains else [StageUse(STAGE_ONLY_FOLDER, method.name, cfg)]


def stage_keys(spec: RunSpec) -> dict[str, tuple]:
    """Stage folder (relative to the run folder) -> what decides that stage's result.

    Two runs whose stages have equal keys train the same stage, so one may start from a copy of the other's.
    """
    from explainrec.methods.runs import stage_key

    return {use.folder: stage_key(use, spec.data) for use in stage_uses(spec)}


def stage_folders(spec: RunSpec, run_dir: Path) -> list[Path]:
    """Where a run's stages live (the report's sections read their metrics and figures there)."""
    return [run_dir / folder for folder in stage_keys(spec)]


def _copy_stage(source: Path, target: Path, echo) -> None:
    """Copy a finished stage (without its training checkpoint) into ``target``, atomically."""
    from explainrec.io import atomic_dir

    echo(f"[bench] {target}: stage copied from {source}")
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoint"), dirs_exist_ok=True)


# ---------------------------------------------------------------------------------------------------- steps


def _train(spec: RunSpec, dataset, run_dir: Path, echo, progress: bool):
    """Train the spec's method into ``run_dir`` unless its model is already there.

    Returns ``(summary, explainer)``: the :class:`~explainrec.methods.base.TrainSummary` and the explainer holding
    the model just trained (None when it was trained before, or for a stage-only method), so a fresh run explains
    without reloading it.
    """
    from explainrec.methods.runs import CONFIG_FILE, ensure_stage, read_summary, train_run

    if not spec.method_entry().explains:
        (use,) = stage_uses(spec)
        folder = ensure_stage(use, dataset, run_dir, resume=True, progress=progress, echo=echo)
        return read_summary(folder, stage=True), None
    summary = read_summary(run_dir)
    if (run_dir / "model").exists() and summary is not None:
        return summary, None
    resume = (run_dir / CONFIG_FILE).exists()
    trained = train_run(spec.method_entry(), dataset, run_dir, spec.config(), resume=resume, progress=progress,
                        echo=echo, command=f"explainrec bench (run {run_dir})")
    return trained.summary, trained.explainer


def _explain(spec: RunSpec, dataset, run_dir: Path, explainer=None) -> dict:
    """Write ``predictions.jsonl`` for the spec's split with the run's model (``explainer`` when it is still in
    memory, else loaded from ``model/``). Returns the generation stats."""
    from explainrec.methods.explain import explain_split
    from explainrec.methods.model_folder import apply_precision, load_run

    if explainer is None:
        explainer = load_run(run_dir, precision=spec.precision)
    else:
        explainer = apply_precision(explainer, spec.precision)
    _, stats = explain_split(explainer, dataset, spec.split, limit=spec.limit, out=run_dir / "predictions.jsonl",
                             generation=spec.generation_config(), progress=False)
    return stats.as_dict()


def _set_aside(run_dir: Path) -> Path:
    """Move a stale run folder out of the way instead of deleting it: its results may have cost hours."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = run_dir.with_name(f"{run_dir.name}.stale-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.stale-{stamp}-{n}")
    run_dir.rename(target)
    return target


def _set_aside_outputs(run_dir: Path, names: list[str]) -> Path | None:
    """Move some of a run's outputs (and its done.json) into ``RUN/previous-TIME/``; its training stays. They may
    be the only copy of an earlier setting's figures."""
    found = [run_dir / name for name in (*names, "done.json") if (run_dir / name).exists()]
    if not found:
        return None
    target = run_dir / f"previous-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    n = 1
    while target.exists():
        n += 1
        target = run_dir / f"previous-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{n}"
    target.mkdir()
    for path in found[::-1]:  # done.json first: an interruption leaves a run that is not done, never a torn one
        path.rename(target / path.name)
    return target


def is_current(done: dict) -> bool:
    """Whether a done.json was scored by this version of the evaluation (a stage alone has none to redo)."""
    return done.get("evaluation") == EVALUATION_VERSION or done.get("stage") is not None


HARNESS = "harness"  # the kind of folder (explainrec.folders) a run of the harness is


def legacy_run(names: list[str]) -> list[str]:
    """A run folder an older harness wrote (before ownership markers): all of it, when it holds its run.json."""
    return names if "run.json" in names else []


def check_run_dir(run_dir: Path) -> None:
    """``run_dir`` may be a run of the harness: missing, empty, made by the harness (the bench or the demo), or by
    an older harness (``run.json``); never a folder holding someone else's run or files, which it would adopt as
    its own result."""
    from explainrec.folders import FolderError, entries, read_owner

    owner, names = read_owner(run_dir), entries(run_dir)
    if owner is not None and owner.get("kind") != HARNESS:
        raise FolderError(f"{run_dir}: holds what `{owner.get('made_by')}` wrote, not a run of the bench or the demo; "
                          "move it away or choose another output folder")
    if owner is None and names and "run.json" not in names:
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise FolderError(f"{run_dir}: holds files the bench or the demo did not write ({shown}); move them away "
                          "or choose another output folder")


def run_one(spec: RunSpec, run_dir: str | Path, *, dataset=None, bertscore: bool = True, progress: bool = True,
            echo=print, stage_sources: dict[str, Path] | None = None, command: str = "explainrec bench") -> dict:
    """Do whatever of train -> explain -> evaluate ``run_dir`` still lacks; return ``done.json``'s content.

    ``stage_sources``: finished stage folders of other runs with equal :func:`stage_keys`, copied in (by folder
    name) when this run has no such stage yet, so a config's runs fit each shared stage once. The folder is
    written holding its lock (one writer), and only when the harness made it (:func:`check_run_dir`).
    """
    from explainrec.folders import FolderBusy, lock_holder, session

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    spec_path = run_dir / "run.json"
    saved = json.loads(spec_path.read_text()) if spec_path.exists() else None
    if saved is not None and not spec.matches(saved) and not spec.trains_like(saved):
        holder = lock_holder(run_dir)
        if holder is not None:
            raise FolderBusy(f"{run_dir}: pid {holder.get('pid')} (`{holder.get('command')}`) is writing it; its "
                             "settings changed, but it is set aside only when that process has ended")
        kept = _set_aside(run_dir)
        echo(f"[bench] {run_dir}: settings changed since it ran; starting it again (the old folder is kept as "
             f"{kept})")
    with session(run_dir, kind=HARNESS, command=command, adopt=legacy_run):
        return _run_one(spec, run_dir, dataset=dataset, bertscore=bertscore, progress=progress, echo=echo,
                        stage_sources=stage_sources)


def _run_one(spec: RunSpec, run_dir: Path, *, dataset, bertscore: bool, progress: bool, echo,
             stage_sources: dict[str, Path] | None) -> dict:
    from explainrec.metrics import evaluate, save_report
    from explainrec.metrics.predictions import load_predictions

    wanted = spec.to_dict()
    spec_path = run_dir / "run.json"
    saved = json.loads(spec_path.read_text()) if spec_path.exists() else None
    if saved is not None and not spec.matches(saved):  # only what is done with the model changed (see run_one)
        kept = _set_aside_outputs(run_dir, spec.outdated_outputs(saved))
        atomic_write_json(spec_path, wanted)
        echo(f"[bench] {run_dir}: evaluation settings changed since it ran; its training is kept, the rest is "
             f"made again" + (f" (the old outputs are kept in {kept})" if kept else ""))
    done_path = run_dir / "done.json"
    if done_path.exists():
        done = json.loads(done_path.read_text())
        if is_current(done):
            return done
        echo(f"[bench] {run_dir}: scored by an older evaluation; scoring its texts again")
    atomic_write_json(spec_path, wanted)
    for folder, source in (stage_sources or {}).items():
        if not (run_dir / folder).exists():
            _copy_stage(Path(source), run_dir / folder, echo)
    if dataset is None:
        from explainrec.data import load_dataset

        dataset = load_dataset(spec.data)

    t0 = time.perf_counter()
    summary, explainer = _train(spec, dataset, run_dir, echo, progress)
    t1 = time.perf_counter()
    trained = {"train_seconds": round(summary.seconds, 1), "train_steps": summary.steps, "train_epochs": summary.epochs}
    if not spec.method_entry().explains:  # a stage alone: its metrics are the result
        done = {"evaluation": EVALUATION_VERSION, "metrics": {}, "std": {}, "buckets": {}, "n": 0, "generation": None,
                **trained, "stage": summary.metrics,
                "seconds_this_call": {"train": round(t1 - t0, 1), "explain": 0.0, "evaluate": 0.0}}
        atomic_write_json(done_path, done)
        return done
    gen_path = run_dir / "generation.json"
    if not (run_dir / "predictions.jsonl").exists() or not gen_path.exists():
        atomic_write_json(gen_path, _explain(spec, dataset, run_dir, explainer))
    del explainer
    t2 = time.perf_counter()
    result = evaluate(load_predictions(run_dir / "predictions.jsonl"), bertscore=bertscore)
    save_report(result, run_dir / "metrics.json", title=f"{spec.method} on {spec.data} ({spec.split})")
    tuned = _tuned(spec, dataset, run_dir, bertscore, echo) if spec.tune_decoding else None
    curve = _curve_scores(run_dir, dataset, bertscore)
    sensitivity = _sensitivity(spec, dataset, run_dir, echo) if spec.sensitivity else None
    _evaluations(spec, dataset, run_dir, echo)
    done = {
        "evaluation": EVALUATION_VERSION,
        "metrics": {**result["metrics"], **(sensitivity or {})},
        "std": result.get("std", {}),
        "buckets": result.get("buckets", {}),
        "n": result["n"],
        **trained,
        "generation": json.loads(gen_path.read_text()),
        "seconds_this_call": {"train": round(t1 - t0, 1), "explain": round(t2 - t1, 1),
                              "evaluate": round(time.perf_counter() - t2, 1)},
        **({"tuned": tuned} if tuned else {}),
        **({"curve": curve} if curve else {}),
    }
    atomic_write_json(done_path, done)
    return done


def _evaluations(spec: RunSpec, dataset, run_dir: Path, echo) -> None:
    """Every evaluation the run's method declares (``RUN/NAME.json``/``.md``) that the folder does not hold yet."""
    from explainrec.methods.evaluations import options_of, write_evaluation

    for evaluation in spec.method_entry().evaluations:
        if all((run_dir / f).exists() for f in evaluation.files):
            continue
        options = options_of(evaluation, spec.evaluations.get(evaluation.name), f"evaluations.{evaluation.name}")
        report, markdown = evaluation.run(run_dir, dataset, options, echo)
        write_evaluation(run_dir, evaluation, report, markdown)


CURVE_METRICS = ("rougeL", "bertscore_f1", "ret_r1", "ret_mrr", "distinct2", "usr")


def _curve_scores(run_dir: Path, dataset, bertscore: bool) -> list[dict]:
    """The learning-curve texts (``RUN/curve/stepN.jsonl``, see ``curve_pairs``) scored like a test split: overlap
    and specificity against training pairs seen, one row per step. Retrieval ranks each text's own reference among
    all references of the valid split, so a curve point's chance level does not depend on how many pairs it has."""
    from explainrec.methods.llm_method import CURVE_FOLDER
    from explainrec.metrics import evaluate
    from explainrec.metrics.embedding import SentenceEncoder
    from explainrec.metrics.predictions import load_predictions

    files = sorted((run_dir / CURVE_FOLDER).glob("step*.jsonl"))
    if not files:
        return []
    log = run_dir / "train_log.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    pairs = {int(r["step"]): int(r["pairs"]) for r in rows if r.get("kind") == "valid" and "pairs" in r}
    kw = {"specificity_kwargs": {"encoder": SentenceEncoder(),
                                 "candidates": [e.explanation for e in dataset.split_examples("valid")]}}
    if bertscore:
        from explainrec.metrics.semantic import BertScoreModel

        kw["bertscore_kwargs"] = {"scorer": BertScoreModel()}
    out = []
    for f in files:
        step = int(f.stem.removeprefix("step"))
        metrics = evaluate(load_predictions(f), bertscore=bertscore, buckets=False, **kw)["metrics"]
        out.append({"step": step, "pairs": pairs.get(step), **{k: metrics[k] for k in CURVE_METRICS if k in metrics}})
    return out


def _sensitivity(spec: RunSpec, dataset, run_dir: Path, echo) -> dict:
    """User sensitivity (``RUN/sensitivity.json``/``.md``): the same items explained for other users; returns the
    figures done.json carries (:data:`SENSITIVITY_METRICS`). The run's own texts stand for the originals when the
    precision matches (the control then checks them); float32 by default, where greedy text does not depend on
    the batch it is generated in."""
    from explainrec.io import atomic_write_text
    from explainrec.methods.model_folder import load_run
    from explainrec.methods.sensitivity import to_markdown, user_sensitivity
    from explainrec.metrics.predictions import load_predictions

    path = run_dir / "sensitivity.json"
    if not path.exists():
        options = dict(spec.sensitivity)
        precision = options.pop("precision", "fp32")
        rows = load_predictions(run_dir / "predictions.jsonl") if precision == spec.precision else None
        result = user_sensitivity(load_run(run_dir, precision=precision), dataset, split=spec.split,
                                  generation=spec.generation_config(), original_rows=rows, **options)
        atomic_write_text(run_dir / "sensitivity.md", to_markdown(result, title=f"{spec.method}: user sensitivity"))
        atomic_write_json(path, result)
        echo(f"[bench] {run_dir}: user sensitivity change {result['means']['change']:.2f}, toward the other user's "
             f"profile {result['means']['toward_profile'] or float('nan'):+.2f}")
    means = json.loads(path.read_text())["means"]
    return {key: means[name] for key, name in SENSITIVITY_METRICS.items() if means.get(name) is not None}


def _tuned(spec: RunSpec, dataset, run_dir: Path, bertscore: bool, echo) -> dict:
    """Decoding chosen on the valid split (``RUN/decoding.json``), then the split explained once with it
    (``predictions_tuned.jsonl``, ``metrics_tuned.json``); returns what done.json records."""
    from explainrec.io import atomic_write_json
    from explainrec.methods.decoding_search import choose_decoding, read_decoding
    from explainrec.methods.explain import explain_split
    from explainrec.methods.model_folder import load_run
    from explainrec.metrics import evaluate, save_report
    from explainrec.metrics.predictions import load_predictions

    options = dict(spec.tune_decoding)
    explainer = None
    if not (run_dir / "decoding.json").exists():
        explainer = load_run(run_dir, precision=spec.precision)
        record = choose_decoding(explainer, dataset, spec.generation_config(), limit=options.get("limit", 100),
                                 rule=options.get("rule", "rougeL+bertscore"), grid=options.get("grid", "default"),
                                 bertscore=bertscore, echo=echo)
        atomic_write_json(run_dir / "decoding.json", record)
    record = json.loads((run_dir / "decoding.json").read_text())
    preds = run_dir / "predictions_tuned.jsonl"
    if not preds.exists():
        explainer = explainer or load_run(run_dir, precision=spec.precision)
        explain_split(explainer, dataset, spec.split, limit=spec.limit, out=preds,
                      generation=read_decoding(run_dir / "decoding.json"), progress=False)
    result = evaluate(load_predictions(preds), bertscore=bertscore)
    save_report(result, run_dir / "metrics_tuned.json", title=f"{spec.method}, decoding chosen on valid")
    return {"chosen": record["chosen"], "rule": record["rule"], "metrics": result["metrics"],
            "std": result.get("std", {})}
