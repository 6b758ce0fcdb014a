"""A rating study: which pairs, which methods' explanations, in which order per pair -- fixed in ``STUDY/study.json``
before the first rating, so that every rater (and the LLM judge) scores exactly the same design.

The study copies the explanation texts and the pair's context (user profile, items the user had, the item) into
its own file: the page, the judge and the report need nothing else, and a predictions file edited later cannot
change what was rated (its SHA-256 at creation is kept for the record).
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from explainrec.data.schema import DataError, where

FORMAT = 1
STUDY_FILE = "study.json"
RATINGS_FILE = "ratings.jsonl"
HISTORY = 5  # items the user had, shown beside the profile: enough to judge personalisation, short enough to read
CONTEXT_FIELDS = ("title", "user_profile", "item_profile")


@dataclass
class Study:
    """A loaded ``study.json``; ``pairs[k]`` holds ``user``, ``item``, ``context``, ``texts`` (method -> text) and
    ``order`` (the methods as shown on the page, left to right)."""

    folder: Path
    id: str
    seed: int
    methods: list[dict]
    pairs: list[dict]
    created: str
    shared_pairs: int

    @property
    def method_names(self) -> list[str]:
        return [m["name"] for m in self.methods]

    @property
    def ratings_path(self) -> Path:
        return self.folder / RATINGS_FILE

    def shown(self, k: int) -> list[str]:
        """The texts of pair ``k`` in the order the page shows them (no method names: the page is blind)."""
        pair = self.pairs[k]
        return [pair["texts"][name] for name in pair["order"]]


def _design(methods: list[dict], pairs: list[dict], seed: int, shared: int) -> dict:
    return {"format": FORMAT, "seed": seed, "shared_pairs": shared, "methods": methods, "pairs": pairs}


def fingerprint(design: dict) -> str:
    """A short hash of the design; every rating carries it, so a rating from another design is never mixed in."""
    return hashlib.sha256(json.dumps(design, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def create_study(folder: str | Path, files: dict[str, str | Path], *, n_pairs: int, seed: int = 0,
                 dataset=None, history: int = HISTORY) -> Study:
    """Sample ``n_pairs`` pairs that every predictions file explains (seeded), order each pair's explanations at
    random, and write ``folder/study.json`` -- or return the study already there when it has this same design.

    ``files``: method name -> predictions file (rows with ``user`` and ``item``; the references must agree, as
    for ``explainrec compare``). ``dataset``: where the pair's context comes from when the rows carry none (the
    item's title and profile, the user's profile and the first ``history`` items the user had in training).
    A folder that holds a study of another design is refused: a study is fixed before its first rating.
    """
    from explainrec.io import atomic_write_json, sha256_file
    from explainrec.metrics.predictions import load_predictions
    from explainrec.metrics.significance import align

    folder = Path(folder)
    if len(files) < 2:
        raise DataError(f"a study compares two or more predictions files; got {len(files)}")
    if n_pairs < 1:
        raise DataError(f"the number of pairs must be at least 1; got {n_pairs}")
    names = list(files)
    rows = {}
    for name, path in files.items():
        rows[name] = load_predictions(path)
        seen = {}
        for i, r in enumerate(rows[name], start=1):
            if r.get("user") is None or r.get("item") is None:
                raise DataError(f"{where(path, None, 'user')}: row {i} has no user or item id; a study pairs the "
                                "files' explanations by (user, item)")
            key = (str(r["user"]), str(r["item"]))
            if key in seen:
                raise DataError(f"{path}: rows {seen[key]} and {i} both explain user {key[0]}, item {key[1]}")
            seen[key] = i
    first = names[0]
    by_method = {first: {(str(r["user"]), str(r["item"])): r for r in rows[first]}}
    for name in names[1:]:  # refuses files whose references differ on a shared pair (not the same test set)
        _, theirs = align(rows[first], rows[name], (f"{first} ({files[first]})", f"{name} ({files[name]})"))
        by_method[name] = {(str(r["user"]), str(r["item"])): r for r in theirs}
    shared = [k for k in by_method[first] if all(k in by_method[n] for n in names)]
    if n_pairs > len(shared):
        raise DataError(f"asked for {n_pairs} pairs, but the {len(files)} files share only {len(shared)} pairs")
    rng = random.Random(seed)
    picked = rng.sample(range(len(shared)), n_pairs)  # also the order in which raters meet the pairs
    lookup = _ContextLookup(dataset, history) if dataset is not None else None
    pairs = []
    for index in picked:
        user, item = shared[index]
        context = {"user": user, "item": item}
        for name in names:  # a row's own context fields first (CSV/JSONL predictions may carry them)
            for field in CONTEXT_FIELDS:
                if context.get(field) is None and isinstance(by_method[name][(user, item)].get(field), str):
                    context[field] = by_method[name][(user, item)][field]
        if lookup is not None:
            lookup.fill(context)
        pairs.append({"user": user, "item": item, "context": context,
                      "texts": {n: by_method[n][(user, item)]["prediction"] for n in names},
                      "order": rng.sample(names, len(names))})
    methods = [{"name": n, "file": str(Path(files[n]).resolve()), "sha256": sha256_file(files[n])} for n in names]
    design = _design(methods, pairs, seed, len(shared))
    study_id = fingerprint(design)
    path = folder / STUDY_FILE
    if path.exists():
        existing = load_study(folder)
        if existing.id != study_id:
            raise DataError(f"{path}: this folder already holds study {existing.id} ({len(existing.pairs)} pairs of "
                            f"{', '.join(existing.method_names)}, seed {existing.seed}); a study is fixed before its "
                            "first rating, so a different design needs another folder")
        return existing
    atomic_write_json(path, {**design, "id": study_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return load_study(folder)


class _ContextLookup:
    """What a dataset says about a pair: title and profiles (``Dataset.pair``) and the user's training history."""

    def __init__(self, dataset, history: int):
        import numpy as np

        self.dataset, self.history = dataset, history
        self.titles: dict[int, str] = {}
        for e in dataset.examples:
            if e.title and e.item not in self.titles:
                self.titles[e.item] = e.title
        train = dataset.interactions.of_split("train")
        order = np.argsort(train.timestamp, kind="stable") if train.timestamp is not None else np.arange(len(train))
        self.had: dict[int, list[int]] = {}
        for u, i in zip(train.user[order].tolist(), train.item[order].tolist()):
            self.had.setdefault(u, []).append(i)

    def fill(self, context: dict) -> None:
        pair, _ = self.dataset.pair(context["user"], context["item"])
        for field in CONTEXT_FIELDS:
            if context.get(field) is None and getattr(pair, field):
                context[field] = getattr(pair, field)
        u = self.dataset.users.encode(context["user"], default=-1)
        i = self.dataset.items.encode(context["item"], default=-1)
        had = [j for j in self.had.get(u, []) if j != i]
        titled = [self.titles[j] for j in had if j in self.titles]
        context["history"] = titled[: self.history]
        context["history_total"] = len(had)


