"""Candidate reranking against templates: sample several texts per pair, keep the one closest to the pair's inputs.

A fine-tuned explainer's most likely text is often the dataset's most common phrasing ("great service, great food"
for everyone). Sampling k texts and keeping the one whose meaning is closest (MiniLM cosine) to what the prompt says
about this pair -- the user turn of the method's own prompt: title, profiles, features, paths -- favours the
candidate that is about this user and this item. It never looks at the reference. With ``profiles=false`` prompts
the target holds only the title and features, so the rerank cannot bring in profile text the model was not given.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

# placeholder tokens (<|user_emb|>, <|graph|>, ...) carry vectors, not words
_PLACEHOLDER = re.compile(r"<\|[^|>]*\|>")


def rerank_target(messages: list[dict]) -> str:
    """What the prompt says about the pair: its last user turn, without placeholder tokens."""
    user_turns = [m["content"] for m in messages if m.get("role") == "user"]
    return _PLACEHOLDER.sub(" ", user_turns[-1] if user_turns else "").strip()


@lru_cache(maxsize=2)
def _encoder(name: str):
    from explainrec.metrics.embedding import SentenceEncoder

    return SentenceEncoder(name)


def explain_reranked(explainer, pairs: Sequence, generation, *, stats=None, progress: bool = False,
                     encoder: str = "minilm") -> list[dict]:
    """``explainer.explain`` with ``generation.candidates`` sampled texts per pair, the closest to the pair's
    inputs kept; each row records ``rerank_similarity`` (x100) and how many candidates it was chosen from."""
    k = generation.candidates
    one = generation.replace(candidates=1)
    repeated = [p for p in pairs for _ in range(k)]  # one batch draws k different samples of the same prompt
    rows = explainer.explain(repeated, one, stats=stats, progress=progress)
    targets = [rerank_target(explainer.prompt(p)) for p in pairs]
    enc = _encoder(encoder)
    texts = enc.encode([r["prediction"] for r in rows]).view(len(pairs), k, -1)  # (P, k, d)
    goal = enc.encode(targets).unsqueeze(-1)  # (P, d, 1)
    similarity = (texts @ goal).squeeze(-1)  # (P, k)
    best = similarity.argmax(dim=1).tolist()
    return [{**rows[i * k + j], "rerank_similarity": round(100 * float(similarity[i, j]), 2), "candidates": k}
            for i, j in enumerate(best)]
