"""XRecModel: a training step lowers the loss, only the adaptors train, cold-start ids, the prompt."""
from __future__ import annotations

import pytest
import torch

from explainrec.data import make_synthetic
from explainrec.data.collate import collate, encode_pair
from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN, render_prompt
from explainrec.data.schema import Example
from explainrec.llm.load import load_llm
from explainrec.modules.lightgcn import train_lightgcn
from explainrec.methods.xrec.modeling import XRecModel
from explainrec.methods.xrec.prompting import XREC_FIELDS, xrec_prompt


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=30, n_items=20, n_types=2, seed=2)


@pytest.fixture(scope="module")
def lightgcn(data):
    return train_lightgcn(data, dim=8, epochs=2, batch_size=128, progress=False)


@pytest.fixture()
def fresh(data, lightgcn):
    """A new tiny LLM per test (tests here train or add tokens)."""
    llm, tokenizer = load_llm("tiny", device="cpu")
    uid, iid = XRecModel.prepare_tokenizer(llm, tokenizer)
    torch.manual_seed(0)
    model = XRecModel.from_lightgcn(llm, lightgcn, user_token_id=uid, item_token_id=iid)
    return model, tokenizer


def batch_of(examples, tokenizer):
    enc = [encode_pair(tokenizer, render_prompt(tokenizer, xrec_prompt(e)), e.explanation) for e in examples]
    batch = collate(enc, tokenizer.pad_token_id)
    batch["user"] = torch.tensor([e.user for e in examples])
    batch["item"] = torch.tensor([e.item for e in examples])
    batch["target"] = torch.tensor([e.rating or 0.0 for e in examples])  # extra keys are ignored
    return batch


def test_training_step_reduces_the_loss_and_trains_only_the_adaptors(fresh, data):
    model, tokenizer = fresh
    batch = batch_of(data.split_examples("train")[:4], tokenizer)
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    params = model.trainable_parameters()
    assert params and all(any(p is q for q in list(model.user_adaptor.parameters()) + list(model.item_adaptor.parameters()))
                          for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    model.eval()
    with torch.no_grad():
        start = model(**batch).loss.item()
    model.train()
    for _ in range(15):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert set(out.parts) == {"nll"} and not out.parts["nll"].requires_grad
    model.eval()
    with torch.no_grad():
        end = model(**batch).loss.item()
    print(f"eval loss {start:.4f} -> {end:.4f}")
    assert end < start - 0.05, (start, end)
    for k, v in model.llm.state_dict().items():
        assert torch.equal(v, llm_before[k]), k
    assert all(p.grad is None for p in model.llm.parameters())


def test_lightgcn_tables_are_buffers_not_parameters(fresh, lightgcn):
    model, _ = fresh
    names = dict(model.named_buffers())
    assert {"user_table", "item_table", "user_known", "item_known"} <= set(names)
    assert not any(n.endswith(("_table",)) for n, _ in model.named_parameters())
    assert torch.equal(model.user_table[:-1], lightgcn.user_emb)
    assert "user_table" in model.state_dict()


def test_cold_start_ids_use_the_fallback_row(fresh, lightgcn):
    model, _ = fresh
    model.eval()
    known = torch.nonzero(lightgcn.user_known).flatten()
    fallback = lightgcn.user_emb[lightgcn.user_known].mean(0)
    assert torch.allclose(model.user_table[-1], fallback)
    odd = torch.tensor([-1, model.n_users, 10**9, int(known[0])])
    rows_u, rows_i = model.map_ids(odd, torch.tensor([-5, model.n_items, 3, 10**6]))
    assert rows_u.tolist() == [model.n_users] * 3 + [int(known[0])]
    assert rows_i[[0, 1, 3]].tolist() == [model.n_items] * 3
    u, i = model.soft_vectors(odd, torch.tensor([-5, model.n_items, 3, 10**6]))
    assert u.shape == (4, model.llm.config.hidden_size) and torch.isfinite(u).all()
    assert torch.equal(u[0], u[1]) and torch.equal(u[1], u[2]) and not torch.equal(u[0], u[3])


def test_unknown_masks_and_zero_cold_start(data):
    llm, tokenizer = load_llm("tiny", device="cpu")
    uid, iid = XRecModel.prepare_tokenizer(llm, tokenizer)
    known = torch.tensor([True, False, True])
    model = XRecModel(llm, torch.ones(3, 4), torch.ones(2, 4), user_token_id=uid, item_token_id=iid,
                      user_known=known, cold_start="zero")
    assert model.map_ids(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))[0].tolist() == [0, 3, 2]
    assert torch.equal(model.user_table[-1], torch.zeros(4))
    with pytest.raises(ValueError, match="cold_start"):
        XRecModel(llm, torch.ones(3, 4), torch.ones(2, 4), user_token_id=uid, item_token_id=iid, cold_start="median")


