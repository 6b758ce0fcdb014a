"""Fixtures shared by every test folder."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test on one torch thread, the setting restored afterwards: the tests use tiny tensors, and on the
    shared 2-core machine OpenMP's hand-offs between threads cost more than the maths (a tiny LightGCN epoch took
    ~20x longer with 2 threads than with 1 under load); one thread also makes in-process reruns reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llm():
    """``(model, tokenizer)``: the tiny random Llama from ``load_llm("tiny")`` (float32, CPU, eval, pad != eos).

    Shared by the whole session to keep the suite fast, so do not modify it (no new tokens, no training);
    a test that needs to change the model builds its own with ``load_llm("tiny")``.
    """
    from explainrec.llm.load import load_llm

    return load_llm("tiny", device="cpu")
