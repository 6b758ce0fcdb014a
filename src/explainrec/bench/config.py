"""Bench configs (YAML or TOML): datasets x runs x seeds -> one :class:`RunSpec` and folder per run.

    name: paper                      # the report's title
    out: runs/bench/paper            # run folders: OUT/<dataset>/<run>/seed<k>
    datasets: {amazon: ../shared/data/xrec/amazon, google: ../shared/data/xrec/google}
    seeds: [0]
    split: test                      # the split explained and scored
    limit: null                      # explain only the first N pairs (null: all)
    bertscore: true
    generation: {batch_size: 16, max_new_tokens: 80}
    defaults:                        # merged (recursively) into the options of every run of that method
      xrec: {max_minutes: 20}
    runs:                            # run name -> method and options (the method's config fields); a run may
      zero-shot: {method: zero-shot, seeds: [0]}    # narrow the seeds or the datasets it runs on
      xrec: {method: xrec}
      xrec-lora: {method: xrec, options: {lora: {r: 8}}}
    experiments:                     # which tables and figures the report holds, over which runs
      main: [zero-shot, xrec, xrec-lora]

Experiment kinds: the bench's own (:data:`EXPERIMENTS`): ``main`` (Table 2: runs x metrics), ``ablation`` (Figure
3: table and bar chart), ``sparsity`` (Figure 4: metrics per user-activity bucket ds1/ds2/ds3), ``decoding`` (greedy
against the decoding chosen on valid), ``curves`` (validation NLL and curve texts against training pairs seen); and
every section a registered method declares (:attr:`Method.report_sections`; ``explainrec methods METHOD`` lists
them). ``description`` (free text) opens the report; ``jobs`` (default 1) is how many runs go at once, each in its
own process (``--jobs`` overrides it); ``keep_checkpoints: false`` deletes a run's training checkpoint (weights +
optimizer state, the largest files) once the run is done; ``precision`` (auto = int8 on CPU | fp32 | int8) sets the
generation weights. ``evaluations`` (``{NAME: {option: value}}``) sets the options of the evaluations methods declare
(:attr:`Method.evaluations`): every run of a method runs each evaluation it declares, with these options. Any
registered method may be a run's ``method`` (``explainrec methods``), stage-only ones too; its ``options`` are that
method's settings. ``tune_decoding`` (``limit``, ``rule``,
``grid``) chooses each run's decoding on the valid split and applies it once to the split (experiment kind
``decoding``; when that experiment lists runs, only those search). ``sensitivity`` (``n``, ``seed``, ``precision``:
fp32 by default) explains ``n`` test items again for other users (:mod:`explainrec.methods.sensitivity`); its
change and move toward the other user sit beside the text metrics.

A relative ``out`` or dataset folder is taken from the directory the command runs in, so the shipped configs
work from the repository root.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from explainrec.bench.runner import RunSpec
from explainrec.config import ConfigError
from explainrec.config import merge_dicts

TOP_KEYS = {"name", "description", "out", "datasets", "seeds", "split", "limit", "bertscore", "generation", "defaults",
            "runs", "experiments", "jobs", "keep_checkpoints", "precision", "evaluations", "tune_decoding",
            "sensitivity"}
EXPERIMENTS = ("main", "ablation", "sparsity", "decoding", "curves")  # the bench's own; methods declare more


@dataclass
class PlannedRun:
    """One cell of the grid: where it lives and what it is."""

    dataset: str
    run: str
    seed: int
    spec: RunSpec
    run_dir: Path


def load_config(path: str | Path) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) bench config and check its top-level shape."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            cfg = tomllib.loads(text)
        else:
            import yaml

            cfg = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 -- the parsers' own errors carry the line
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = set(cfg) - TOP_KEYS
    from explainrec.methods import registry

    moved = sorted(unknown & set(registry.evaluations()))
    if moved:  # how configs said it before methods declared their evaluations
        raise ConfigError(f"{path}: {', '.join(moved)}: an evaluation's options now go under 'evaluations' "
                          f"(evaluations: {{{moved[0]}: {{...}}}}), the evaluations that methods declare")
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(TOP_KEYS)}")
    for key in ("datasets", "runs"):
        if not isinstance(cfg.get(key), dict) or not cfg[key]:
            raise ConfigError(f"{path}: field '{key}' must be a non-empty mapping")
    for name, run in cfg["runs"].items():
        if not isinstance(run, dict) or "method" not in run:
            raise ConfigError(f"{path}: runs.{name} needs a 'method'")
        extra = set(run) - {"method", "options", "seeds", "datasets"}
        if extra:
            raise ConfigError(f"{path}: runs.{name}: unknown key(s) {sorted(extra)} "
                              "(expected method, options, seeds, datasets)")
        if run.get("options") is not None and not isinstance(run["options"], dict):
            raise ConfigError(f"{path}: runs.{name}.options must be a mapping")
        _check_seeds(run.get("seeds"), f"{path}: runs.{name}.seeds")
        only = run.get("datasets")
        if only is not None and (not isinstance(only, list) or not only or set(only) - set(cfg.get("datasets") or {})):
            raise ConfigError(f"{path}: runs.{name}.datasets must be a non-empty list of names from 'datasets' "
                              f"({list(cfg.get('datasets') or {})})")
    for key in ("datasets", "runs"):
        for name in cfg[key]:
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise ConfigError(f"{path}: {key}.{name}: names are folder names (no '/', no leading '.')")
    _check_seeds(cfg.get("seeds"), f"{path}: field 'seeds'")
    from explainrec.methods.explain import normalise_split

    try:
        cfg["split"] = normalise_split(cfg.get("split", "test"))
    except ConfigError as err:
        raise ConfigError(f"{path}: split: {err}") from None
    for key in ("bertscore", "keep_checkpoints"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ConfigError(f"{path}: field '{key}' must be true or false, got {cfg[key]!r}")
    _check_count(cfg.get("limit"), f"{path}: field 'limit'")
    jobs = cfg.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ConfigError(f"{path}: field 'jobs' must be a positive integer (runs at a time)")
    for key in ("generation", "defaults", "experiments"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ConfigError(f"{path}: field '{key}' must be a mapping")
    from explainrec.llm.decoding import GenerationConfig

    GenerationConfig.from_dict(cfg.get("generation") or {}, f"{path}: generation")
    tune = cfg.get("tune_decoding") or {}
    if not isinstance(tune, dict) or set(tune) - {"limit", "rule", "grid"}:
        raise ConfigError(f"{path}: tune_decoding: expected a mapping with keys among ['grid', 'limit', 'rule']")
    from explainrec.methods.decoding_search import GRIDS, JOINT_RULES, RULES

    if tune.get("rule", "rougeL+bertscore") not in (*RULES, *JOINT_RULES):
        raise ConfigError(f"{path}: tune_decoding.rule: expected one of {', '.join((*RULES, *JOINT_RULES))}")
    if tune.get("grid", "default") not in GRIDS:
        raise ConfigError(f"{path}: tune_decoding.grid: expected one of {', '.join(GRIDS)}")
    _check_count(tune.get("limit"), f"{path}: tune_decoding.limit")
    sensitivity = cfg.get("sensitivity") or {}
    if not isinstance(sensitivity, dict) or set(sensitivity) - {"n", "seed", "precision"}:
        raise ConfigError(f"{path}: sensitivity: expected a mapping with keys among ['n', 'precision', 'seed']")
    _check_count(sensitivity.get("n"), f"{path}: sensitivity.n")
    _check_count(sensitivity.get("seed"), f"{path}: sensitivity.seed", least=0)
    from explainrec.methods.model_folder import PRECISIONS

    if sensitivity.get("precision", "fp32") not in PRECISIONS:
        raise ConfigError(f"{path}: sensitivity.precision: expected one of {', '.join(PRECISIONS)}")
    _check_evaluations(cfg, path)
    _check_experiments(cfg, path)
    cfg["_path"] = str(path)
    return cfg


def _check_count(value, where: str, least: int = 1) -> None:
    """An optional whole number of at least ``least`` (a limit, a count, a seed)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
        raise ConfigError(f"{where} must be a whole number >= {least}, got {value!r}")


