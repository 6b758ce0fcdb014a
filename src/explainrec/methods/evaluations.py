"""A method's own evaluations (:attr:`Method.evaluations`), run on one of its trained run folders.

The evaluation is found through the registry by the method the folder holds, its options are validated like any
settings (defaults, limits, ``KEY=VALUE``) before any work, and its results are written as ``NAME.json`` and
``NAME.md``. ``explainrec evaluate RUN --extra NAME``, :func:`explainrec.evaluate` and the bench all come here.
"""
from __future__ import annotations

from pathlib import Path

from explainrec.config import Config, ConfigError


def declared(run: str | Path, name: str):
    """``(method, evaluation)``: the registry entry of the model in ``run`` and its evaluation ``name``."""
    from explainrec.methods import registry
    from explainrec.methods.model_folder import open_model_folder

    _, manifest = open_model_folder(run)
    method = registry.get(manifest["method"])
    return method, method.evaluation(name)


def options_of(evaluation, settings: list[str] | dict | None = None, where: str | None = None) -> Config:
    """The evaluation's options: its defaults, then ``settings`` (``KEY=VALUE`` strings or a mapping); validated."""
    from explainrec.config import parse_overrides

    values = parse_overrides(settings) if isinstance(settings, list) else dict(settings or {})
    if where is not None:
        return evaluation.options.from_dict(values, where)
    try:
        return evaluation.options.from_dict(values, "")
    except ConfigError as err:
        raise ConfigError(f"evaluation {evaluation.name!r}: {err}") from None


def write_evaluation(folder: Path, evaluation, report: dict, markdown: str) -> tuple[Path, Path]:
    """``FOLDER/NAME.json`` and ``FOLDER/NAME.md`` (each written whole or not at all)."""
    from explainrec.io import atomic_write_json, atomic_write_text

    json_path, md_path = (Path(folder) / f for f in evaluation.files)
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, markdown)
    return json_path, md_path
