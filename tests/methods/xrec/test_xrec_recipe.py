"""The XRec recipe end to end on the tiny LLaMA: LightGCN -> adaptors -> saved model -> explanations."""
from __future__ import annotations

from explainrec.data import make_synthetic
from explainrec.methods.xrec.recipe import XRecConfig, explain_split, load, train


def test_train_save_load_explain(tmp_path):
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=7)
    cfg = XRecConfig(model="tiny", lightgcn={"epochs": 2, "dim": 16}, max_steps=3, batch_size=4, log_every=1)
    summary = train(data, tmp_path / "run", cfg, progress_bar=False, echo=lambda *_: None)
    assert summary["steps"] == 3 and "recall@20" in {k.lower() for k in summary["lightgcn"]}
    for name in ("lightgcn/lightgcn.json", "model/model.safetensors", "model/xrec.json", "model/id_maps.json",
                 "loss_curves.png", "checkpoint/COMPLETE"):
        assert (tmp_path / "run" / name).exists(), name
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert stored and not any(k.startswith("llm.") for k in stored)  # frozen LLM: rebuilt from its name
    model, tok, users, items, _ = load(tmp_path / "run")
    assert len(users) == data.n_users
    rows, stats = explain_split(tmp_path / "run", data, "test", limit=4, max_new_tokens=5, progress=False)
    again, _ = explain_split(tmp_path / "run", data, "test", limit=4, max_new_tokens=5, progress=False)
    assert len(rows) == 4 and stats.explanations == 4
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in again]
    assert {"bucket", "cold_start", "method"} <= set(rows[0])
