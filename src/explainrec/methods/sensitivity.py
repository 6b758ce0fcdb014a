"""User sensitivity: does the explanation of an item change when another user asks, and does it move toward them?

Why: fine-tuned explainers tend to write near-templates, the same text for an item whoever the user is. Word-overlap
metrics reward that (the references of one item share words), so it needs its own check. For a seeded sample of a
split's pairs (u, i), another user u' of the split is chosen and the SAME item is explained for u' (the pair is built
with :meth:`Dataset.pair`, so the prompt holds u''s profile and i's text), with the same decoding settings. Per swap:

    changed           the two texts differ (after stripping surrounding whitespace)
    change            100 * (1 - ROUGE-L F1(original, swapped))                                    (0 when equal)
    toward_profile    100 * (cos(e(swapped), e(profile of u')) - cos(e(original), e(profile of u')))
    toward_reference  the same with u''s own reference explanation (its pair with i in the split if it has one,
                      else its first pair of the split)
    away_from_own     100 * (cos(e(swapped), e(profile of u)) - cos(e(original), e(profile of u)))  (expected < 0)

``e`` is :class:`~explainrec.metrics.embedding.SentenceEncoder` (the embedded MiniLM, unit vectors). A template
writes the same text for (u, i) and (u', i), so it scores exactly 0 on every figure. A toward-term is left out for a
swap whose text it needs is missing (a dataset without profiles), and the result counts and says so.

Sampling is deterministic per seed and independent of the method: the pairs are ``rng.sample`` of the split's
examples, then for each pair the same ``rng`` draws ``candidates`` other users of the split in a fixed order (so the
triples also depend on ``candidates``, 16 by default); u' is the first of them. For a method that reports a
``cluster`` per pair (what ``Prepared.extras(i, "")`` returns, read without generating), u' is instead the first
candidate whose swapped pair (u', i) is routed through ANOTHER cluster than (u, i), so that the swap also exercises
the routing; where none of the candidates crosses, it is the first candidate again. So two methods evaluated with
the same seed on the same data get the same (u, u', i) triples unless one of them reports clusters and its first
candidate stayed in the pair's cluster; they always get the same (u, i) pairs.

Noise floor: greedy text can depend on the batch it is generated in (int8 on a CPU does: on 24 google test pairs of
the zero-shot SmolLM2, 5 of 8 originals changed when generated again in another batch; fp32 none), and a swapped
pair never shares the batch layout of its original. So the first ``control`` originals are generated again in a call
of their own, and ``control`` reports ``changed`` and ``change`` between those two texts of the SAME pair: read the
swap figures against it (the toward-terms are differences of cosines, so that noise has no sign and only widens them).
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from explainrec.config import ConfigError
from explainrec.data.schema import DataError, Dataset
from explainrec.methods.explain import normalise_split

CANDIDATES = 16  # other users probed per pair for a cluster crossing (16 misses a cluster of 1/4 of pairs w.p. 1%)
CONTROL = 8  # originals generated again in a call of their own: the noise floor of the figures
FIGURES = ("changed", "change", "toward_profile", "toward_reference", "away_from_own")
MEANINGS = {
    "changed": "share of swaps whose text differs at all (%)",
    "change": "100 x (1 - ROUGE-L F1) between the two texts: how much of the wording changed",
    "toward_profile": "cosine to u''s profile, swapped minus original (x100): > 0 moves toward the new user",
    "toward_reference": "cosine to u''s own reference explanation, swapped minus original (x100)",
    "away_from_own": "cosine to u's profile, swapped minus original (x100): < 0 moves away from the first user",
    "noise": "the same pair (u, i) generated again in another batch: what changed and change are without a swap",
}


def user_sensitivity(explainer, dataset: Dataset, *, split: str = "test", n: int = 48, seed: int = 0,
                     generation=None, encoder=None, original_rows: Sequence[dict] | None = None,
                     candidates: int = CANDIDATES, control: int = CONTROL, progress: bool = False) -> dict:
    """Explain ``n`` sampled pairs (u, i) of ``split`` and the same items for other users (u', i); see the module.

    Args:
        explainer: any :class:`~explainrec.methods.base.Explainer`.
        dataset: the data the pairs, profiles and references come from.
        n: pairs sampled (all of the split when it has fewer).
        generation: :class:`~explainrec.llm.decoding.GenerationConfig` of both explanations (default: greedy).
        encoder: an object with ``encode(texts) -> (m, d)`` tensor (default: ``SentenceEncoder("minilm")``).
        original_rows: rows of an earlier explanation of the split (``RUN/predictions.jsonl``), matched by user and
            item: their texts stand for the original explanations (rows whose ``reference`` is not the split's are
            ignored). They are kept only if the ``control`` texts equal them; else every original is explained.
        candidates: other users drawn per pair (the first is u'; more are only probed for a cluster crossing).
        control: the first ``control`` sampled originals are generated again, in a call of their own: the change
            between the two texts of the same pair is the noise floor of ``changed`` and ``change`` (0 where greedy
            text does not depend on the batch it is generated in: fp32 does not here, int8 on a CPU does).

    Returns a JSON-able dict: ``means``, ``counts``, ``clusters``, ``originals``, ``notes``, ``settings`` and one row
    per swap in ``swaps`` (:func:`to_markdown` renders it).
    """
    from explainrec.llm.decoding import GenerationConfig

    split = normalise_split(split)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if control < 0:
        raise ConfigError(f"control must be at least 0, got {control}")
    if candidates < 1:
        raise ConfigError(f"candidates must be at least 1, got {candidates}")
    generation = generation or GenerationConfig()
    examples = dataset.split_examples(split)
    if not examples:
        raise DataError(f"dataset {dataset.name!r} has no explained pairs in split {split!r}")
    split_users = list(dict.fromkeys(e.user for e in examples))  # order of first appearance: fixed per dataset
    if len(split_users) < 2:
        raise DataError(f"split {split!r} of {dataset.name!r} has one user only: nobody to swap in")

    rng = random.Random(seed)
    picked = [examples[k] for k in sorted(rng.sample(range(len(examples)), min(n, len(examples))))]
    drawn = []  # per pair: other users in the order they are tried
    for ex in picked:
        others = [v for v in split_users if v != ex.user]
        drawn.append(rng.sample(others, min(candidates, len(others))))

    originals = [dataset.pair_of(ex) for ex in picked]
    clusters = _clusters(explainer, originals[:1])
    if clusters is not None:
        clusters = _clusters(explainer, originals)
    chosen, other_clusters = _choose(explainer, dataset, originals, drawn, clusters)
    swapped = [dataset.pair(dataset.users.decode(v), p.item)[0] for v, p in zip(chosen, originals)]

    original_texts, swapped_texts, control_texts, origin = _explain_all(
        explainer, originals, picked, swapped, original_rows, generation, control, progress)

    if encoder is None:
        from explainrec.metrics.embedding import SentenceEncoder

        encoder = SentenceEncoder("minilm")
    references = [_reference_of(examples, v, ex.item) for v, ex in zip(chosen, picked)]
    swaps = _score(encoder, originals, swapped, original_texts, swapped_texts, references, clusters, other_clusters)
    for swap, again in zip(swaps, control_texts):
        swap["regenerated"] = again  # the original generated again: the noise floor
    floor = _changes(original_texts[:len(control_texts)], control_texts)
    return _result(explainer, swaps, floor, split=split, n=n, seed=seed, candidates=candidates,
                   generation=generation, encoder=encoder, origin=origin, clusters=clusters is not None)


# ---------------------------------------------------------------------------------------------------- choosing u'


def _clusters(explainer, pairs) -> list | None:
    """The ``cluster`` each pair is routed through, from the method's ``Prepared.extras`` (no generation); None
    when the explainer reports none."""
    if getattr(explainer, "prepare", None) is None or not pairs:
        return None
    prepared = explainer.prepare(list(pairs))
    found = [prepared.extras(k, "").get("cluster") for k in range(len(pairs))]
    return None if any(c is None for c in found) else found


def _choose(explainer, dataset, originals, drawn, clusters) -> tuple[list[int], list | None]:
    """u' per pair (user index) and the cluster of (u', i): the first drawn user, or with clusters the first whose
    swapped pair is in another cluster (probed one candidate rank at a time for all pairs still open)."""
    if clusters is None:
        return [d[0] for d in drawn], None
    chosen: list[int | None] = [None] * len(drawn)
    other: list = [None] * len(drawn)
    first: list = [None] * len(drawn)  # the cluster of the first candidate: the fallback
    for rank in range(max(len(d) for d in drawn)):
        open_ = [k for k in range(len(drawn)) if chosen[k] is None and rank < len(drawn[k])]
        if not open_:
            break
        probes = [dataset.pair(dataset.users.decode(drawn[k][rank]), originals[k].item)[0] for k in open_]
        found = _clusters(explainer, probes)
        for k, c in zip(open_, found):
            if rank == 0:
                first[k] = c
            if c != clusters[k]:
                chosen[k], other[k] = drawn[k][rank], c
    for k in range(len(drawn)):
        if chosen[k] is None:
            chosen[k], other[k] = drawn[k][0], first[k]
    return chosen, other


def _reference_of(examples, user: int, item: int) -> str | None:
    """u''s own reference: its explanation of the same item in the split when it has one, else its first."""
    own = [e for e in examples if e.user == user]
    same = next((e for e in own if e.item == item), None)
    text = (same or own[0]).explanation if own else None
    return text if text and text.strip() else None


# ---------------------------------------------------------------------------------------------------- explaining


def _explain_all(explainer, originals, picked, swapped, original_rows, generation, control, progress):
    """``(original texts, swapped texts, control texts, origin)``.

    One call explains the swapped pairs with whatever originals ``original_rows`` does not hold; a second call of its
    own generates the first ``control`` originals again (another batch composition). Reused texts must equal their
    control texts, else they were made another way (settings, precision, model, or batch-dependent numerics) and every
    original is explained here.
    """
    reused: dict[int, str] = {}
    origin = {"source": "explained", "reused": 0, "explained": len(originals), "verified": 0, "note": None}
    if original_rows is not None:
        by_pair = {}
        for row in original_rows:
            if {"user", "item", "prediction"} <= set(row):
                by_pair.setdefault((str(row["user"]), str(row["item"])), row)
        for k, (pair, ex) in enumerate(zip(originals, picked)):
            row = by_pair.get((pair.user, pair.item))
            if row is not None and ("reference" not in row or row["reference"] == ex.explanation):
                reused[k] = str(row["prediction"])
        if not reused:
            origin["note"] = "the given rows hold none of the sampled pairs (another split or dataset?)"

    def texts_of(pairs) -> list[str]:
        return [r["prediction"] for r in explainer.explain(pairs, generation, progress=progress)] if pairs else []

    todo = [k for k in range(len(originals)) if k not in reused]
    texts = texts_of([originals[k] for k in todo] + list(swapped))
    fresh, swapped_texts = dict(zip(todo, texts[:len(todo)])), texts[len(todo):]
    checks = list(range(min(control, len(originals))))
    control_texts = texts_of([originals[k] for k in checks])
    checked = [k for k in checks if k in reused]
    mismatched = sum(reused[k] != control_texts[k] for k in checked)
    if mismatched:
        origin["note"] = (f"{mismatched} of {len(checked)} reused texts came out differently when generated again "
                          "(other settings, precision or model, or batch-dependent numerics): every original was "
                          "explained here instead")
        rest = sorted(reused)
        fresh.update(zip(rest, texts_of([originals[k] for k in rest])))
        reused = {}
    elif reused:
        origin.update(source="given rows", reused=len(reused), explained=len(originals) - len(reused),
                      verified=len(checked))
    original_texts = [reused[k] if k in reused else fresh[k] for k in range(len(originals))]
    return original_texts, swapped_texts, control_texts, origin


# ---------------------------------------------------------------------------------------------------- scoring


def _changes(before: list[str], after: list[str]) -> list[float]:
    """100 * (1 - ROUGE-L F1) per pair of texts; exactly 0 for texts equal up to surrounding whitespace."""
    from explainrec.metrics.text import rouge_per_example

    rouge_l = rouge_per_example(after, before)["rougeL"] if before else []
    return [0.0 if a.strip() == b.strip() else 100.0 - r for a, b, r in zip(before, after, rouge_l)]


def _score(encoder, originals, swapped, original_texts, swapped_texts, references, clusters,
           other_clusters) -> list[dict]:
    own_profiles = [_text(p.user_profile) for p in originals]
    new_profiles = [_text(p.user_profile) for p in swapped]
    unique = list(dict.fromkeys(t for t in [*original_texts, *swapped_texts, *own_profiles, *new_profiles,
                                            *references] if t is not None))
    vectors = torch.nn.functional.normalize(torch.as_tensor(encoder.encode(unique)).float(), dim=-1)
    at = {t: k for k, t in enumerate(unique)}

    def cos(a: str, b: str) -> float:
        return float(vectors[at[a]] @ vectors[at[b]])

    def toward(target: str | None, before: str, after: str) -> float | None:
        return None if target is None else 100.0 * (cos(after, target) - cos(before, target))

    changes = _changes(original_texts, swapped_texts)
    swaps = []
    for k, (pair, other) in enumerate(zip(originals, swapped)):
        before, after = original_texts[k], swapped_texts[k]
        swaps.append({
            "user": pair.user, "other_user": other.user, "item": pair.item,
            "cluster": clusters[k] if clusters is not None else None,
            "other_cluster": other_clusters[k] if other_clusters is not None else None,
            "crossed": clusters[k] != other_clusters[k] if clusters is not None else None,
            "original": before, "swapped": after,
            "changed": before.strip() != after.strip(),
            "change": changes[k],
            "toward_profile": toward(new_profiles[k], before, after),
            "toward_reference": toward(references[k], before, after),
            "away_from_own": toward(own_profiles[k], before, after),
            "regenerated": None,
        })
    return swaps


def _text(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _share(flags: list[bool]) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


def _result(explainer, swaps, floor: list[float], *, split, n, seed, candidates, generation, encoder, origin,
            clusters: bool) -> dict:
    means, counts, notes = {}, {}, []
    means["changed"] = _share([s["changed"] for s in swaps])
    means["change"] = _mean([s["change"] for s in swaps])
    counts["changed"] = counts["change"] = len(swaps)
    needs = {"toward_profile": "u''s profile", "toward_reference": "u''s reference explanation",
             "away_from_own": "u's profile"}
    for key, need in needs.items():
        values = [s[key] for s in swaps if s[key] is not None]
        means[key] = _mean(values)
        counts[key] = len(values)
        if key == "away_from_own":  # the expected direction is away: count the moves below zero
            means["away_from_own_negative"] = _share([v < 0 for v in values])
        else:
            means[f"{key}_positive"] = _share([v > 0 for v in values])
        if len(values) < len(swaps):
            notes.append(f"{key}: left out for {len(swaps) - len(values)} of {len(swaps)} swaps without {need}")
    control = {"pairs": len(floor), "changed": _share([c > 0 for c in floor]), "change": _mean(floor)}
    if control["changed"]:
        notes.append(f"noise floor: {sum(c > 0 for c in floor)} of {len(floor)} originals came out differently when "
                     "generated again in another batch (batch-dependent numerics, e.g. int8 on a CPU): read changed "
                     "and change against that floor, or rerun with --precision fp32")
    crossed = sum(1 for s in swaps if s["crossed"])
    if origin.get("note"):
        notes.append(f"originals: {origin['note']}")
    return {
        "kind": "user_sensitivity",
        "method": getattr(explainer, "method", None),
        "n": len(swaps),
        "means": means,
        "counts": counts,
        "control": control,
        "clusters": {"reported": clusters, "crossed": crossed if clusters else None,
                     "not_crossed": len(swaps) - crossed if clusters else None},
        "originals": origin,
        "notes": notes,
        "settings": {"split": split, "n_requested": n, "seed": seed, "candidates": candidates, "control": len(floor),
                     "generation": generation.to_dict(),
                     "encoder": getattr(encoder, "description", None) or type(encoder).__name__,
                     "precision": (getattr(explainer, "info", None) or {}).get("precision")},
        "swaps": swaps,
    }


# ---------------------------------------------------------------------------------------------------- rendering


def to_markdown(result: dict, title: str | None = None) -> str:
    """A short table of the means beside what a template scores, what each number means, then the settings."""
    m, c = result["means"], result["counts"]

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    rows = [("changed (% of swaps)", m["changed"], c["changed"], "0", MEANINGS["changed"]),
            ("change", m["change"], c["change"], "0", MEANINGS["change"]),
            ("toward_profile", m["toward_profile"], c["toward_profile"], "0", MEANINGS["toward_profile"]),
            ("  share > 0 (%)", m["toward_profile_positive"], c["toward_profile"], "0", ""),
            ("toward_reference", m["toward_reference"], c["toward_reference"], "0", MEANINGS["toward_reference"]),
            ("  share > 0 (%)", m["toward_reference_positive"], c["toward_reference"], "0", ""),
            ("away_from_own", m["away_from_own"], c["away_from_own"], "0", MEANINGS["away_from_own"]),
            ("  share < 0 (%)", m["away_from_own_negative"], c["away_from_own"], "0", ""),
            ("noise floor: changed (%)", result["control"]["changed"], result["control"]["pairs"], "0",
             MEANINGS["noise"]),
            ("noise floor: change", result["control"]["change"], result["control"]["pairs"], "0", "")]
    s = result["settings"]
    lines = [f"## User sensitivity: {title or result.get('method') or 'explainer'}", "",
             f"{result['n']} pairs (u, i) of split `{s['split']}` (seed {s['seed']}); the same item explained "
             "for another user u' of the split, with the same decoding. A template (the same text for an item "
             "whoever asks) scores 0 on every line.", "",
             "| figure | value | n | template | meaning |", "|---|---:|---:|---:|---|"]
    lines += [f"| {name} | {fmt(v)} | {k} | {t} | {mean} |" for name, v, k, t, mean in rows]
    cl = result["clusters"]
    lines.append("")
    if cl["reported"]:
        lines.append(f"Clusters: the method reports one per pair; u' was chosen so that (u', i) is routed through "
                     f"another cluster than (u, i) where one of {s['candidates']} drawn users allowed it: "
                     f"{cl['crossed']} of {result['n']} swaps crossed clusters.")
    else:
        lines.append("Clusters: the method reports none; u' is the first user drawn for each pair.")
    o = result["originals"]
    lines.append(f"Originals: {o['reused']} reused from the given predictions ({o['verified']} generated again to "
                 f"check them), {o['explained']} explained here." if o["reused"] else
                 "Originals: all explained here.")
    gen = s["generation"]
    lines.append(f"Decoding: {'sampling' if gen.get('do_sample') else 'greedy'}, max_new_tokens "
                 f"{gen.get('max_new_tokens')}, precision {s.get('precision') or 'as loaded'}; encoder "
                 f"{s['encoder']}.")
    for note in result["notes"]:
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"
