"""RecExplainer test fixtures: small ordered synthetic data and quickly trained recommenders (module-shared)."""
from __future__ import annotations

import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.methods.recexplainer.recommenders import fit_recommender


@pytest.fixture(scope="session")
def small_ds():
    """80 users, 50 items, timestamps (the sequential option)."""
    return make_synthetic(n_users=80, n_items=50, ordered=True, seed=0)


@pytest.fixture(scope="session")
def small_sasrec(small_ds):
    torch.set_num_threads(1)
    return fit_recommender(small_ds, "sasrec", progress=False, epochs=8, dim=16, batch_size=32, seed=0)


@pytest.fixture(scope="session")
def small_mf(small_ds):
    torch.set_num_threads(1)
    return fit_recommender(small_ds, "mf", progress=False, epochs=20, dim=16, batch_size=256, seed=0)
