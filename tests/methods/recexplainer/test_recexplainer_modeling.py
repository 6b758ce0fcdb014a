"""RecExplainerModel on the tiny LLaMA: projector shapes, vectors ADDED at exactly the placeholders (ids in
placeholder order), the run_loop contract, the collate, LoRA set-up and generation through embed_fn."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
import torch

from explainrec.data.collate import IGNORE_INDEX
from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN, render_prompt
from explainrec.llm.generate import generate_texts
from explainrec.llm.hooks import GenerationHooks
from explainrec.llm.load import load_llm
from explainrec.methods.recexplainer.alignment_data import build_alignment_rows
from explainrec.methods.recexplainer.alignment_eval import next_token_logits
from explainrec.methods.recexplainer.modeling import (
    Projector,
    RecExplainerModel,
    apply_lora,
    configure_trainable,
    encode_row,
    encode_rows,
    make_collate,
    pad_soft_ids,
)


@pytest.fixture(scope="module")
def built(small_mf):
    torch.manual_seed(0)
    llm, tok = load_llm("tiny")
    uid, iid = RecExplainerModel.prepare_tokenizer(llm, tok)
    model = RecExplainerModel.from_recommender(llm, small_mf, user_token_id=uid, item_token_id=iid)
    return model, tok


def _row(content: str, soft: list[int], target: str = "ok") -> dict:
    return {"task": "interest", "prompt": [{"role": "user", "content": content}], "target": target, "soft_ids": soft}


def test_projector_shapes(built, small_mf):
    model, _ = built
    hidden = model.llm.get_input_embeddings().weight.shape[1]  # 64 in the tiny model
    for proj in (model.user_proj, model.item_proj):
        first, act, last = proj.net
        assert (first.in_features, first.out_features) == (small_mf.dim, hidden // 2)
        assert isinstance(act, torch.nn.GELU)
        assert (last.in_features, last.out_features) == (hidden // 2, hidden)
    assert Projector(7, 10)(torch.randn(3, 4, 7)).shape == (3, 4, 10)
    assert model.user_table.shape == (small_mf.n_users, small_mf.dim)
    assert model.item_table.shape == (small_mf.n_items, small_mf.dim)
    assert torch.equal(model.item_table, small_mf.item_vectors())


def test_vectors_are_added_at_the_placeholders_in_order(built):
    model, tok = built
    rows = [_row(f"{ITEM_TOKEN} a {ITEM_TOKEN} b {USER_TOKEN} c {ITEM_TOKEN}", [4, 9, 3, 2]),
            _row(f"plain {USER_TOKEN}", [7]), _row("no placeholders at all", [])]
    batch = make_collate(tok.pad_token_id)(encode_rows(tok, rows))
    ids, soft = batch["input_ids"], batch["soft_ids"]
    assert soft.tolist() == [[4, 9, 3, 2], [7, -1, -1, -1], [-1, -1, -1, -1]]
    base = model.llm.get_input_embeddings()(ids)
    with torch.no_grad():
        emb = model.embed(ids, soft)
        u = lambda i: model.user_proj(model.user_table[i] / model.user_scale)
        it = lambda i: model.item_proj(model.item_table[i] / model.item_scale)
    expect = {0: [it(4), it(9), u(3), it(2)], 1: [u(7)], 2: []}
    for b in range(3):
        pos = ((ids[b] == model.user_token_id) | (ids[b] == model.item_token_id)).nonzero().flatten().tolist()
        assert len(pos) == len(expect[b])
        for p, vec in zip(pos, expect[b]):
            assert torch.allclose(emb[b, p], base[b, p] + vec, atol=1e-6)  # added to the token's own embedding
        others = [t for t in range(ids.shape[1]) if t not in pos]
        assert torch.equal(emb[b, others], base[b, others])


def test_mismatched_soft_ids_raise(built):
    model, tok = built
    ids = torch.tensor([tok(f"x {USER_TOKEN} {ITEM_TOKEN}", add_special_tokens=False)["input_ids"]])
    with pytest.raises(ValueError, match="2 placeholder"):
        model.embed(ids, torch.tensor([[1]]))
    with pytest.raises(ValueError, match="placeholder"):
        model.embed(ids, None)


def test_forward_contract_and_gradients(built, small_ds, small_mf):
    model, tok = built
    rows = build_alignment_rows(small_ds, small_mf, "intention", tasks=["interest", "ranking"], max_users=3)
    batch = make_collate(tok.pad_token_id)(encode_rows(tok, rows[:4]))
    out = model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.parts) == {"nll"} and not out.parts["nll"].requires_grad
    with torch.no_grad():
        ref = model.llm(inputs_embeds=model.embed(batch["input_ids"], batch["soft_ids"]),
                        attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(out.loss, ref, atol=1e-5)
    model.zero_grad()
    out.loss.backward()
    assert model.user_proj.net[0].weight.grad.abs().sum() > 0
    assert model.item_proj.net[0].weight.grad.abs().sum() > 0
    model.zero_grad()


def test_collate_and_truncation_keep_ids_paired(built):
    _, tok = built
    row = _row(f"{USER_TOKEN} one {ITEM_TOKEN} two {ITEM_TOKEN}", [5, 6, 7], target="Yes")
    enc = encode_row(tok, row)
    prompt_len = sum(1 for lab in enc["enc"].labels if lab == IGNORE_INDEX)
    assert enc["soft_ids"] == [5, 6, 7]
    assert enc["enc"].labels[prompt_len:] == enc["enc"].input_ids[prompt_len:]  # loss on the answer (+ eos)
    assert enc["enc"].input_ids[-1] == tok.eos_token_id
    # a prompt cut from the left loses its first placeholders and their ids with them
    ids = enc["enc"].input_ids[:prompt_len]
    keep = len(ids) - ids.index(tok.convert_tokens_to_ids(ITEM_TOKEN))  # from the first item placeholder on
    cut = encode_row(tok, row, max_prompt_tokens=keep)
    assert cut["soft_ids"] == [6, 7]
    batch = make_collate(tok.pad_token_id)([enc, encode_row(tok, _row("short", []))])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = int(batch["attention_mask"][1].sum())
    assert (batch["input_ids"][1, short:] == tok.pad_token_id).all()  # right-padded
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert batch["soft_ids"].tolist() == [[5, 6, 7], [-1, -1, -1]]
    assert pad_soft_ids([]).shape == (0, 0)


def test_generation_through_embed_fn(built, small_ds, small_mf):
    model, tok = built
    rows = build_alignment_rows(small_ds, small_mf, "intention", tasks=["interest"], max_users=3)[:3]
    prompts = [render_prompt(tok, r["prompt"]) for r in rows]
    soft = [r["soft_ids"] for r in rows]
    together = generate_texts(model.llm, tok, prompts, hooks=GenerationHooks(embed_fn=model.embed_fn(soft)),
                              max_new_tokens=6, batch_size=3, progress=False)
    alone = [generate_texts(model.llm, tok, [p], hooks=GenerationHooks(embed_fn=model.embed_fn([s])), max_new_tokens=6,
                            progress=False)[0]
             for p, s in zip(prompts, soft)]
    assert together == alone
    # embed_fn reads the ids of the prompts generate_texts names by index, in the batch's own order
    encoded = tok(prompts, add_special_tokens=False)["input_ids"]
    order = [2, 0, 1]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in order])  # left-padded
    with torch.no_grad():
        got = model.embed_fn(soft)(ids, torch.tensor(order))
        expect = model.embed(ids, pad_soft_ids([soft[i] for i in order]))
        wrong = model.embed(ids, pad_soft_ids([soft[0]] * 3))
    assert torch.equal(got, expect) and not torch.equal(got, wrong)
    # the soft ids matter: another user's vector changes the next-token distribution
    other = [[(s[0] + 1) % small_mf.n_users, *s[1:]] for s in soft]
    a = next_token_logits(model, tok, prompts, soft)
    b = next_token_logits(model, tok, prompts, other)
    assert not torch.allclose(a, b)


def test_configure_trainable_modes(small_mf):
    llm, tok = load_llm("tiny")
    uid, iid = RecExplainerModel.prepare_tokenizer(llm, tok)
    model = RecExplainerModel.from_recommender(llm, small_mf, user_token_id=uid, item_token_id=iid)
    n_proj = sum(p.numel() for p in [*model.user_proj.parameters(), *model.item_proj.parameters()])
    model.requires_grad_(False)
    assert configure_trainable(model, "projectors") == n_proj
    assert all(p.requires_grad for p in model.user_proj.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    with pytest.raises(ValueError, match="apply_lora"):
        configure_trainable(model, "lora")
    assert configure_trainable(model, "full") == n_proj + sum(p.numel() for p in model.llm.parameters())
    model.llm = apply_lora(model.llm, r=4, alpha=8)
    n = configure_trainable(model, "lora")
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    assert n > n_proj and all("lora_" in k or "_proj.net" in k for k in names)
    assert any("q_proj" in k for k in names) and any("o_proj" in k for k in names)


def test_run_loop_trains_the_projectors(small_ds, small_mf, tmp_path):
    from explainrec.training.loop import make_accelerator, run_loop

    @dataclass
    class Cfg:
        lr: float = 1e-2
        weight_decay: float = 0.0
        epochs: int = 1
        batch_size: int = 4
        grad_accum: int = 1
        clip: float = 1.0
        max_minutes: float | None = None
        max_steps: int | None = 3
        max_valid_pairs: int | None = 2
        checkpoint_every: int = 100
        log_every: int = 1
        seed: int = 0

        def to_dict(self) -> dict:
            return asdict(self)

    llm, tok = load_llm("tiny")
    uid, iid = RecExplainerModel.prepare_tokenizer(llm, tok)
    model = RecExplainerModel.from_recommender(llm, small_mf, user_token_id=uid, item_token_id=iid)
    configure_trainable(model, "projectors")
    before = model.item_proj.net[0].weight.detach().clone()
    rows = encode_rows(tok, build_alignment_rows(small_ds, small_mf, "intention", tasks=["interest"], max_users=8))
    raw, state = run_loop(model, rows, rows[:2], make_collate(tok.pad_token_id), Cfg(), tmp_path,
                          acc=make_accelerator(1), progress_bar=False, echo=lambda _m: None, tag="recexplainer")
    assert state["step"] == 3 and all("nll" in h for h in state["history"])
    assert not torch.equal(raw.item_proj.net[0].weight, before)