def _check_seeds(seeds, where: str) -> None:
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{where} must be a non-empty list of integers, e.g. [0, 1, 2]")


def _check_evaluations(cfg: dict, path: Path) -> None:
    """``evaluations``: a mapping from evaluations that registered methods declare to their valid options."""
    from explainrec.methods import registry
    from explainrec.methods.evaluations import options_of

    chosen = cfg.get("evaluations") or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"{path}: field 'evaluations' must be a mapping (evaluation name -> its options)")
    declared = registry.evaluations()
    for name, options in chosen.items():
        if name not in declared:
            raise ConfigError(f"{path}: evaluations.{name}: no registered method declares it; declared: "
                              f"{sorted(declared) or 'none'}")
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"{path}: evaluations.{name} must be a mapping of its options")
        options_of(declared[name], options, f"{path}: evaluations.{name}")


def experiment_kinds() -> list[str]:
    """What ``experiments:`` may name: the bench's own kinds, then every section a registered method declares."""
    from explainrec.methods import registry

    return [*EXPERIMENTS, *registry.report_sections()]


def _check_experiments(cfg: dict, path: Path) -> None:
    kinds = experiment_kinds()
    for kind, names in (cfg.get("experiments") or {}).items():
        if kind not in kinds:
            raise ConfigError(f"{path}: experiments.{kind}: unknown experiment; choose from {kinds}")
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{path}: experiments.{kind} must be a non-empty list of run names")
        missing = [n for n in names if n not in cfg["runs"]]
        if missing:
            raise ConfigError(f"{path}: experiments.{kind}: run(s) {missing} are not in 'runs' "
                            f"(runs: {list(cfg['runs'])})")


