"""MMPReferModel on the tiny LLM: forward/backward, training lowers the loss, the soft prompt matters,
generation through embed_fn, a peft (LoRA) LLM, placeholder checks, and the run_loop contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.data.prompts import render_prompt
from explainrec.llm.generate import generate_texts
from explainrec.llm.hooks import GenerationHooks
from explainrec.llm.load import load_llm
from explainrec.methods.mmp_refer.batching import encode_rows, make_collate, pair_graph, stack_graphs
from explainrec.methods.mmp_refer.config import GraphPromptConfig, PathConfig
from explainrec.methods.mmp_refer.modeling import MMPReferModel, splice_tokens
from explainrec.methods.mmp_refer.paths import TrainGraph, find_paths
from explainrec.methods.mmp_refer.prompting import NodeTexts, mmp_prompt

K = 2
CFG = GraphPromptConfig(hidden=16, heads=2, max_neighbours=3, soft_tokens=2, max_profile_words=4, dropout=0.0)
PATHS = PathConfig(k=K, cost="degree")


@pytest.fixture(scope="module")
def world():
    ds = make_synthetic(n_users=30, n_items=20, n_types=2, seed=2)
    graph = TrainGraph.from_dataset(ds)
    paths = find_paths(graph, [(e.user, e.item) for e in ds.examples], PATHS)
    vectors = torch.randn(ds.n_users + ds.n_items, 8, generator=torch.Generator().manual_seed(0))
    return ds, graph, paths, vectors, NodeTexts.from_dataset(ds)


def build(world, *, llm=None, tokenizer=None, freeze=True):
    ds, _, _, vectors, _ = world
    if llm is None:
        llm, tokenizer = load_llm("tiny", device="cpu")
    token = MMPReferModel.prepare_tokenizer(llm, tokenizer)
    torch.manual_seed(0)
    model = MMPReferModel(llm, vectors, ds.n_users, graph_token_id=token, k=K, cfg=CFG, freeze_llm=freeze)
    return model, tokenizer


def prompt_fn(texts):
    return lambda ex, p: mmp_prompt(ex, p, texts, soft_tokens=CFG.soft_tokens, max_words=CFG.max_profile_words)


def batch_of(world, tokenizer, examples):
    _, graph, paths, _, texts = world
    rows = encode_rows(examples, tokenizer, prompt_fn(texts), paths, graph, k=K, width=PATHS.max_hops + 1,
                       max_neighbours=CFG.max_neighbours, max_prompt_tokens=300)
    return make_collate(tokenizer.pad_token_id)(rows)


def test_batch_layout(world):
    model, tokenizer = build(world)
    ds = world[0]
    batch = batch_of(world, tokenizer, ds.split_examples("train")[:3])
    assert batch["path_nodes"].shape == (3, K, PATHS.max_hops + 1)
    assert batch["path_nbrs"].shape == (3, K, PATHS.max_hops + 1, CFG.max_neighbours)
    assert batch["path_nodes"].dtype == torch.long
    assert ((batch["input_ids"] == model.graph_token_id).sum(1) == CFG.soft_tokens).all()
    ex = ds.split_examples("train")[0]
    assert batch["path_nodes"][0, 0, 0] == ex.user  # paths start at the pair's user


def test_training_steps_lower_the_loss_and_train_only_the_graph_prompt(world):
    model, tokenizer = build(world)
    batch = batch_of(world, tokenizer, world[0].split_examples("train")[:4])
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    params = model.trainable_parameters()
    prompt_params = {id(p) for p in model.graph_prompt.parameters()}
    assert params and all(id(p) in prompt_params for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    model.eval()
    with torch.no_grad():
        start = model(**batch).loss.item()
    model.train()
    for _ in range(12):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert set(out.parts) == {"nll"} and not out.parts["nll"].requires_grad
    model.eval()
    with torch.no_grad():
        end = model(**batch).loss.item()
    print(f"loss {start:.4f} -> {end:.4f}")
    assert end < start - 0.05
    assert all(torch.equal(v, llm_before[k]) for k, v in model.llm.state_dict().items())


def test_the_soft_prompt_reaches_the_llm(world):
    model, tokenizer = build(world)
    model.eval()
    batch = batch_of(world, tokenizer, world[0].split_examples("train")[:2])
    with torch.no_grad():
        a = model(**batch).loss
        other = dict(batch)
        other["path_nodes"] = torch.flip(batch["path_nodes"], [0])  # swap the two pairs' paths
        other["path_nbrs"] = torch.flip(batch["path_nbrs"], [0])
        b = model(**other).loss
        no_labels = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**no_labels).logits
    assert not torch.allclose(a, b) and logits.shape[:2] == batch["input_ids"].shape
    embeds = model.embed(batch["input_ids"], batch)
    soft = model.soft_tokens(batch["path_nodes"], batch["path_nbrs"])
    pos = (batch["input_ids"][0] == model.graph_token_id).nonzero().flatten()
    assert torch.allclose(embeds[0, pos], soft[0])


def test_splice_needs_exactly_the_soft_tokens():
    emb = torch.zeros(2, 5, 3)
    ids = torch.tensor([[1, 9, 9, 2, 0], [9, 1, 2, 9, 0]])
    vecs = torch.arange(12, dtype=torch.float).view(2, 2, 3)
    out = splice_tokens(emb, ids, 9, vecs)
    assert torch.equal(out[0, 1], vecs[0, 0]) and torch.equal(out[0, 2], vecs[0, 1])
    assert torch.equal(out[1, 0], vecs[1, 0]) and torch.equal(out[1, 3], vecs[1, 1]) and out[1, 1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"exactly 2 <\|graph_emb\|> token\(s\); found \[2, 1\]"):
        splice_tokens(emb, torch.tensor([[9, 9, 0, 0, 0], [9, 0, 0, 0, 0]]), 9, vecs)


def test_generation_through_embed_fn_matches_one_by_one(world):
    model, tokenizer = build(world)
    model.eval()
    ds, graph, paths, _, texts = world
    examples = ds.split_examples("test")[:3]
    prompts = [render_prompt(tokenizer, prompt_fn(texts)(e, paths.get(e.user, e.item))) for e in examples]
    graphs = stack_graphs([dict(zip(("path_nodes", "path_nbrs"), pair_graph(
        graph, paths.get(e.user, e.item), e.user, e.item, k=K, width=PATHS.max_hops + 1,
        max_neighbours=CFG.max_neighbours))) for e in examples])
    together = generate_texts(model.llm, tokenizer, prompts, hooks=GenerationHooks(embed_fn=model.embed_fn(graphs)),
                              max_new_tokens=6, batch_size=3, progress=False)
    alone = [generate_texts(model.llm, tokenizer, [p], max_new_tokens=6, progress=False, hooks=GenerationHooks(
                            embed_fn=model.embed_fn({k: v[i: i + 1] for k, v in graphs.items()})))[0]
             for i, p in enumerate(prompts)]
    assert together == alone and all(together)
    plain = generate_texts(model.llm, tokenizer, prompts, max_new_tokens=6, batch_size=3, progress=False)
    assert plain != together  # without embed_fn the placeholder keeps its own (untrained) embedding


def test_a_lora_wrapped_llm_trains_its_adapters(world):
    from peft import LoraConfig, get_peft_model

    llm, tokenizer = load_llm("tiny", device="cpu")
    MMPReferModel.prepare_tokenizer(llm, tokenizer)
    peft_llm = get_peft_model(llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model, _ = build(world, llm=peft_llm, tokenizer=tokenizer, freeze=False)
    batch = batch_of(world, tokenizer, world[0].split_examples("train")[:2])
    model.train()
    out = model(**batch)
    out.loss.backward()
    lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for n, p in model.llm.named_parameters() if "lora_" not in n)
    assert model.graph_prompt.adapter.weight.grad is not None


def test_run_loop_contract(world, tmp_path):
    """One epoch through the shared training loop: forward(**batch) -> .loss/.parts, checkpoint, log."""
    from dataclasses import asdict, dataclass

    from explainrec.training.loop import make_accelerator, run_loop

    @dataclass
    class Settings:
        lr: float = 1e-2
        weight_decay: float = 0.0
        epochs: int = 1
        batch_size: int = 2
        grad_accum: int = 1
        clip: float = 1.0
        max_minutes: float | None = None
        max_steps: int | None = 2
        max_valid_pairs: int | None = 2
        checkpoint_every: int = 100
        log_every: int = 1
        seed: int = 0

        def to_dict(self):
            return asdict(self)

    model, tokenizer = build(world)
    ds, graph, paths, _, texts = world
    rows = encode_rows(ds.split_examples("train")[:4], tokenizer, prompt_fn(texts), paths, graph, k=K,
                       width=PATHS.max_hops + 1, max_neighbours=CFG.max_neighbours, max_prompt_tokens=300)
    valid = encode_rows(ds.split_examples("valid")[:2], tokenizer, prompt_fn(texts), paths, graph, k=K,
                        width=PATHS.max_hops + 1, max_neighbours=CFG.max_neighbours, max_prompt_tokens=300)
    _, state = run_loop(model, rows, valid, make_collate(tokenizer.pad_token_id), Settings(), tmp_path,
                        acc=make_accelerator(1), progress_bar=False, echo=lambda *_: None)
    assert state["step"] == 2 and np.isfinite(state["history"][-1]["nll"]) and "valid_nll" in state["valid"][0]
