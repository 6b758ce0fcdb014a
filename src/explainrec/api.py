"""explainrec's Python API: what the command line does, from a notebook or a script (the CLI is a layer over it).

    import explainrec

    model = explainrec.train("gavamoe", data="synthetic", out="runs/g", preset="tiny", clusters=4)
    model = explainrec.load("runs/g", data="synthetic")     # a trained run folder, opened again later
    model.explain(user="17", item="42")                      # one pair -> its row: prediction, cold_start, ...
    model.explain([("17", "42"), {"user": "3", "item": "9"}])   # many: tuples, dicts, Pairs -> a list of rows
    model.explain(frame)                                     # a pandas DataFrame with user and item columns -> one
    zero = explainrec.load("zero-shot", model="tiny")        # a method that needs no training, by name
    explainrec.evaluate(rows)                                # prediction rows (or a predictions file) -> metrics
    explainrec.evaluate("runs/r", extra="alignment", data="synthetic", limit=20)   # an evaluation a method declares

Data is anything ``explainrec train --data`` takes (``"synthetic"``, ``"synthetic:users=300"``, a folder, a .csv or
.jsonl file) or a :class:`~explainrec.data.schema.Dataset` already loaded. Settings are the method's config keys
(``explainrec methods gavamoe`` lists them); a nested one is a mapping (``stage1={"beta": 0.01}``). Everything is
checked before any work: a bad setting raises :class:`~explainrec.config.ConfigError`, bad data
:class:`~explainrec.data.schema.DataError`, each with the one-line message the command line prints.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from explainrec.config import ConfigError

if TYPE_CHECKING:
    from explainrec.data.schema import Dataset, Pair
    from explainrec.llm.decoding import GenerationConfig
    from explainrec.methods.base import Explainer, TrainSummary

PAIR_FIELDS = ("user", "item", "title", "user_profile", "item_profile", "features", "rating")


def load_dataset(data: "str | Path | Dataset", *, trust_pickle: bool = False, seed: int = 0) -> "Dataset":
    """A dataset from anything ``--data`` takes; a :class:`Dataset` is returned as it is."""
    from explainrec.data import load_dataset as read
    from explainrec.data.schema import Dataset

    return data if isinstance(data, Dataset) else read(str(data), trust_pickle=trust_pickle, seed=seed)


@dataclass
class Model:
    """A model that explains pairs: a trained run, or a method that needs no training.

    ``data`` (optional) gives a known pair the text it was trained with (title, profiles, features), exactly as
    ``explainrec explain --data`` does; without it a pair's prompt has the ids and whatever text you pass. ``run``
    is the run folder (None for an untrained method); ``summary`` the training's, when it was trained here.
    """

    explainer: "Explainer | None"
    data: "Dataset | None" = None
    run: Path | None = None
    summary: "TrainSummary | None" = None

    @property
    def method(self) -> str:
        return self.explainer.method if self.explainer is not None else "stage"

    def explain(self, pairs: Any = None, *, user: str | None = None, item: str | None = None,
                generation: "GenerationConfig | Mapping | None" = None, progress: bool = False, **text) -> Any:
        """Explain one pair (``user=``, ``item=`` and optional ``title``, ``user_profile``, ``item_profile``,
        ``features``, ``rating``) -> its row, or many (``pairs``: an iterable of ``(user, item)`` tuples, dicts with
        those keys, :class:`Pair` or :class:`Example` objects, or a data frame with those columns) -> a list of rows
        (a data frame for a data frame). A row holds ``user``, ``item``, ``prediction``, ``cold_start`` and the
        method's extras (GaVaMoE: ``cluster``, ``top_experts``). ``generation``: decoding settings
        (:class:`~explainrec.llm.decoding.GenerationConfig` or a mapping of its keys; greedy by default).

        >>> model.explain(user="17", item="42")["prediction"]   # doctest: +SKIP
        """
        from explainrec.llm.decoding import GenerationConfig

        if self.explainer is None:
            raise ConfigError(f"{self.run}: a stage-only run; it trains for other methods and explains nothing")
        if generation is None or isinstance(generation, Mapping):
            generation = GenerationConfig.from_dict(dict(generation or {}), "generation")
        one = pairs is None
        if one:
            if user is None or item is None:
                raise ConfigError("explain: give user= and item= for one pair, or pairs for many")
            records: list = [{"user": user, "item": item, **text}]
        elif user is not None or item is not None or text:
            raise ConfigError("explain: give either pairs or one pair's user=, item= and text, not both")
        frame = pairs if hasattr(pairs, "to_dict") and hasattr(pairs, "columns") else None
        if frame is not None:
            records = frame.to_dict("records")
        elif not one:
            records = list(pairs)
        rows = self.explainer.explain([self._pair(r) for r in records], generation, progress=progress)
        if one:
            return rows[0]
        return type(frame)(rows) if frame is not None else rows

    def _pair(self, record) -> "Pair":
        """A :class:`Pair` from what :meth:`explain` accepts; a known pair's text from ``data`` unless given."""
        from explainrec.data.schema import Example, Pair

        if isinstance(record, Pair):
            return record
        if isinstance(record, Example):
            if self.data is None:
                raise ConfigError("explain: an Example names its pair by the dataset's row numbers; load the model "
                                  "with data= (or pass Pairs: dataset.pair_of(example))")
            return self.data.pair_of(record)
        if isinstance(record, tuple) and len(record) == 2:
            record = {"user": record[0], "item": record[1]}
        if not isinstance(record, Mapping) or "user" not in record or "item" not in record:
            raise ConfigError(f"explain: a pair is (user, item), a mapping with 'user' and 'item', a Pair or an "
                              f"Example; got {record!r}")
        given = {k: v for k, v in record.items() if v is not None and v == v}  # a data frame's empty cells: NaN
        unknown = set(given) - set(PAIR_FIELDS)
        if unknown:
            raise ConfigError(f"explain: unknown pair field(s) {sorted(unknown)}; expected some of {list(PAIR_FIELDS)}")
        user, item = str(given.pop("user")), str(given.pop("item"))
        pair = self.data.pair(user, item)[0] if self.data is not None else Pair(user=user, item=item)
        if "features" in given:
            given["features"] = tuple(given["features"])
        return Pair(**{**pair.__dict__, **given}) if given else pair