def load_study(folder: str | Path) -> Study:
    """Read and check ``folder/study.json``; errors name the file and the field."""
    folder = Path(folder)
    path = folder / STUDY_FILE
    if not path.is_file():
        raise DataError(f"{path}: no study here (make one with `explainrec rate --study {folder} --predictions "
                        "NAME=FILE --predictions NAME=FILE`)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: broken JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key, kind in (("format", int), ("id", str), ("seed", int), ("methods", list), ("pairs", list),
                      ("shared_pairs", int)):
        if not isinstance(obj.get(key), kind):
            raise DataError(f"{where(path, None, key)}: missing or not a {kind.__name__}")
    if obj["format"] != FORMAT:
        raise DataError(f"{where(path, None, 'format')}: format {obj['format']} is not {FORMAT} (another version)")
    names = [m.get("name") for m in obj["methods"] if isinstance(m, dict)]
    if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{where(path, None, 'methods')}: needs two or more methods with distinct names")
    for k, pair in enumerate(obj["pairs"]):
        field = f"pairs.{k}"
        if not isinstance(pair, dict) or not isinstance(pair.get("texts"), dict) or not isinstance(pair.get("order"), list):
            raise DataError(f"{where(path, None, field)}: needs texts and order")
        if sorted(pair["order"]) != sorted(names) or set(pair["texts"]) != set(names):
            raise DataError(f"{where(path, None, field)}: its texts and order must name each method once")
        if not all(isinstance(t, str) for t in pair["texts"].values()):
            raise DataError(f"{where(path, None, field + '.texts')}: texts must be strings")
    if not obj["pairs"]:
        raise DataError(f"{where(path, None, 'pairs')}: no pairs")
    design = _design(obj["methods"], obj["pairs"], obj["seed"], obj["shared_pairs"])
    if fingerprint(design) != obj["id"]:
        raise DataError(f"{path}: its content no longer matches its id {obj['id']} (edited after creation?); the "
                        "design must stay as it was when rating began")
    return Study(folder=folder, id=obj["id"], seed=obj["seed"], methods=obj["methods"], pairs=obj["pairs"],
                 created=str(obj.get("created", "")), shared_pairs=obj["shared_pairs"])
