"""GaVaMoE's prompt: the record's fields (rating and feature words as in LLM2ER, title and profiles on XRec data)
plus the two soft tokens that carry the stage-1 user and item embeddings."""
from __future__ import annotations

from explainrec.data.prompts import ITEM_TOKEN, USER_TOKEN, build_messages
from explainrec.data.schema import Example


# A trained model learns the style from its data, so the zero-shot prompt's long style instructions only cost
# tokens (about a quarter of an amazon prompt): one short line instead.
SYSTEM_PROMPT = "Explain why the user would enjoy the item."


def gavamoe_prompt(example: Example) -> list[dict]:
    """Chat messages with ``user: <|user_emb|> item: <|item_emb|>`` at the top of the user turn."""
    messages = build_messages(example, system=SYSTEM_PROMPT)
    messages[-1] = {**messages[-1], "content": f"User: {USER_TOKEN} Item: {ITEM_TOKEN}\n" + messages[-1]["content"]}
    return messages
