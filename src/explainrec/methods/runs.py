"""Training a registered method into a run folder: the folder policy, the upstream stages, the resolved config.

    RUN/config.yaml          the method and the resolved config the run was started with
    RUN/<stage>/             each upstream stage (its own run folder: model/, checkpoint/, reports)
    RUN/checkpoint/          the method's last training state (``resume=True`` continues it)
    RUN/model/               the finished model (explainrec.json + weights): what load_run opens
    RUN/train_summary.json   the TrainSummary: seconds, steps, epochs, the method's figures (a stage has its own)

A folder that already holds a run is continued only with ``resume=True`` and replaced only with
``overwrite=True``; a stage found in the folder is reused only when it was trained with the same settings on the
same data, otherwise the run stops and says so.

Under ``accelerate launch`` every process runs these checks, but only the main process writes (the run folder, its
config, the stages) while the others wait for it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from explainrec.config import Config, ConfigError
from explainrec.methods.base import Method, StageUse, TrainSummary
from explainrec.methods.model_folder import MANIFEST, data_fingerprint, find_model_folder, read_manifest

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "train_summary.json"
RUN_MARKERS = ("config.yaml", "checkpoint", "model", SUMMARY_FILE)


class RunFolderError(ConfigError):
    """The output folder holds something this command must not silently continue or replace."""


def _process():
    from explainrec.training.loop import process_state

    return process_state()


def holds_run(out: Path) -> bool:
    return any((out / m).exists() for m in RUN_MARKERS)


# What explainrec wrote into run folders before they carried an ownership marker: a folder from then is adopted
# (its entries counted as the tool's) when it holds a run; anything else in it stays the user's.
_LEGACY_FILES = (*RUN_MARKERS, "train_log.jsonl", "loss_curves.png", "curve", "manifest.json", "history.json",
                 "metrics.json", "clusters.csv", "latent.png", "loss.png")


def legacy_entries(names: list[str]) -> list[str]:
    """Of a marker-less folder's entries, those an older explainrec's training wrote (none unless it holds a run)."""
    from explainrec.methods import registry

    if not any(n in RUN_MARKERS for n in names):
        return []
    stages = {use.folder for m in registry.all_methods() for use in m.stages(m.config_class())}
    return [n for n in names if n in _LEGACY_FILES or n in stages or n.startswith((".checkpoint.", ".model."))]


def check_out_policy(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Refuse what the flags do not allow (a run continued without --resume, replaced without --overwrite, a
    --resume with nothing to continue); return whether a run is there to replace."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: is a file; --out takes a folder")
    if out.exists() and holds_run(out):
        if not (resume or overwrite):
            raise RunFolderError(f"{out}: already holds a run ({', '.join(m for m in RUN_MARKERS if (out / m).exists())}); "
                                 "pass --resume to continue it or --overwrite to start it again")
        return overwrite
    if resume and not (out / CONFIG_FILE).exists():
        raise RunFolderError(f"{out}: --resume, but there is no run to continue (no {CONFIG_FILE}); drop --resume")
    return False


def prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready for training, refusing to lose work: see the module docstring.

    ``overwrite`` removes only what explainrec wrote there (:func:`explainrec.folders.remove_owned`).
    """
    from explainrec.folders import check_writable_folder, remove_owned

    out = Path(out)
    replace = check_out_policy(out, resume=resume, overwrite=overwrite)
    state = _process()
    if state.is_main_process:
        if replace:
            remove_owned(out)
        check_writable_folder(out)
    state.wait_for_everyone()


def data_identity(dataset) -> dict:
    """What ``RUN/config.yaml`` records of the data a run trains on: its name, the fingerprint of its id maps and
    of its content (every interaction, pair, text and split), so that ``--resume`` never continues on other data."""
    from explainrec.data.schema import content_fingerprint
    from explainrec.methods.model_folder import data_record

    return {**data_record(dataset), "content": content_fingerprint(dataset)}


