"""GaVaMoE stage 2 on the tiny LLaMA: loss, soft tokens, routing per sample, save -> load, explanations."""
from __future__ import annotations

import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.data.collate import IGNORE_INDEX, encode_examples, make_collate
from explainrec.llm.decoding import GenerationConfig
from explainrec.methods.gavamoe.config import GaVaMoEConfig, MoEConfig
from explainrec.methods.gavamoe.explainer import gavamoe_explainer
from explainrec.methods.gavamoe.prompting import gavamoe_prompt
from explainrec.methods.gavamoe.recipe import build_model, select_trainable
from explainrec.methods.gavamoe.vae_gmm import VaeGmm
from explainrec.methods.llm_method import load_llm_for_training

K = 3


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=40, n_items=30, n_types=K, seed=3)


def _model(data, variant="full", seed=0, **moe):
    torch.manual_seed(seed)
    llm, tok, ids = load_llm_for_training("tiny")
    vae = VaeGmm(data.n_users, data.n_items, n_clusters=K, embed_dim=16, latent_dim=8)
    cfg = GaVaMoEConfig(model="tiny", clusters=K,
                        moe=MoEConfig(variant=variant, **{"n_experts": 4, "top_k": 2, "granularity": 2, **moe}))
    model, _ = build_model(cfg, vae, llm, tok, ids)
    return model.eval(), tok, cfg


def _batch(data, tok, cfg, n=4):
    rows = encode_examples(data.split_examples("train")[:n], tok, gavamoe_prompt)
    return make_collate(tok.pad_token_id)(rows)


def _explainer(model, tok, data):
    return gavamoe_explainer(model, tok, data.users, data.items, method="gavamoe", info={})


def _pairs(data, n, split="test"):
    return [data.pair_of(e) for e in data.split_examples(split)[:n]]


def test_loss_parts_and_gradients(data):
    model, tok, cfg = _model(data)
    select_trainable(model, cfg.trainable)
    batch = _batch(data, tok, cfg)
    out = model.train()(**batch)
    assert torch.isfinite(out.loss)
    assert {"nll", "elbo", "recon", "kl", "load_balance", "router_z"} <= set(out.parts)
    expected = (1 - model.alpha) * out.parts["nll"] + model.alpha * out.parts["elbo"]
    expected = expected + model.load_balance_coef * out.parts["load_balance"] + model.router_z_coef * out.parts["router_z"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".mlp.router." in n for n in grads) and any(".mlp.experts." in n for n in grads)
    assert any(n.startswith("user_proj") for n in grads) and any(n.startswith("vae.") for n in grads)
    assert not any(n.startswith("llm.") and ".self_attn." in n for n in grads)  # attention stays frozen by default


def test_labels_cover_only_the_explanation(data):
    model, tok, cfg = _model(data)
    ex = data.split_examples("train")[0]
    batch = _batch(data, tok, cfg, n=1)
    target = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    assert tok.decode(target, skip_special_tokens=True).strip().lower() == tok.decode(
        tok(ex.explanation, add_special_tokens=False)["input_ids"], skip_special_tokens=True).strip().lower()
    assert target[-1].item() == tok.eos_token_id


def test_soft_tokens_reach_the_model(data):
    model, tok, cfg = _model(data)
    batch = _batch(data, tok, cfg, n=2)
    ids = batch["input_ids"]
    assert (ids == model.user_token_id).sum(1).tolist() == [1, 1]
    emb = model.embed(ids, batch["user"], batch["item"])
    pos = (ids[0] == model.user_token_id).nonzero().item()
    u, _ = model.soft_vectors(batch["user"], batch["item"])
    torch.testing.assert_close(emb[0, pos], u[0])
    other = model.embed(ids, (batch["user"] + 1) % data.n_users, batch["item"])
    assert not torch.allclose(emb[0, pos], other[0, pos])


def test_each_sample_routed_by_its_own_cluster(data):
    """In a batch of mixed clusters every sample's output equals its output alone through its own gate, and
    differs from what another gate gives (so a model routing every sample through gate 0 fails)."""
    from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE
    from explainrec.methods.gavamoe.routing import routing

    model, tok, cfg = _model(data, paired_router=False)
    with torch.no_grad():  # gates that disagree strongly, so a wrong gate changes the output
        for m in model.modules():
            if isinstance(m, MultiGatedMoE):
                m.router.weight.normal_(0.0, 2.0)
    batch = _batch(data, tok, cfg, n=4)
    assert torch.equal(model.clusters(batch["user"], batch["item"]),
                       model.clusters(batch["user"], batch["item"]))  # deterministic
    clusters = torch.tensor([0, 1, 2, 1])
    emb = model.embed(batch["input_ids"], batch["user"], batch["item"]).detach()
    mask = batch["attention_mask"]

    def logits(rows, gates):
        with torch.no_grad(), routing(gates):
            return model.llm(inputs_embeds=emb[rows], attention_mask=mask[rows]).logits

    mixed = logits(slice(None), clusters)
    for i in range(4):
        valid = mask[i].bool()
        alone = logits(slice(i, i + 1), clusters[i:i + 1])[0]
        torch.testing.assert_close(mixed[i][valid], alone[valid], rtol=1e-4, atol=1e-4)
        if clusters[i] != 0:
            wrong = logits(slice(i, i + 1), torch.zeros(1, dtype=torch.long))[0]
            assert not torch.allclose(mixed[i][valid], wrong[valid], atol=1e-3), f"sample {i} ignores its gate"


