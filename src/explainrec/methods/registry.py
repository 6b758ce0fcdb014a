"""Method names -> registry entries. The one place that knows which methods exist.

Entries are imported on first use, so ``explainrec --help`` does not pay for torch and transformers. Adding a
method is one folder plus one line here (see docs/adding-a-method.md).
"""
from __future__ import annotations

import importlib
from functools import lru_cache

from explainrec.config import ConfigError

_ENTRIES = {
    "zero-shot": "explainrec.methods.zero_shot.method:ZeroShot",
    "gavamoe": "explainrec.methods.gavamoe.method:GaVaMoE",
    "xrec": "explainrec.methods.xrec.method:XRec",
    "recexplainer": "explainrec.methods.recexplainer.method:RecExplainer",
    "mmp-refer": "explainrec.methods.mmp_refer.method:MMPRefer",
    "vae-gmm": "explainrec.methods.gavamoe.stage1_method:VaeGmmStage",
    "lightgcn": "explainrec.methods.xrec.lightgcn_method:LightGCNStage",
    "recommender": "explainrec.methods.recexplainer.recommender_method:RecommenderStage",
    "mmp-graph": "explainrec.methods.mmp_refer.graph_method:MMPGraphStage",
}


# What commands explain with when given neither a trained run nor --method: the baseline that needs no training.
DEFAULT_UNTRAINED = "zero-shot"


def names() -> list[str]:
    return list(_ENTRIES)


@lru_cache(maxsize=None)
def get(name: str):
    """The registry entry (a :class:`~explainrec.methods.base.Method` instance) called ``name``."""
    target = _ENTRIES.get(name)
    if target is None:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(_ENTRIES)}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)()


def all_methods() -> list:
    return [get(n) for n in _ENTRIES]


def default_untrained():
    """The entry used when a command gets no run folder and no --method (:data:`DEFAULT_UNTRAINED`)."""
    return get(DEFAULT_UNTRAINED)


def report_sections() -> dict:
    """Every bench report section a registered method declares, by name (see
    :class:`~explainrec.methods.base.ReportSection`)."""
    return {section.name: section for m in all_methods() for section in m.report_sections}


def evaluations() -> dict:
    """Every evaluation a registered method declares, by name (see :class:`~explainrec.methods.base.Evaluation`)."""
    return {evaluation.name: evaluation for m in all_methods() for evaluation in m.evaluations}
