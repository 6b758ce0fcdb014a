"""What the server knows besides the model: the pairs' text from ``--data``, id search, the model's description.

Known pairs get their prompt text from the dataset exactly as in training (:meth:`Dataset.pair`); a request's own
title, profiles or features override it. Without ``--data`` the prompt holds only what the request gives. A pair
with no text at all and ids the model never learned is *ungrounded*: the answer says so (``grounded: false``), or
the server refuses it when started with ``--ungrounded refuse``.
"""
from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Any

from explainrec.data.schema import Pair
from explainrec.serve.batcher import Batcher
from explainrec.serve.schemas import FieldError, PairFields, ServeSettings, check_pair

SOURCE_NOTES = {
    "example": "the dataset's example of this pair (exactly the training prompt)",
    "profiles": "the dataset's title and profiles of this item and user (the pair itself has no example)",
    "request": "the request's own text",
    "none": "nothing: neither the dataset nor the request describe this pair",
}
COLD_START_NOTE = "the model never saw this user or item in training: it took the cold-start path"
UNGROUNDED_NOTE = ("nothing is known about this pair (no text from --data or the request, ids the model never "
                   "learned): the explanation rests on nothing; send title / user_profile / item_profile")
OVERRIDES = ("title", "user_profile", "item_profile", "features")


class Service:
    """The loaded explainer, the optional dataset, the batcher and the settings: everything a route needs."""

    def __init__(self, explainer, dataset=None, settings: ServeSettings | None = None, *,
                 load_seconds: float | None = None, precision: str = "fp32"):
        self.explainer = explainer
        self.dataset = dataset
        self.settings = settings or ServeSettings()
        self.settings.check()
        self.load_seconds = load_seconds
        self.precision = (explainer.info or {}).get("precision", precision)
        self.started_at = time.time()
        self.batcher = Batcher(explainer, max_batch=self.settings.max_batch, max_wait_ms=self.settings.max_wait_ms,
                               queue=self.settings.queue)
        self.items = _index(dataset, "item") if dataset is not None else _ids_only(explainer.known_items)
        self.users = _index(dataset, "user") if dataset is not None else _ids_only(explainer.known_users)
        self.pair_pool = (dataset.split_examples("test") or dataset.examples) if dataset is not None else []
        self.search_source = "data" if dataset is not None else ("model" if self.items or self.users else "none")

    # ------------------------------------------------------------------ pairs

    def resolve(self, fields: PairFields, where: str = "") -> tuple[Pair, dict]:
        """The :class:`Pair` to explain and a description of where its prompt text came from; :class:`FieldError`
        for text over the limits, or an ungrounded pair when the server refuses those (``where``: the field
        prefix, ``pairs.3.`` in a batch)."""
        check_pair(fields, self.settings, where)
        given = {k: getattr(fields, k) for k in OVERRIDES if getattr(fields, k) is not None}
        if "features" in given:
            given["features"] = tuple(given["features"])
        if self.dataset is not None:
            pair, source = self.dataset.pair(fields.user, fields.item)
            source = "none" if source == "unknown" else source
        else:
            pair, source = Pair(user=fields.user, item=fields.item), "none"
        if given:
            pair = replace(pair, **given)
            source = "request" if source == "none" else f"{source}+request"
        note = " + ".join(SOURCE_NOTES[s] for s in source.split("+"))
        prompt = {"source": source, "note": note, "title": pair.title, "user_profile": pair.user_profile,
                  "item_profile": pair.item_profile, "features": list(pair.features)}
        if self.settings.ungrounded == "refuse" and not self.grounded(pair):
            known = self.known(pair)
            raise FieldError(f"{where}{'item' if known['user'] else 'user'}", UNGROUNDED_NOTE, "ungrounded")
        return pair, prompt

    def grounded(self, pair: Pair) -> bool:
        """Whether anything is known about the pair: prompt text, or both ids learned by the model."""
        if pair.title or pair.user_profile or pair.item_profile or pair.features:
            return True
        known = self.known(pair)
        return known["user"] is True and known["item"] is True

    def known(self, pair: Pair) -> dict[str, bool | None]:
        users, items = self.explainer.known_users, self.explainer.known_items
        return {"user": None if users is None else pair.user in users,
                "item": None if items is None else pair.item in items}

    def random_pair(self, rng: random.Random) -> dict | None:
        """A pair that exists in ``--data`` (an example, from the test split when it has one), or None."""
        if not self.pair_pool:
            return None
        example = rng.choice(self.pair_pool)
        pair = self.dataset.pair_of(example)
        return {"user": pair.user, "item": pair.item, "title": pair.title, "split": example.split}

    # ------------------------------------------------------------------ search

    def search(self, kind: str, query: str, limit: int) -> list[dict]:
        """Ids (and titles / profiles) containing ``query``, case-insensitive: exact id, id prefix, id, text."""
        entries = self.items if kind == "items" else self.users
        q = query.strip().lower()
        if not q:
            return [{"id": i, "text": t} for i, t in entries[:limit]]
        ranked = []
        for n, (ident, text) in enumerate(entries):
            low = ident.lower()
            if low == q:
                rank = 0
            elif low.startswith(q):
                rank = 1
            elif q in low:
                rank = 2
            elif text and q in text.lower():
                rank = 3
            else:
                continue
            ranked.append((rank, n, ident, text))
        ranked.sort()
        return [{"id": ident, "text": text} for _, _, ident, text in ranked[:limit]]

    # ------------------------------------------------------------------ description

    def model_info(self) -> dict[str, Any]:
        from explainrec import __version__
        from explainrec.methods.model_folder import data_fingerprint

        info = dict(self.explainer.info or {})
        served = None
        if self.dataset is not None:
            fingerprint = data_fingerprint(self.dataset.users, self.dataset.items)
            trained = (info.get("data") or {}).get("fingerprint")
            served = {"name": self.dataset.name, "fingerprint": fingerprint,
                      "matches_model": None if trained is None else trained == fingerprint}
        return {
            "method": self.explainer.method,
            "model": info.get("model"),
            "config": info.get("config"),
            "data": info.get("data"),
            "served_data": served,
            "folder": info.get("folder"),
            "precision": self.precision,
            "load_seconds": self.load_seconds,
            "started_at": self.started_at,
            "known_users": len(self.explainer.known_users) if self.explainer.known_users is not None else None,
            "known_items": len(self.explainer.known_items) if self.explainer.known_items is not None else None,
            "limits": self.settings.limits(),
            "version": __version__,
        }


def _index(dataset, kind: str) -> list[tuple[str, str | None]]:
    """``(raw id, text)`` for every user or item of the dataset: an item's title, a user's profile."""
    ids = dataset.items if kind == "item" else dataset.users
    text: dict[int, str] = {}
    for e in dataset.examples:
        key, value = (e.item, e.title) if kind == "item" else (e.user, e.user_profile)
        if value and key not in text:
            text[key] = value
    return [(raw, text.get(n)) for n, raw in enumerate(ids.raw)]


def _ids_only(id_map) -> list[tuple[str, str | None]]:
    return [(raw, None) for raw in id_map.raw] if id_map is not None else []