def write_run_config(out: Path, method: Method, cfg: Config, *, resume: bool, dataset=None) -> None:
    """``RUN/config.yaml``; on resume the saved one must agree with ``cfg`` except for budgets, and with the data
    (when both record it)."""
    import yaml

    from explainrec.io import atomic_write_text

    file = out / CONFIG_FILE
    record = {"method": method.name, "config": cfg.to_dict()}
    if dataset is not None:
        record["data"] = data_identity(dataset)
    if resume and file.exists():
        try:
            saved = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise RunFolderError(f"{file}: not valid YAML ({err})") from None
        if saved.get("method") != method.name:
            raise RunFolderError(f"{file}: this folder holds a {saved.get('method')!r} run, not {method.name!r}")
        diffs = _diff(saved.get("config") or {}, record["config"], set(type(cfg).RESUMABLE))
        if diffs:
            raise RunFolderError(f"{file}: --resume with other settings than the run was started with "
                                 f"({'; '.join(diffs)}); only budgets ({', '.join(type(cfg).RESUMABLE) or 'none'}) "
                                 "may change -- start a new run with --out elsewhere or --overwrite")
        was, now = (saved.get("data") or {}), record.get("data") or {}
        if was.get("content") and now.get("content") and was["content"] != now["content"]:
            raise RunFolderError(f"{file}: --resume on other data: the run was started on {was.get('name')!r} "
                                 f"(content {was['content']}), this is {now.get('name')!r} (content {now['content']}); "
                                 "resume with the data it was started with, or start a new run elsewhere")
    state = _process()
    if state.is_main_process:
        atomic_write_text(file, yaml.safe_dump(record, sort_keys=False))
    state.wait_for_everyone()


def _diff(saved: dict, wanted: dict, ignore: set[str], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, "<missing>"), wanted.get(key, "<missing>")
        if prefix + key in ignore or key not in saved:  # a setting added since the run started: its current value
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, ignore, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: was {a!r}, now {b!r}")
    return out


# ---------------------------------------------------------------------------------------------------- stages


def stage_key(use: StageUse, data_spec: str) -> tuple:
    """What decides a stage's result: the method, its config and the data; equal keys -> shareable folders."""
    import json

    return use.method, json.dumps(use.config.to_dict(), sort_keys=True), str(data_spec)


def stage_is_done(folder: Path) -> bool:
    return (folder / "model" / MANIFEST).is_file()


