"""Alignment data: deterministic per seed, every label taken from the recommender (never the dataset), variants
with consistent placeholders and soft ids, held-out users, Task 3 balance and test split, item names."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN
from explainrec.data.schema import Dataset, Example, IdMap, Interactions
from explainrec.methods.recexplainer.alignment_data import (
    LIST_SEP,
    NO,
    TEMPLATES,
    VARIANT_TASKS,
    VARIANTS,
    YES,
    build_alignment_rows,
    item_names,
    query_recommender,
    read_rows,
    write_alignment_data,
)
from explainrec.methods.recexplainer.explanation_checks import soft_kinds


@pytest.fixture(scope="module")
def queries(small_ds, small_sasrec):
    return query_recommender(small_sasrec, small_ds, np.arange(small_ds.n_users), top_k=2, seed=0)


@pytest.fixture(scope="module")
def hybrid(small_ds, small_sasrec, queries):
    return build_alignment_rows(small_ds, small_sasrec, "hybrid", queries=queries, seed=0)


def _rank(rec, user: int, item: int) -> tuple[int, int]:
    """(rank of item among the user's non-history items by the recommender, number of such items)."""
    s = rec.score(torch.tensor([user]))[0]
    return int((s > s[item]).sum()), int(torch.isfinite(s).sum())


def test_deterministic_per_seed(small_ds, small_sasrec, tmp_path):
    a = build_alignment_rows(small_ds, small_sasrec, "hybrid", seed=3)
    b = build_alignment_rows(small_ds, small_sasrec, "hybrid", seed=3)
    c = build_alignment_rows(small_ds, small_sasrec, "hybrid", seed=4)
    assert a == b and a != c
    m1 = write_alignment_data(small_ds, small_sasrec, tmp_path / "one", seed=3)
    m2 = write_alignment_data(small_ds, small_sasrec, tmp_path / "two", seed=3)
    for v in VARIANTS:
        for split in ("train", "test"):
            one = (tmp_path / "one" / f"{v}.{split}.jsonl").read_bytes()
            assert one == (tmp_path / "two" / f"{v}.{split}.jsonl").read_bytes()
    assert m1["variants"] == m2["variants"]
    rows = read_rows(tmp_path / "one" / "hybrid.train.jsonl")
    assert rows == [r for r in a if r["split"] == "train"]
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["recommender"]["kind"] == "sasrec"


def test_task1_target_is_the_recommenders_top1(small_ds, small_sasrec, hybrid):
    rows = [r for r in hybrid if r["task"] == "next_item"]
    assert rows
    names = item_names(small_ds)
    scores = small_sasrec.score(torch.arange(small_ds.n_users))
    for r in rows:
        best = int(scores[r["user"]].argmax())
        assert r["items"] == [best] and r["target"] == names[best]
        assert best not in small_sasrec.history_of(r["user"])


def test_more_targets_per_user_follow_the_ranking(small_ds, small_sasrec, queries):
    rows = build_alignment_rows(small_ds, small_sasrec, "behaviour", queries=queries, tasks=["next_item"],
                                next_items_per_user=2)
    scores = small_sasrec.score(torch.arange(small_ds.n_users))
    for r in rows:
        top = scores[r["user"]].topk(2).indices.tolist()
        assert r["items"] == [top[r["rank"] - 1]]
        assert r["split"] == "train" or r["rank"] == 1  # held-out users are asked for the top-1 only


def test_task2_order_is_the_recommenders(small_ds, small_sasrec, hybrid):
    names = item_names(small_ds)
    rows = [r for r in hybrid if r["task"] == "ranking"]
    assert rows
    scores = small_sasrec.score(torch.arange(small_ds.n_users))
    for r in rows:
        s = scores[r["user"], r["items"]]
        assert len(set(r["items"])) == 5 and torch.isfinite(s).all()  # distinct, none from the history
        assert (s[:-1] >= s[1:]).all()  # best first
        assert sorted(r["candidates"]) == sorted(r["items"])
        assert r["target"] == LIST_SEP.join(names[i] for i in r["items"])
    # the prompt's order is shuffled, not the answer's
    assert any(r["candidates"] != r["items"] for r in rows)


def test_task3_labels_bands_and_balance(small_ds, small_sasrec, hybrid):
    rows = [r for r in hybrid if r["task"] == "interest"]
    for split in ("train", "test"):
        part = [r for r in rows if r["split"] == split]
        assert part and sum(r["target"] == YES for r in part) == sum(r["target"] == NO for r in part)
    test_pairs = {(int(u), int(i)) for u, i, s in zip(small_ds.interactions.user, small_ds.interactions.item,
                                                      small_ds.interactions.split) if s == "test"}
    for r in rows:
        rank, n_valid = _rank(small_sasrec, r["user"], r["items"][0])
        if r["target"] == YES:
            assert rank < math.ceil(0.2 * n_valid)
        else:
            assert rank >= n_valid - math.floor(0.5 * n_valid)
        assert r["score"] == pytest.approx(float(small_sasrec.score(torch.tensor([r["user"]]))[0, r["items"][0]]), abs=1e-5)
        if r["split"] == "train":  # train pairs never use the user's test items
            assert (r["user"], r["items"][0]) not in test_pairs
    # every test question about a test-split item is one the dataset really has; its partner balances it
    firsts = [r for k, r in enumerate(x for x in rows if x["split"] == "test") if k % 2 == 0]
    assert all((r["user"], r["items"][0]) in test_pairs for r in firsts)


def test_labels_come_from_the_recommender_not_the_dataset(small_ds, small_sasrec, small_mf):
    a = build_alignment_rows(small_ds, small_sasrec, "behaviour", tasks=["next_item", "interest"], seed=0)
    b = build_alignment_rows(small_ds, small_mf, "behaviour", tasks=["next_item", "interest"], seed=0)
    ta = {r["user"]: r["items"][0] for r in a if r["task"] == "next_item"}
    tb = {r["user"]: r["items"][0] for r in b if r["task"] == "next_item"}
    assert ta != tb  # same data, other recommender: other answers
    # and the next-item target is usually not what the user really did next (the dataset's label)
    inter = small_ds.interactions
    nxt = {int(u): int(i) for u, i, s in zip(inter.user, inter.item, inter.split) if s == "valid"}
    assert np.mean([ta[u] == nxt.get(u) for u in ta]) < 0.9


def test_task4_and_task6(small_ds, small_sasrec, queries, hybrid):
    names = item_names(small_ds)
    rows = {t: [r for r in hybrid if r["task"] == t] for t in VARIANT_TASKS["hybrid"]}
    vecs = small_sasrec.item_vectors()
    for r in rows["item_similar"]:
        i = r["items"][0]
        sims = vecs @ vecs[i]
        sims[i] = -torch.inf
        assert r["target"] == names[int(sims.argmax())] == names[r["nearest"]]
    assert len(rows["item_title"]) == small_ds.n_items
    assert all(r["target"] == names[r["items"][0]] and r["soft_ids"] == r["items"] for r in rows["item_title"])
    profiles = {e.item: e.item_profile for e in small_ds.examples}
    assert all(r["target"] == profiles[r["items"][0]] for r in rows["item_profile"])
    for r in rows["history"]:
        recent = [i for i in small_sasrec.recent_history(torch.tensor([r["user"]]))[0].tolist() if i >= 0]
        assert r["items"] == recent and r["target"] == LIST_SEP.join(names[i] for i in recent)
        text = r["prompt"][1]["content"]
        assert USER_TOKEN in text and not any(names[i] in text for i in recent)  # intention form: no titles
    up = {e.user: e.user_profile for e in small_ds.examples}
    assert rows["summary"] and all(r["target"] == up[r["user"]] for r in rows["summary"])


def test_held_out_users_are_test_only(hybrid, small_ds):
    for task in ("next_item", "ranking", "history", "summary"):
        train = {r["user"] for r in hybrid if r["task"] == task and r["split"] == "train"}
        test = {r["user"] for r in hybrid if r["task"] == task and r["split"] == "test"}
        assert test and not train & test
    test_users = {r["user"] for r in hybrid if r["task"] == "next_item" and r["split"] == "test"}
    assert 0.02 < len(test_users) / small_ds.n_users < 0.25
    assert all(r["split"] == "train" for r in hybrid if r["task"].startswith("item_"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_placeholders_and_soft_ids(variant, small_ds, small_sasrec, queries):
    rows = build_alignment_rows(small_ds, small_sasrec, variant, queries=queries, seed=0)
    assert {r["task"] for r in rows} == set(VARIANT_TASKS[variant])
    names = item_names(small_ds)
    for r in rows:
        text = r["prompt"][1]["content"]
        kinds = soft_kinds(r)
        assert len(kinds) == len(r["soft_ids"])
        if variant == "behaviour":
            assert not kinds and USER_TOKEN not in text and ITEM_TOKEN not in text
        for kind, sid in zip(kinds, r["soft_ids"]):
            assert sid == r["user"] if kind == "user" else sid in r["items"] + r.get("candidates", [])
        if r["task"] == "ranking":
            item_ids = [s for k, s in zip(kinds, r["soft_ids"]) if k == "item"]
            if variant != "behaviour":
                assert item_ids == r["candidates"]  # placeholder order = the order the prompt shows
        if variant == "intention" and r["task"] != "profile_item":
            assert not any(names[i] in text for i in r.get("history", []))  # no titles in the input
        if variant == "hybrid" and r["task"] in ("next_item", "ranking", "interest"):
            assert USER_TOKEN in text and all(names[i] in text for i in r["history"])
    n_tpl = {t: len({r["prompt"][1]["content"].split(" ")[0] for r in rows if r["task"] == t}) for t in TEMPLATES}
    assert n_tpl["interest"] > 1  # several templates in use


def test_item_names_stand_in_and_disambiguate():
    inter = Interactions(user=np.array([0, 0, 1]), item=np.array([0, 1, 2]), split=np.array(["train"] * 3))
    examples = [Example(user=0, item=0, title="Cafe; Bar"), Example(user=1, item=1, title="Cafe; Bar"),
                Example(user=1, item=3, title="A very long title that goes on and on")]
    ds = Dataset("t", inter, examples, IdMap(["u0", "u1"]), IdMap(["a", "b", "c", "d"]))
    names = item_names(ds, max_title_chars=20)
    assert names[0] == "Cafe, Bar (item a)" and names[1] == "Cafe, Bar (item b)"
    assert names[2] == "item c"
    assert names[3] == "A very long title" and len(names[3]) <= 20


def test_replay_rows_are_the_base_models_own_answers(tiny_llm, small_ds, small_sasrec, tmp_path):
    from explainrec.data.prompts import render_prompt
    from explainrec.llm.generate import generate_texts
    from explainrec.methods.recexplainer.alignment_data import (
        REPLAY_INSTRUCTIONS,
        replay_rows,
    )

    llm, tok = tiny_llm
    rows = replay_rows(llm, tok, n=3, max_new_tokens=4, seed=0)
    assert rows == replay_rows(llm, tok, n=3, max_new_tokens=4, seed=0)
    for r in rows:
        assert r["task"] == "replay" and r["soft_ids"] == [] and r["prompt"][0]["content"] in REPLAY_INSTRUCTIONS
        again = generate_texts(llm, tok, [render_prompt(tok, r["prompt"])], max_new_tokens=4, progress=False)[0]
        assert r["target"] == again  # greedy answer of the frozen base model (self-distillation)
    manifest = write_alignment_data(small_ds, small_sasrec, tmp_path, variants=["behaviour"], replay=rows)
    train = read_rows(tmp_path / "behaviour.train.jsonl")
    assert [r for r in train if r["task"] == "replay"] == rows and manifest["replay_rows"] == len(rows)
    # off by default
    write_alignment_data(small_ds, small_sasrec, tmp_path / "plain", variants=["behaviour"])
    assert not any(r["task"] == "replay" for r in read_rows(tmp_path / "plain" / "behaviour.train.jsonl"))
