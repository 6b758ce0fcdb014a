"""MMP-Refer's prompt (step 6): the item and user fields, the retrieval paths as text, and the graph soft token.

Following the paper's instruction (sec. 3.4.3) in this toolkit's chat form (as XRec's prompt):

    system: Explain why the user would enjoy the {kind} within 50 words.
    user:   Given the {kind} title, {kind} profile, user profile and some retrieval paths about the user, please
            explain why the user would enjoy this {kind}.
            {Kind} title: ... {Kind} profile: ... User profile: ...
            Here are several related paths which may reflect his/her preference.
            Path 1: the user -> buys -> item (<profile>) -> bought by -> user (<profile>) -> buys -> this {kind}
            ...
            Path graph: <|graph_emb|>
            Explanations:

Path text: the pair's own user and item are "the user" and "this {kind}" (their profiles are already above);
an intermediate node is its profile cut to ``max_words`` words (an item without a profile: its title; a node with
neither: "another user" / "another {kind}"). "buys" leads from a user to an item, "bought by" from an item to a
user. A field the record lacks is left out; with no path, the prompt says so and the soft prompt carries the
learned "no path" vectors.

The graph soft prompt takes the place of ``<|graph_emb|>`` (a new special token: the user/item placeholders
``<|user_emb|>``/``<|item_emb|>`` stand for one node each, this one for the paths' graph), ``soft_tokens`` copies in
a row. It sits at the end of the prompt, next to the "Explanations:" cue, because a prompt that is too long
loses its beginning (:func:`explainrec.data.collate.encode_pair`), never the token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from explainrec.data.prompts import _field_text
from explainrec.data.schema import Dataset, Example

GRAPH_TOKEN = "<|graph_emb|>"
MMP_SYSTEM = "Explain why the user would enjoy the {kind} within 50 words."
MMP_TASK = ("Given the {kind} title, {kind} profile, user profile and some retrieval paths about the user, please "
            "explain why the user would enjoy this {kind}.")
PATHS_LEAD = "Here are several related paths which may reflect his/her preference."
NO_PATHS = "No related paths were found."


def cut_words(text: str, max_words: int) -> str:
    """The first ``max_words`` words of ``text`` (with "..." when something was cut)."""
    words = text.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


@dataclass
class NodeTexts:
    """What the dataset says about every node: user profiles, item profiles and titles (None when unknown).

    Built from the explained pairs (the first non-empty value of each field per user/item).
    """

    n_users: int
    user_profiles: list[str | None]
    item_profiles: list[str | None]
    titles: list[str | None]

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "NodeTexts":
        users: list[str | None] = [None] * dataset.n_users
        items: list[str | None] = [None] * dataset.n_items
        titles: list[str | None] = [None] * dataset.n_items
        for ex in dataset.examples:
            for table, idx, value in ((users, ex.user, ex.user_profile), (items, ex.item, ex.item_profile),
                                      (titles, ex.item, ex.title)):
                if table[idx] is None and value and value.strip():
                    table[idx] = value.strip()
        return cls(dataset.n_users, users, items, titles)

    def node(self, node: int, *, kind: str = "item", max_words: int = 25) -> str:
        """One intermediate node as path text: ``user (<profile>)`` / ``item (<profile or title>)``."""
        if node < self.n_users:
            text = self.user_profiles[node]
            return f"user ({cut_words(text, max_words)})" if text else "another user"
        i = node - self.n_users
        text = self.item_profiles[i] or self.titles[i]
        return f"{kind} ({cut_words(text, max_words)})" if text else f"another {kind}"


def path_text(path: Sequence[int], texts: NodeTexts, *, kind: str = "item", max_words: int = 25) -> str:
    """``the user -> buys -> item (...) -> bought by -> user (...) -> buys -> this item`` for one path (global ids)."""
    parts = ["the user"]
    last = len(path) - 1
    for pos in range(1, len(path)):
        parts.append("buys" if path[pos - 1] < texts.n_users else "bought by")
        parts.append(f"this {kind}" if pos == last else texts.node(path[pos], kind=kind, max_words=max_words))
    return " -> ".join(parts)


def prompt_fn(cfg, texts: NodeTexts):
    """``(example or pair, paths) -> chat messages`` with a run's settings (an
    :class:`~explainrec.methods.mmp_refer.config.MMPReferConfig`): the path hard prompt, plus the graph token unless
    ablated. Training and the explainer both take it from here, so they prompt alike."""
    return lambda ex, paths: mmp_prompt(ex, paths, texts, item_kind=cfg.item_kind, soft_tokens=cfg.graph.soft_tokens,
                                        max_words=cfg.graph.max_profile_words, graph_token=cfg.graph_prompt)


def mmp_prompt(example: Example, paths: Sequence[Sequence[int]], texts: NodeTexts, *, item_kind: str = "item",
               soft_tokens: int = 1, max_words: int = 25, graph_token: bool = True) -> list[dict]:
    """Chat messages (system + user) for one pair and its retrieval paths (global node ids, best first).

    ``graph_token=False`` leaves the soft prompt out (ablation "w/o graph-level").
    """
    kind = item_kind
    lines = [MMP_TASK.format(kind=kind)]
    fields = []
    for name, label in (("title", f"{kind.capitalize()} title"), ("item_profile", f"{kind.capitalize()} profile"),
                        ("user_profile", "User profile")):
        if (text := _field_text(example, name)) is not None:
            fields.append(f"{label}: {text.rstrip('.')}.")
    if fields:
        lines.append(" ".join(fields))
    if paths:
        lines.append(PATHS_LEAD)
        lines += [f"Path {j + 1}: {path_text(p, texts, kind=kind, max_words=max_words)}." for j, p in enumerate(paths)]
    else:
        lines.append(NO_PATHS)
    if graph_token:
        lines.append("Path graph: " + GRAPH_TOKEN * soft_tokens)
    lines.append("Explanations:")
    return [{"role": "system", "content": MMP_SYSTEM.format(kind=kind)},
            {"role": "user", "content": "\n".join(lines)}]