def test_forward_needs_ids_and_refuses_gradient_checkpointing(fresh, data):
    model, tokenizer = fresh
    batch = batch_of(data.split_examples("train")[:2], tokenizer)
    with pytest.raises(ValueError, match="user and item"):
        model(batch["input_ids"], batch["attention_mask"], batch["labels"])
    enable = getattr(model.llm, "activation_checkpointing_enable", None) or model.llm.gradient_checkpointing_enable
    enable()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model(**batch)


def test_prepare_tokenizer_is_idempotent(fresh):
    model, tokenizer = fresh
    n = len(tokenizer)
    assert XRecModel.prepare_tokenizer(model.llm, tokenizer) == (model.user_token_id, model.item_token_id)
    assert len(tokenizer) == n


# ---------------------------------------------------------------------------------------------------- prompt


def test_xrec_prompt_has_placeholders_and_present_fields_only():
    ex = Example(user=0, item=1, title="Sonoratown", user_profile="Likes tacos.", item_profile=None, rating=5.0,
                 explanation="SECRET")
    system, user = xrec_prompt(ex, item_kind="business")
    assert system == {"role": "system", "content": "Explain why the user would enjoy the business within 50 words."}
    assert user["content"] == (f"user record: {USER_TOKEN} item record: {ITEM_TOKEN} item name: Sonoratown "
                               "user profile: Likes tacos.")
    assert "None" not in user["content"] and "SECRET" not in user["content"] and "5" not in user["content"]


def test_xrec_prompt_peter_style_record_uses_features():
    ex = Example(user=0, item=1, features=("battery", "screen"))
    content = xrec_prompt(ex)[1]["content"]
    assert content.endswith("item features: battery, screen")
    assert "item features" not in xrec_prompt(ex, include=XREC_FIELDS[:3])[1]["content"]
    with pytest.raises(ValueError, match="rating"):
        xrec_prompt(ex, include=("rating",))


def test_placeholders_survive_tokenization(fresh, data):
    model, tokenizer = fresh
    ids = tokenizer(render_prompt(tokenizer, xrec_prompt(data.examples[0])), add_special_tokens=False)["input_ids"]
    assert ids.count(model.user_token_id) == 1 and ids.count(model.item_token_id) == 1


def test_state_dict_roundtrip_into_a_model_built_from_zeros(fresh, data):
    model, tokenizer = fresh
    model.eval()
    with torch.no_grad():
        for p in model.user_adaptor.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    llm, tok = load_llm("tiny", device="cpu")
    uid, iid = XRecModel.prepare_tokenizer(llm, tok)
    other = XRecModel(llm, torch.zeros(model.n_users, 8), torch.zeros(model.n_items, 8), user_token_id=uid,
                      item_token_id=iid).eval()
    other.load_state_dict(model.state_dict())
    batch = batch_of(data.split_examples("test")[:2], tokenizer)
    batch["user"][0] = -1  # a cold-start id reads the loaded fallback row
    with torch.no_grad():
        assert torch.equal(model(**batch).loss, other(**batch).loss)
        batch.pop("labels")
        assert torch.equal(model(**batch).logits, other(**batch).logits)