def load(source: str | Path, *, data: "str | Path | Dataset | None" = None, precision: str = "auto",
         trust_pickle: bool = False, **settings) -> Model:
    """A :class:`Model` from a trained run folder (or its ``model/``), or from the name of a method that needs no
    training with its settings (``explainrec.load("zero-shot", model="tiny")``). ``precision``: the generation
    weights (auto: int8 on a CPU, the loaded dtype on a GPU; fp32; int8). ``data``: see :class:`Model`.

    >>> explainrec.load("runs/g", data="synthetic").explain(user="17", item="42")   # doctest: +SKIP
    """
    from explainrec.methods import registry
    from explainrec.methods.model_folder import PRECISIONS, apply_precision, load_run

    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if Path(source).exists():
        if settings:
            raise ConfigError(f"{source}: a run folder brings its own settings; {sorted(settings)} are for a method "
                              "loaded by name")
        explainer, run = load_run(source, precision=precision), Path(source)
    elif str(source) in registry.names():
        method = registry.get(str(source))
        if method.trains:
            raise ConfigError(f"{method.name} needs training: explainrec.train({method.name!r}, data=...) returns "
                              "the trained model (and its run folder, which load() opens later)")
        config = method.make_config(overrides=settings or None, where=f"load({method.name!r})")
        explainer, run = apply_precision(method.untrained(config), precision), None
    else:
        raise ConfigError(f"{source}: neither a run folder nor a registered method ({', '.join(registry.names())})")
    return Model(explainer, data=load_dataset(data, trust_pickle=trust_pickle) if data is not None else None, run=run)