def ensure_stage(use: StageUse, dataset, run_dir: Path, *, resume: bool, progress: bool, echo) -> Path:
    """The stage's folder, trained now unless it is already there with the same settings and data."""
    from explainrec.methods import registry

    folder = run_dir / use.folder
    stage = registry.get(use.method)
    if stage_is_done(folder):
        manifest = read_manifest(find_model_folder(folder))
        wanted = use.config.to_dict()
        diffs = _diff(manifest.get("config") or {}, wanted, set())
        if manifest.get("method") != use.method or diffs:
            raise RunFolderError(
                f"{folder}: this {use.method} stage was trained with other settings than the run asks for "
                f"({'; '.join(diffs) or manifest.get('method')}); use a fresh --out, or --overwrite to retrain it")
        fp = (manifest.get("data") or {}).get("fingerprint")
        if fp != data_fingerprint(dataset.users, dataset.items):
            raise RunFolderError(f"{folder}: this {use.method} stage was trained on other data "
                                 f"({(manifest.get('data') or {}).get('name')!r}); use a fresh --out")
        return folder
    state = _process()
    if state.is_main_process:  # a stage is small next to the LLM: one process trains it, the others wait
        echo(f"[{use.method}] training the {use.folder} stage -> {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        trained = stage.train(dataset, folder, use.config, stages={}, resume=resume, progress=progress, echo=echo)
        write_summary(folder, trained.summary)
    state.wait_for_everyone()
    return folder


def write_summary(folder: Path, summary: TrainSummary) -> None:
    """``FOLDER/train_summary.json``: the one place every method's and stage's summary is written (main process)."""
    from explainrec.io import atomic_write_json

    if _process().is_main_process:
        atomic_write_json(Path(folder) / SUMMARY_FILE, summary.to_dict())


def read_summary(folder: Path, *, stage: bool = False) -> TrainSummary | None:
    """The :class:`TrainSummary` of a run folder, or with ``stage`` of a stage folder (one trained before summaries
    were written has its ``metrics.json`` read in its place). None when there is none (or it is unreadable)."""
    import json

    for name in (SUMMARY_FILE, "metrics.json") if stage else (SUMMARY_FILE,):
        try:
            return TrainSummary.from_dict(json.loads((Path(folder) / name).read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue
    return None


def check_training(method: Method, dataset, cfg: Config) -> None:
    """Everything training would reject (the method's and each stage's :meth:`~Method.check`), before any work."""
    from explainrec.methods import registry

    method.check(dataset, cfg)
    for use in method.stages(cfg):
        registry.get(use.method).check(dataset, use.config)


def run_session(out: Path, command: str):
    """The run folder's writer session (lock + ownership marker) on the main process; nothing on the others,
    which never write."""
    from contextlib import nullcontext

    from explainrec.folders import session

    if not _process().is_main_process:
        return nullcontext(out)
    return session(out, kind="run", accept=("harness",), command=command, adopt=legacy_entries)


def _worth_keeping(out: Path) -> bool:
    """Whether a run folder holds trained work (a checkpoint or model of the run or of one of its stages)."""
    folders = [out] + [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    return any((f / name).exists() for f in folders for name in ("checkpoint", "model", ".checkpoint.old"))


def _undo_aborted_start(out: Path, before: set[str]) -> None:
    """A start that failed before anything was trained removes what it wrote (config.yaml, empty stage folders),
    so that the corrected command runs without --resume or --overwrite."""
    from explainrec.folders import entries

    if _worth_keeping(out) or not _process().is_main_process:
        return
    for name in set(entries(out)) - before:
        path = out / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def train_run(method: Method, dataset, out: str | Path, cfg: Config, *, resume: bool = False,
              overwrite: bool = False, progress: bool = True, echo=print, inputs: tuple[Path, ...] = (),
              command: str | None = None):
    """Train ``method`` into ``out`` (stages first); return its :class:`~explainrec.methods.base.Trained`.

    Before any work: the folder may be a run folder (:func:`explainrec.folders.check_run_folder`, ``inputs``: the
    data and config files it must not hold) and the data and settings pass :func:`check_training`. Then, holding
    the folder's lock, the run starts, continues or replaces what explainrec wrote there. A start that fails before
    anything was trained leaves the folder as it found it.
    """
    from explainrec.folders import check_run_folder, entries

    out = Path(out)
    check_run_folder(out, inputs=inputs)
    check_out_policy(out, resume=resume, overwrite=overwrite)
    check_training(method, dataset, cfg)
    created = not out.exists()
    try:
        with run_session(out, command or f"explainrec train {method.name} --out {out}"):
            before = set(entries(out))
            try:
                prepare_out(out, resume=resume, overwrite=overwrite)
                if overwrite:
                    before = set(entries(out))
                write_run_config(out, method, cfg, resume=resume, dataset=dataset)
                stages = {use.folder: ensure_stage(use, dataset, out, resume=resume, progress=progress, echo=echo)
                          for use in method.stages(cfg)}
                trained = method.train(dataset, out, cfg, stages=stages, resume=resume, progress=progress, echo=echo)
                write_summary(out, trained.summary)
                return trained
            except BaseException:
                _undo_aborted_start(out, before)
                raise
    except BaseException:
        if created and out.is_dir() and not entries(out) and _process().is_main_process:
            shutil.rmtree(out, ignore_errors=True)  # a folder this call made, left empty: as if it never ran
        raise
