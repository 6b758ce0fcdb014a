"""Chat prompts that ask an LLM to explain a recommendation, built from whatever an :class:`Example` holds.

Only fields the record actually has go into the prompt (no "Title: None"), so the same builder serves XRec data
(title + profiles), PETER-style reviews (features + rating) and synthetic data.
"""
from __future__ import annotations

from typing import Sequence

from explainrec.data.schema import Example

# Placeholder tokens whose input embeddings are replaced by user/item vectors (GaVaMoE, XRec soft prompts).
USER_TOKEN = "<|user_emb|>"
ITEM_TOKEN = "<|item_emb|>"

PROMPT_FIELDS = ("title", "user_profile", "item_profile", "features", "rating")

DEFAULT_SYSTEM_PROMPT = (
    "You explain recommendations. Given what is known about a user and an item, write one or two sentences "
    "explaining why the user would enjoy the item, in the style \"The user would enjoy ... because ...\". "
    "Reply with the explanation only."
)
INSTRUCTION = "Explain in one or two sentences why the user would enjoy this item."

_LABELS = {
    "title": "Item",
    "user_profile": "User profile",
    "item_profile": "Item profile",
    "features": "Item features",
    "rating": "The user's rating",
}


def _field_text(example: Example, name: str) -> str | None:
    """The field rendered as prompt text, or None when the record does not have it."""
    value = getattr(example, name)
    if name == "features":
        words = [str(w).strip() for w in (value or ()) if str(w).strip()]
        return ", ".join(words) if words else None
    if name == "rating":
        return None if value is None else f"{float(value):g}"
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def build_messages(
    example: Example,
    *,
    system: str | None = None,
    include: Sequence[str] = PROMPT_FIELDS,
) -> list[dict]:
    """Chat messages (system + user) asking for an explanation of ``example``.

    ``system`` replaces :data:`DEFAULT_SYSTEM_PROMPT`; ``include`` picks which of :data:`PROMPT_FIELDS` may appear
    (in that fixed order); a field the record lacks is left out. The reference explanation never goes in.
    """
    unknown = [f for f in include if f not in PROMPT_FIELDS]
    if unknown:
        raise ValueError(f"unknown prompt field(s) {unknown}; expected a subset of {PROMPT_FIELDS}")
    lines = []
    for name in PROMPT_FIELDS:
        if name in include and (text := _field_text(example, name)) is not None:
            lines.append(f"{_LABELS[name]}: {text}")
    lines.append(INSTRUCTION)
    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT if system is None else system},
        {"role": "user", "content": "\n".join(lines)},
    ]


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt string ending where the assistant's answer starts.

    Uses the tokenizer's chat template (so the string already holds any BOS: tokenize it with
    ``add_special_tokens=False``); a tokenizer without one gets a plain ``Role: text`` layout.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
