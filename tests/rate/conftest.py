"""Fixtures of the rating-study tests: small predictions files on the synthetic data, and a study made from them
(helpers for several test files: rate_helpers.py)."""
from __future__ import annotations

import pytest
from rate_helpers import SYNTHETIC, write_predictions

from explainrec.rate import create_study


@pytest.fixture(scope="session")
def data():
    from explainrec.data import load_dataset

    return load_dataset(SYNTHETIC)


@pytest.fixture
def files(tmp_path, data):
    """Three methods' predictions on the synthetic test split: the reference, the words reversed, a constant."""
    return write_predictions(tmp_path, data)


@pytest.fixture
def study(tmp_path, files, data):
    """A 4-pair study of the three methods (seed 0), with context from the data."""
    return create_study(tmp_path / "study", files, n_pairs=4, seed=0, dataset=data)
