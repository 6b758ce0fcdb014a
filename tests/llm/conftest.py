"""Fixtures of the LLM-layer tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_xrec():
    """``(model, tokenizer, examples)``: a fresh XRec model on the tiny LLM whose adaptors have non-trivial random
    weights (so the per-layer injection changes the output), and synthetic examples whose ids fit its tables."""
    from explainrec.data import make_synthetic
    from explainrec.llm.load import load_llm
    from explainrec.methods.xrec.modeling import XRecModel

    llm, tok = load_llm("tiny", device="cpu")
    uid, iid = XRecModel.prepare_tokenizer(llm, tok)
    gen = torch.Generator().manual_seed(0)
    model = XRecModel(llm, torch.randn(20, 8, generator=gen), torch.randn(15, 8, generator=gen),
                      user_token_id=uid, item_token_id=iid).eval()
    with torch.no_grad():
        for ad in (model.user_adaptor, model.item_adaptor):
            ad.weight.normal_(0.0, 0.3, generator=gen)
    return model, tok, make_synthetic(n_users=20, n_items=15, n_types=2, seed=1).examples
