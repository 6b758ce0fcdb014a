"""A calibration set for a judge that needs no human: the reference explanations, the same texts given to other
pairs (shuffled across pairs: fluent but about someone else, so Personalization should drop), and the texts with
their words in random order (about the right pair but broken, so Text Quality should drop).

A judge that cannot separate these three cannot be trusted to separate methods either.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

CONDITIONS = ("reference", "shuffled", "scrambled")
CARRIED = ("title", "user_profile", "item_profile")


def shuffle_across_pairs(rows: Sequence[dict], rng: random.Random) -> list[int]:
    """For each row the index of another row whose text it gets: never its own text, user or item."""
    n = len(rows)
    if n < 3:
        raise ValueError(f"shuffling across pairs needs at least 3 pairs; got {n}")

    def clash(i: int, j: int) -> bool:
        a, b = rows[i], rows[j]
        return i == j or a["user"] == b["user"] or a["item"] == b["item"] or a["text"] == b["text"]

    perm = list(range(n))
    rng.shuffle(perm)
    for _ in range(100):
        bad = [i for i in range(n) if clash(i, perm[i])]
        if not bad:
            return perm
        for i in bad:  # swap with a random row when the swap suits both
            j = rng.randrange(n)
            if not clash(i, perm[j]) and not clash(j, perm[i]):
                perm[i], perm[j] = perm[j], perm[i]
    raise ValueError("could not give every pair another pair's text (too many pairs share a user, item or text)")


def scramble(text: str, rng: random.Random) -> str:
    """The text's words in a random order (a different order whenever the words allow one)."""
    words = text.split()
    if len(set(words)) < 2:
        return text
    out = words[:]
    while out == words:
        rng.shuffle(out)
    return " ".join(out)


def calibration_rows(records: Sequence[dict], *, seed: int = 0) -> dict[str, list[dict]]:
    """condition -> predictions rows (user, item, prediction, reference, and the pair's title and profiles).

    ``records``: dicts with ``user``, ``item`` and ``explanation`` (an XRec ``explanations.jsonl`` row) or
    ``reference``.
    """
    rng = random.Random(seed)
    rows = [{"user": str(r["user"]), "item": str(r["item"]), "text": r.get("explanation", r.get("reference")),
             **{k: r[k] for k in CARRIED if r.get(k)}} for r in records]
    for i, r in enumerate(rows, start=1):
        if not isinstance(r["text"], str) or not r["text"].strip():
            raise ValueError(f"record {i}: no explanation text")
    perm = shuffle_across_pairs(rows, rng)
    texts = {"reference": [r["text"] for r in rows], "shuffled": [rows[perm[i]]["text"] for i in range(len(rows))],
             "scrambled": [scramble(r["text"], rng) for r in rows]}
    base = [{k: v for k, v in r.items() if k != "text"} for r in rows]
    return {c: [{"user": b["user"], "item": b["item"], "prediction": texts[c][i], "reference": rows[i]["text"],
                 **{k: b[k] for k in CARRIED if k in b}} for i, b in enumerate(base)] for c in CONDITIONS}


def write_calibration_set(records: Sequence[dict], out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write ``OUT/{reference,shuffled,scrambled}.jsonl`` (atomically); returns condition -> path."""
    from explainrec.io import atomic_write_jsonl

    out = Path(out_dir)
    paths = {}
    for condition, rows in calibration_rows(records, seed=seed).items():
        paths[condition] = out / f"{condition}.jsonl"
        atomic_write_jsonl(paths[condition], rows)
    return paths