def train(method: str, data: "str | Path | Dataset", *, out: str | Path | None = None,
          preset: str | Path | None = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
          echo: Callable[..., None] = print, trust_pickle: bool = False, command: str | None = None,
          **settings) -> Model:
    """Train a registered method on ``data`` into the run folder ``out`` and return the trained :class:`Model`.

    Settings come from the method's defaults, then ``preset`` (a preset it ships, e.g. ``"tiny"``, ``"cpu"``,
    ``"paper"``, or a YAML file), then ``settings`` (its config keys). Without ``out`` the run goes to a new
    temporary folder (``model.run`` says where). ``resume`` continues the run in ``out``; ``overwrite`` replaces it
    (without either, a folder holding a run is never touched). ``model.summary`` is the training's summary.

    >>> explainrec.train("gavamoe", data="synthetic", preset="tiny", clusters=3).explain(user="1", item="2")  # doctest: +SKIP
    """
    from explainrec.data.readers import data_path
    from explainrec.folders import check_run_folder
    from explainrec.methods import registry
    from explainrec.methods.runs import train_run

    entry = registry.get(method)
    config = entry.make_config(preset, settings or None, where=f"train {method}")  # validated before any work
    if out is None:
        out = tempfile.mkdtemp(prefix=f"explainrec-{entry.name}-")
    out = Path(out)
    inputs = [p for p in (data_path(str(data)) if isinstance(data, (str, Path)) else None,
                          Path(preset) if preset is not None and Path(preset).is_file() else None) if p is not None]
    check_run_folder(out, inputs=inputs)  # before the data is read: a refused folder costs nothing
    dataset = load_dataset(data, trust_pickle=trust_pickle, seed=getattr(config, "seed", 0))
    trained = train_run(entry, dataset, out, config, resume=resume, overwrite=overwrite, progress=progress, echo=echo,
                        inputs=tuple(inputs), command=command or f"explainrec.train({entry.name!r}, out={str(out)!r})")
    return Model(trained.explainer, data=dataset, run=out, summary=trained.summary)


def evaluate(source: "str | Path | Iterable[dict]", *, extra: str | None = None,
             data: "str | Path | Dataset | None" = None, out: str | Path | None = None, overwrite: bool = False,
             bertscore: bool = True, bertscore_model: str = "minilm", bertscore_options: dict | None = None,
             specificity: bool = True, trust_pickle: bool = False, echo: Callable[..., None] = print,
             command: str | None = None, **options) -> dict:
    """Score predictions, or run an evaluation a method declares on one of its runs; return the report.

    Predictions: a predictions file (JSON lines, as ``explain`` writes) or its rows (dicts with ``prediction`` and
    ``reference``; optional ``user``, ``features``, ``bucket``) -> BLEU, ROUGE, Distinct, USR, BERTScore
    (``bertscore_model``: the embedded ``minilm`` or an HF id; ``bertscore_options``: e.g. ``num_layers``,
    ``rescale_with_baseline``), pair retrieval (``specificity``), FMR/FCR/DIV, per bucket.

    ``extra``: the name of an evaluation the run's method declares (``explainrec methods METHOD`` lists them, e.g.
    RecExplainer's ``alignment``); ``source`` is then a run folder, ``data`` the dataset it was trained on and
    ``options`` that evaluation's settings.

    ``out``: a folder to write the report to as well (metrics.json/.md, or NAME.json/.md), checked before any work:
    never an input, never an earlier result unless ``overwrite``.
    """
    from explainrec.data.readers import data_path
    from explainrec.folders import check_output_folder, writing_into

    if extra is None and (options or data is not None):
        raise ConfigError(f"evaluate: {sorted(options) + (['data'] if data is not None else [])} belong to an "
                          "evaluation a method declares: give extra=NAME and a run folder")
    command = command or "explainrec.evaluate()"
    if extra is not None:
        from explainrec.methods.evaluations import declared, options_of, write_evaluation

        if data is None:
            raise ConfigError(f"evaluate(extra={extra!r}) needs data=: the dataset the run was trained on")
        _, evaluation = declared(source, extra)
        chosen = options_of(evaluation, options)
        if out is not None:  # beside the run's model is fine, inside the data is not
            given = data_path(str(data)) if isinstance(data, (str, Path)) else None
            out = check_output_folder(out, writes=evaluation.files, runs=[Path(source)], overwrite=overwrite,
                                      inputs=[given] if given is not None else [])
        report, markdown = evaluation.run(Path(source), load_dataset(data, trust_pickle=trust_pickle), chosen, echo)
        if out is not None:
            with writing_into(out, command=command):
                write_evaluation(out, evaluation, report, markdown)
        return report
    from explainrec.metrics import evaluate as score
    from explainrec.metrics import load_predictions, save_report
    from explainrec.metrics.report import report_paths

    is_file = isinstance(source, (str, Path))
    if out is not None:
        out = check_output_folder(out, writes=[p.name for p in report_paths(Path(out))], overwrite=overwrite,
                                  inputs=[Path(source)] if is_file else [])
    rows = load_predictions(source) if is_file else list(source)
    result = score(rows, bertscore=bertscore, bertscore_model=bertscore_model, bertscore_kwargs=bertscore_options,
                   specificity=specificity)
    if out is not None:
        with writing_into(out, command=command):
            save_report(result, out)
    return result
