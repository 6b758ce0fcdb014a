"""The XRec run folder on the tiny LLaMA: the frozen LLM is rebuilt from its name, LoRA weights are kept."""
from __future__ import annotations

from safetensors.torch import load_file

from explainrec.data import make_synthetic
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods import registry
from explainrec.methods.model_folder import load_run
from explainrec.methods.runs import train_run

QUIET = dict(progress=False, echo=lambda *_: None)


def test_frozen_llm_is_not_saved_and_lora_is(tmp_path):
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=7)
    xrec = registry.get("xrec")
    trained = train_run(xrec, data, tmp_path / "run", xrec.make_config("tiny"), **QUIET)
    assert "recall@20" in trained.summary.metrics["lightgcn"]
    for name in ("lightgcn/model/embeddings.safetensors", "lightgcn/metrics.json", "model/model.safetensors",
                 "model/explainrec.json", "model/id_maps.json", "loss_curves.png", "checkpoint/COMPLETE"):
        assert (tmp_path / "run" / name).exists(), name
    stored = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert stored and not any(k.startswith("llm.") for k in stored)  # frozen LLM: rebuilt from its name

    lora = train_run(xrec, data, tmp_path / "lora", xrec.make_config("tiny", ["lora.r=4"]), **QUIET)
    stored = load_file(str(tmp_path / "lora" / "model" / "model.safetensors"))
    assert any(k.startswith("llm.") for k in stored) and not any("lora_" in k for k in stored)  # merged
    pairs = [data.pair_of(e) for e in data.split_examples("test")[:3]]
    gen = GenerationConfig(max_new_tokens=5)
    assert lora.explainer.explain(pairs, gen) == load_run(tmp_path / "lora").explain(pairs, gen)
