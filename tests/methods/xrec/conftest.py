"""XRec test fixtures."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test on one torch thread, then restore the setting.

    The tests use tiny tensors: on the shared 2-core machine, OpenMP's thread hand-offs cost more than the maths
    (a tiny LightGCN epoch took ~20x longer with 2 threads than with 1 under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