def out_dir(cfg: dict) -> Path:
    """The config's output folder: ``out``, else runs/bench/<name>."""
    return Path(cfg.get("out") or f"runs/bench/{cfg.get('name', 'bench')}")


def plan(cfg: dict) -> list[PlannedRun]:
    """Every (dataset, run, seed) of the config, with its spec and folder, in config order."""
    out = out_dir(cfg)
    from explainrec.methods import registry

    defaults = cfg.get("defaults") or {}
    path = cfg.get("_path", "config")
    for method, options in defaults.items():
        try:
            entry = registry.get(method)
        except ConfigError as exc:
            raise ConfigError(f"{path}: defaults.{method}: {exc}") from None
        if not isinstance(options, dict):
            raise ConfigError(f"{path}: defaults.{method} must be a mapping of options")
        entry.config_class.from_dict(options, f"{path}: defaults.{method}")  # unknown key or bad value: named here
    planned = []
    for ds_name, data in cfg["datasets"].items():
        for run_name, run in cfg["runs"].items():
            if ds_name not in (run.get("datasets") or cfg["datasets"]):
                continue
            for seed in run.get("seeds") or cfg.get("seeds") or [0]:
                options = merge_dicts(defaults.get(run["method"]) or {}, run.get("options") or {})
                try:
                    spec = RunSpec(data=str(data), method=run["method"], seed=int(seed), options=options,
                                   generation=dict(cfg.get("generation") or {}), split=cfg.get("split", "test"),
                                   limit=cfg.get("limit"), precision=cfg.get("precision", "auto"),
                                   evaluations=dict(cfg.get("evaluations") or {}),
                                   tune_decoding=_tune_decoding(cfg, run_name),
                                   sensitivity=dict(cfg.get("sensitivity") or {}))
                except ConfigError as exc:
                    raise ConfigError(f"{path}: runs.{run_name}: {exc}") from None
                spec.config(f"{path}: runs.{run_name}.options")  # every run's settings checked before any run starts
                planned.append(PlannedRun(ds_name, run_name, int(seed), spec,
                                          out / ds_name / run_name / f"seed{seed}"))
    return planned


def _tune_decoding(cfg: dict, run_name: str) -> dict:
    """The decoding search of a run: the config's ``tune_decoding``, for the runs of the ``decoding`` experiment
    when it lists them (else every run)."""
    chosen = (cfg.get("experiments") or {}).get("decoding")
    return dict(cfg.get("tune_decoding") or {}) if chosen is None or run_name in chosen else {}


def describe(planned: list[PlannedRun]) -> str:
    """One line per run, for logs and dry runs."""
    return "\n".join(f"{p.dataset}/{p.run}/seed{p.seed}: {p.spec.method} {json.dumps(p.spec.options, sort_keys=True)}"
                     for p in planned)
