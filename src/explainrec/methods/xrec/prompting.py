"""XRec's prompt: the two collaborative placeholders, then the item name and the LLM-written user/item profiles.

Adapted from XRec's release ("user record: <USER_EMBED> item record: <ITEM_EMBED> item name: ... user profile:
... item profile: ... <EXPLAIN_POS>") to this toolkit's shared placeholders (``<|user_emb|>``, ``<|item_emb|>``)
and chat template. ``<EXPLAIN_POS>`` is left out: the training labels already start the loss at the
explanation. A field the record lacks is left out (no "item name: None"); PETER-style records, which have no
profiles, get their feature words instead so the prompt still says something about the item.
"""
from __future__ import annotations

from typing import Sequence

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN, _field_text
from explainrec.data.schema import Example

XREC_SYSTEM = "Explain why the user would enjoy the {kind} within 50 words."
XREC_FIELDS = ("title", "user_profile", "item_profile", "features")
_LABELS = {"title": "item name", "user_profile": "user profile", "item_profile": "item profile",
           "features": "item features"}


def xrec_prompt(example: Example, *, item_kind: str = "item", include: Sequence[str] = XREC_FIELDS) -> list[dict]:
    """Chat messages (system + user) for one pair.

    ``item_kind`` names the item in the instruction (XRec: "business" on Google/Yelp, "book" on Amazon);
    ``include`` picks which of :data:`XREC_FIELDS` may appear (in that order). The rating and the reference
    explanation never go in.
    """
    unknown = [f for f in include if f not in XREC_FIELDS]
    if unknown:
        raise ValueError(f"unknown XRec prompt field(s) {unknown}; expected a subset of {XREC_FIELDS}")
    parts = [f"user record: {USER_TOKEN}", f"item record: {ITEM_TOKEN}"]
    for name in XREC_FIELDS:
        if name in include and (text := _field_text(example, name)) is not None:
            parts.append(f"{_LABELS[name]}: {text}")
    return [
        {"role": "system", "content": XREC_SYSTEM.format(kind=item_kind)},
        {"role": "user", "content": " ".join(parts)},
    ]
