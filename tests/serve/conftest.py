"""Fixtures of the server tests: the synthetic data, the tiny zero-shot explainer, a tiny GaVaMoE run (helpers:
serve_helpers.py)."""
from __future__ import annotations

import pytest

from explainrec.methods import registry
from explainrec.methods.runs import train_run

SYNTHETIC = "synthetic:users=30,items=25,types=2"


@pytest.fixture(scope="session")
def data():
    """The data of ``--data synthetic:users=30,items=25,types=2`` (what the browser test's server loads)."""
    from explainrec.data import load_dataset

    return load_dataset(SYNTHETIC)


@pytest.fixture(scope="session")
def zero_shot():
    method = registry.get("zero-shot")
    return method.untrained(method.make_config(overrides={"model": "tiny"}))


@pytest.fixture(scope="session")
def gavamoe_run(tmp_path_factory, data):
    """A tiny GaVaMoE run folder trained on ``data`` (clusters, experts, id maps: cold start is possible)."""
    out = tmp_path_factory.mktemp("serve") / "gavamoe"
    method = registry.get("gavamoe")
    train_run(method, data, out, method.make_config("tiny"), progress=False, echo=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def gavamoe(gavamoe_run):
    from explainrec.methods.model_folder import load_run

    return load_run(gavamoe_run)
