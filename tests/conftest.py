"""Fixtures shared by every test folder."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_llm():
    """``(model, tokenizer)``: the tiny random Llama from ``load_llm("tiny")`` (float32, CPU, eval, pad != eos).

    Shared by the whole session to keep the suite fast, so do not modify it (no new tokens, no training);
    a test that needs to change the model builds its own with ``load_llm("tiny")``.
    """
    from explainrec.llm.load import load_llm

    return load_llm("tiny", device="cpu")
