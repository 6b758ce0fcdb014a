"""Prompts: the record's fields go in, absent ones (and the reference) stay out."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from explainrec.data.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    INSTRUCTION,
    ITEM_TOKEN,
    USER_TOKEN,
    build_messages,
    render_prompt,
)
from explainrec.data.schema import Example

XREC = Example(user=0, item=1, split="test", explanation="The user would enjoy the tacos because they are great.",
               title="Sonoratown", user_profile="Likes casual Mexican food.",
               item_profile="Fans of Northern Mexican-style tacos would enjoy this place.")
PETER = Example(user=2, item=3, explanation="the battery life is great", rating=4.0, features=("battery", "screen"))


def test_xrec_fields_in_absent_fields_out():
    system, user = build_messages(XREC)
    assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert user["role"] == "user"
    text = user["content"]
    for value in (XREC.title, XREC.user_profile, XREC.item_profile):
        assert value in text
    assert XREC.explanation not in text
    assert "features" not in text.lower() and "rating" not in text.lower() and "None" not in text


def test_features_and_rating():
    text = build_messages(PETER)[1]["content"]
    assert "battery, screen" in text and "rating: 4" in text.lower()
    assert "Item:" not in text and "profile" not in text.lower() and PETER.explanation not in text


def test_include_system_and_blank_fields():
    text = build_messages(XREC, include=("title",))[1]["content"]
    assert "Sonoratown" in text and XREC.user_profile not in text and XREC.item_profile not in text
    blank = Example(user=0, item=0, title="   ", features=("", " "))
    assert build_messages(blank)[1]["content"] == INSTRUCTION  # nothing but the instruction
    assert build_messages(XREC, system="Be terse.")[0]["content"] == "Be terse."
    with pytest.raises(ValueError, match="unknown prompt field"):
        build_messages(XREC, include=("title", "explanation"))


def test_render_with_chat_template(tiny_llm):
    _, tok = tiny_llm
    prompt = render_prompt(tok, build_messages(XREC))
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert XREC.title in prompt and DEFAULT_SYSTEM_PROMPT in prompt


def test_render_without_chat_template():
    prompt = render_prompt(SimpleNamespace(chat_template=None), build_messages(XREC))
    assert prompt.startswith("System: ") and "\n\nUser: " in prompt and prompt.endswith("Assistant:")


def test_soft_token_names():
    assert (USER_TOKEN, ITEM_TOKEN) == ("<|user_emb|>", "<|item_emb|>")
