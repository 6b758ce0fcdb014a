"""GaVaMoE's prompt: the record's fields (rating and feature words as in LLM2ER, title and profiles on XRec data)
plus the two soft tokens that carry the stage-1 user and item embeddings.

``profiles=False`` is the paper's input: the soft tokens, the title, feature words and rating, no profile text.
With profiles in the prompt a dense model can personalise from the text alone; without them the user's side of
the explanation can only come from the soft tokens and the cluster-gated experts.
"""
from __future__ import annotations

from functools import partial

from explainrec.data.prompts import ITEM_TOKEN, PROMPT_FIELDS, USER_TOKEN, build_messages
from explainrec.data.schema import Example

WITHOUT_PROFILES = tuple(f for f in PROMPT_FIELDS if not f.endswith("_profile"))


# A trained model learns the style from its data, so the zero-shot prompt's long style instructions only cost
# tokens (about a quarter of an amazon prompt): one short line instead.
SYSTEM_PROMPT = "Explain why the user would enjoy the item."


def gavamoe_prompt(example: Example, *, profiles: bool = True) -> list[dict]:
    """Chat messages with ``user: <|user_emb|> item: <|item_emb|>`` at the top of the user turn."""
    messages = build_messages(example, system=SYSTEM_PROMPT, include=PROMPT_FIELDS if profiles else WITHOUT_PROFILES)
    messages[-1] = {**messages[-1], "content": f"User: {USER_TOKEN} Item: {ITEM_TOKEN}\n" + messages[-1]["content"]}
    return messages


def prompt_for(profiles: bool):
    """The prompt function of a run's setting (``GaVaMoEConfig.profiles``)."""
    return gavamoe_prompt if profiles else partial(gavamoe_prompt, profiles=False)