@pytest.mark.parametrize("variant", ["single-gate", "coarse", "base"])
def test_ablation_variants_run(data, variant):
    model, tok, cfg = _model(data, variant)
    out = model(**_batch(data, tok, cfg, n=2))
    assert torch.isfinite(out.loss)
    if variant == "base":
        assert "load_balance" not in out.parts


def _save_load(model, tok, cfg, data, path):
    from explainrec.methods.gavamoe.persist import load_gavamoe, save_gavamoe
    from explainrec.methods.llm_method import load_tokenizer
    from explainrec.methods.model_folder import open_model_folder

    save_gavamoe(model, tok, path, cfg, data, method="gavamoe")
    folder, manifest = open_model_folder(path)
    return load_gavamoe(folder, manifest), load_tokenizer(folder)


def test_router_paired_by_default_only_where_experts_doubly_cover_the_ffn(data, tmp_path):
    from explainrec.methods.gavamoe.moe_ffn import MultiGatedMoE

    def paired(**kw):
        return MoEConfig(**kw).surgery_kwargs(K).get("paired_router", False)

    assert paired() and paired(variant="coarse") and paired(variant="single-gate")  # 8 x 384 top-4; 2 x 1536 top-1
    assert not paired(paired_router=False) and not paired(init="random")
    assert not paired(n_experts=12, top_k=2, granularity=4)  # the paper's 8B layout: neurons not doubly covered
    assert MoEConfig(variant="base").surgery_kwargs(K) is None

    def routers(model):
        return [m.router for m in model.modules() if isinstance(m, MultiGatedMoE)]

    model, tok, cfg = _model(data)
    assert all(r.paired and r.weight.shape[1] == 2 for r in routers(model))  # rows for experts 0, 1 of 4
    # a free-router model (the default before the paired router) saves and loads back as free
    free, tok, cfg = _model(data, paired_router=False)
    assert all(not r.paired and r.weight.shape[1] == 4 for r in routers(free))
    loaded, _ = _save_load(free, tok, cfg, data, tmp_path / "m")
    assert all(not r.paired for r in routers(loaded))
    batch = _batch(data, tok, cfg, n=2)
    with torch.no_grad():
        torch.testing.assert_close(free(**batch).loss, loaded(**batch).loss)


def test_save_load_same_outputs(data, tmp_path):
    model, tok, cfg = _model(data)
    loaded, tok2 = _save_load(model, tok, cfg, data, tmp_path / "m")
    batch = _batch(data, tok, cfg, n=3)
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.loss, b.loss)
    gen = GenerationConfig(max_new_tokens=8, batch_size=2)
    r1 = _explainer(model, tok, data).explain(_pairs(data, 3), gen)
    r2 = _explainer(loaded, tok2, data).explain(_pairs(data, 3), gen)
    assert [r["prediction"] for r in r1] == [r["prediction"] for r in r2]
    assert all(0 <= r["cluster"] < K and len(r["top_experts"]) > 0 for r in r1)


def test_cached_generation_equals_uncached_and_batch_one(data):
    from explainrec.data.prompts import render_prompt
    from explainrec.llm.generate import generate_texts

    model, tok, cfg = _model(data)
    explainer, pairs = _explainer(model, tok, data), _pairs(data, 4)
    cached = [r["prediction"] for r in explainer.explain(pairs, GenerationConfig(max_new_tokens=6, batch_size=4))]
    single = [r["prediction"] for r in explainer.explain(pairs, GenerationConfig(max_new_tokens=6, batch_size=1))]
    prep = explainer.prepare(pairs)
    uncached = generate_texts(model.llm, tok, [render_prompt(tok, gavamoe_prompt(p)) for p in pairs], batch_size=4,
                              max_new_tokens=6, progress=False, hooks=prep.hooks, use_cache=False)
    assert cached == uncached == single


def test_unseen_user_is_cold_start(data):
    from explainrec.data.schema import Pair

    model, tok, cfg = _model(data)
    pair = Pair(user="never-seen-user", item=data.items.decode(data.split_examples("test")[0].item))
    rows = _explainer(model, tok, data).explain([pair], GenerationConfig(max_new_tokens=4))
    assert rows[0]["cold_start"] is True and 0 <= rows[0]["cluster"] < K
