"""explainrec: LLM-based explainable recommendation.

    import explainrec

    model = explainrec.load("runs/g", data="synthetic")      # a run folder from `explainrec train` or train()
    print(model.explain(user="u1", item="i1")["prediction"])

The public API (:mod:`explainrec.api`, docs/python-api.md): :func:`train`, :func:`load` (-> a :class:`Model` whose
``explain`` takes one pair, an iterable of pairs or a data frame), :func:`evaluate`, :func:`load_dataset`, and the
errors they raise, :class:`ConfigError` (a bad setting) and :class:`DataError` (bad data). They are imported on
first use, so ``import explainrec`` and every command's start stay fast.
"""
from typing import TYPE_CHECKING

__version__ = "0.2.0"

__all__ = ["ConfigError", "DataError", "Model", "evaluate", "load", "load_dataset", "train"]

if TYPE_CHECKING:
    from explainrec.api import Model, evaluate, load, load_dataset, train
    from explainrec.config import ConfigError
    from explainrec.data.schema import DataError

_HOMES = {"Model": "explainrec.api", "evaluate": "explainrec.api", "load": "explainrec.api",
          "load_dataset": "explainrec.api", "train": "explainrec.api", "ConfigError": "explainrec.config",
          "DataError": "explainrec.data.schema"}


def __getattr__(name: str):
    """The public API's names, imported on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'explainrec' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
