"""A small synthetic explainable-recommendation dataset with a known latent structure.

Why: tests and laptop demos need data whose right answer is known. Users are drawn from ``n_types``
latent preference types; each type likes its own disjoint group of feature words. Items carry feature
words mostly from one "home" type; users interact mostly with items of their own type (``in_type_prob``)
and rate them from the type-feature affinity plus noise. Every interaction is also an example whose
explanation names the item's features the user's type likes (or, for a low rating, the ones it lacks).
So the type is visible on the user side, the item side, in the ratings and in the text, and a pair
clustering model such as GaVaMoE's VAE-GMM can be checked against ``Dataset.user_types``.

``ordered=True`` (``synthetic:ordered=1``) adds time: each type's items lie on a fixed ring, and a user's in-type
items are a walk along it (the next item is mostly the ring's next one), so the order of a history predicts the
next item -- which a sequential recommender (SASRec) can learn and a bag-of-items one (MF, popularity) cannot.
Interactions then carry timestamps and the split is temporal (leave-one-out). The default output is unchanged.
"""
from __future__ import annotations

import numpy as np

from explainrec.data.schema import Dataset, Example, IdMap, Interactions
from explainrec.data.splits import hash_split

# Readable feature words in themed groups of 8, one group per type (disjoint liked sets); with more
# types or more words per type than the groups hold, types take consecutive runs of the flat list.
FEATURE_GROUPS = (
    ("battery", "screen", "camera", "speaker", "keyboard", "charger", "processor", "touchpad"),
    ("fabric", "stitching", "zipper", "pockets", "sleeves", "collar", "lining", "buttons"),
    ("plot", "characters", "ending", "dialogue", "pacing", "narrator", "chapters", "illustrations"),
    ("flavor", "sauce", "spices", "crust", "dessert", "coffee", "portions", "broth"),
    ("melody", "rhythm", "vocals", "lyrics", "guitar", "drums", "chorus", "harmony"),
    ("grip", "cushioning", "sole", "laces", "padding", "arch", "traction", "heel"),
    ("blade", "handle", "lid", "thermostat", "kettle", "hinge", "spout", "whisk"),
    ("tent", "compass", "lantern", "backpack", "canopy", "stove", "rope", "hammock"),
    ("lamp", "curtains", "shelves", "mattress", "pillows", "rug", "mirror", "drawers"),
    ("graphics", "controls", "soundtrack", "levels", "multiplayer", "storyline", "puzzles", "bosses"),
    ("petals", "soil", "planter", "seeds", "hose", "trellis", "pruner", "mulch"),
    ("brush", "canvas", "palette", "easel", "sketchbook", "pigments", "varnish", "charcoal"),
)
FEATURE_WORDS = tuple(w for group in FEATURE_GROUPS for w in group)
# What an item of each group is called in titles and sentences.
ITEM_NOUNS = ("gadget", "jacket", "novel", "dish", "album", "sneaker", "kitchen tool", "camping kit",
              "home piece", "video game", "garden kit", "art set")
BRANDS = ("Nimbus", "Aurora", "Vertex", "Maple", "Cobalt", "Juniper", "Summit", "Harbor", "Willow", "Ember",
          "Atlas", "Pioneer", "Lumen", "Orchid", "Falcon", "Meadow")

POSITIVE = (
    "The user would enjoy this {noun} for its {liked}.",
    "This {noun} offers exactly the {liked} this user looks for.",
    "A good pick for someone who cares about {first}, thanks to its {liked}.",
    "The user will appreciate the {liked} of this {noun}.",
    "Recommended: a {noun} with great {liked}, just what the user likes.",
)
MIXED = (
    "This {noun} has decent {liked}, though the user may want more.",
    "The user may like the {liked}, but this {noun} is not a perfect match.",
    "An acceptable {noun} with fine {liked} for this user.",
)
NEGATIVE = (
    "The user may be disappointed: this {noun} lacks the {wanted} they care about.",
    "A user who wants good {wanted} is unlikely to care about the {other} of this {noun}.",
    "Not a great fit, since the user values {wanted} more than {other}.",
    "Despite its {other}, this {noun} misses the {wanted} the user is after.",
)


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _activity(rng: np.random.Generator, n_users: int, lo: int, hi: int, median: float) -> np.ndarray:
    """Long-tailed interactions per user: lognormal (many light users, a few heavy ones), clipped."""
    raw = rng.lognormal(mean=np.log(median), sigma=0.75, size=n_users)
    return np.clip(np.rint(raw), lo, hi).astype(np.int64)


def _drift_walk(rng: np.random.Generator, ring: np.ndarray, start: int, n: int) -> np.ndarray:
    """``n`` distinct items of ``ring`` (a cyclic order), visited from position ``start`` in steps of 1 (70%),
    2 (20%) or 3 (10%), skipping visited items: a Markov drift whose next item follows from the previous one."""
    seen = np.zeros(len(ring), dtype=bool)
    out = np.empty(n, dtype=np.int64)
    steps = rng.choice(3, size=n, p=(0.7, 0.2, 0.1)) + 1
    pos = start - steps[0]
    for k in range(n):
        pos = (pos + steps[k]) % len(ring)
        while seen[pos]:
            pos = (pos + 1) % len(ring)
        seen[pos] = True
        out[k] = ring[pos]
    return out


def _temporal_split(user_arr: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Leave-one-out by time: each user's last interaction is test, the one before valid (when the user has at
    least three), the rest train (RecExplainer's protocol). ``(N,)`` str array."""
    split = np.full(len(user_arr), "train", dtype="<U5")
    order = np.lexsort((timestamp, user_arr))  # by user, then time
    users_sorted = user_arr[order]
    last = np.r_[users_sorted[1:] != users_sorted[:-1], True]  # last row of each user in ``order``
    count = np.bincount(user_arr)[users_sorted]
    split[order[last & (count >= 2)]] = "test"
    before_last = np.r_[last[1:], False] & (count >= 3)
    split[order[before_last]] = "valid"
    return split


# Peak memory per interaction while generating (the example object with its texts, the columns, the lists they
# are built from): 654 bytes measured for users=20000,items=2000; rounded up.
BYTES_PER_INTERACTION = 700


def memory_estimate(n_users: int, n_items: int, interactions_per_user: tuple[int, int] = (3, 40),
                    median_interactions: float = 11.0) -> tuple[int, int]:
    """``(interactions, bytes)`` that :func:`make_synthetic` would make and need at its peak, computed without
    making them (the activity's expected value from a fixed sample of the same lognormal)."""
    lo, hi = interactions_per_user
    sample = np.clip(np.rint(np.random.default_rng(0).lognormal(np.log(max(median_interactions, 1e-9)), 0.75, 4096)), lo, hi)
    per_user = min(float(sample.mean()), float(n_items))
    interactions = int(n_users * per_user)
    return interactions, interactions * BYTES_PER_INTERACTION + 600 * (n_users + n_items)


def check_fits_in_memory(n_users: int, n_items: int, interactions_per_user: tuple[int, int] = (3, 40),
                         median_interactions: float = 11.0) -> None:
    """Refuse, before generating anything, a size the machine cannot hold (it would be killed for memory after
    minutes, with no message)."""
    from explainrec.data.schema import DataError
    from explainrec.io import memory_available

    interactions, need = memory_estimate(n_users, n_items, interactions_per_user, median_interactions)
    free = memory_available()
    if free is not None and need > free:
        raise DataError(f"users={n_users}, items={n_items} make about {interactions:,} interactions, "
                        f"about {need / 1e9:,.1f} GB in memory, but {free / 1e9:.1f} GB are available; use fewer "
                        "users or items")


def make_synthetic(
    n_users: int = 300,
    n_items: int = 200,
    n_types: int = 4,
    n_features: int | None = None,
    interactions_per_user: tuple[int, int] = (3, 40),
    median_interactions: float = 11.0,
    in_type_prob: float = 0.85,
    features_per_item: int = 3,
    rating_noise: float = 0.5,
    seed: int = 0,
    name: str = "synthetic",
    ordered: bool = False,
) -> Dataset:
    """Generate the dataset (deterministic per ``seed``).

    ``n_features`` is the vocabulary size, split evenly over the types (default 6 per type);
    ``interactions_per_user`` clips the lognormal activity whose median is ``median_interactions``
    (mean about 15 with the defaults); ``in_type_prob`` is the chance that an interaction goes to an
    item of the user's own type (0.85 rather than 0.8 by default: the off-type pairs are the ones a
    pair clusterer cannot place, and 0.85 keeps pair-cluster NMI comfortably above 0.8). Ratings are
    integers 1..5. Splits are 8:1:1 by a hash of the pair, except that a user's first interaction is
    moved to train when the hash gave the user none (every user then has a training signal).

    ``ordered`` (see the module docstring): in-type items follow a drift along a per-type ring, every interaction
    gets a timestamp (``Interactions.timestamp``, ``Example.timestamp``; seconds, increasing per user) and the split
    is leave-one-out by time instead of the hash. Ratings and texts are made the same way.
    """
    ordered = bool(ordered)
    if n_types < 1 or n_users < n_types or n_items < n_types:
        raise ValueError(f"need 1 <= n_types <= n_users, n_items; got {n_types=}, {n_users=}, {n_items=}")
    per_type = 6 if n_features is None else n_features // n_types
    if per_type < 2:
        raise ValueError(f"n_features={n_features} leaves fewer than 2 feature words per type")
    if per_type * n_types > len(FEATURE_WORDS):
        raise ValueError(f"at most {len(FEATURE_WORDS)} feature words are available, asked for "
                         f"{per_type * n_types}")
    lo, hi = interactions_per_user
    if not 1 <= lo <= hi:
        raise ValueError(f"interactions_per_user must be (min, max) with 1 <= min <= max, got {(lo, hi)}")
    check_fits_in_memory(n_users, n_items, interactions_per_user, median_interactions)
    if not 0.0 <= in_type_prob <= 1.0:
        raise ValueError(f"in_type_prob must be in [0, 1], got {in_type_prob}")
    k_feat = max(1, min(features_per_item, per_type))
    rng = np.random.default_rng(seed)

    if n_types <= len(FEATURE_GROUPS) and per_type <= len(FEATURE_GROUPS[0]):
        type_words = [list(FEATURE_GROUPS[t][:per_type]) for t in range(n_types)]
        nouns = list(ITEM_NOUNS[:n_types])
    else:
        type_words = [list(FEATURE_WORDS[t * per_type:(t + 1) * per_type]) for t in range(n_types)]
        nouns = ["item"] * n_types

    # balanced types, shuffled
    user_types = rng.permutation(np.arange(n_users) % n_types).astype(np.int64)
    item_types = rng.permutation(np.arange(n_items) % n_types).astype(np.int64)

    # item features: k_feat words of the home type, sometimes one off-type word (a little noise)
    item_features: list[list[str]] = []
    for t in item_types:
        words = [type_words[t][j] for j in rng.choice(per_type, size=k_feat, replace=False)]
        if n_types > 1 and rng.random() < 0.3:
            other = int(rng.choice([s for s in range(n_types) if s != t]))
            words.append(type_words[other][int(rng.integers(per_type))])
        item_features.append(words)
    liked_sets = [set(w) for w in type_words]

    # mild popularity skew inside each type's item pool
    pool = [np.flatnonzero(item_types == t) for t in range(n_types)]
    pool_w = []
    for p in pool:
        w = 1.0 / np.sqrt(1.0 + rng.permutation(len(p)))
        pool_w.append(w / w.sum())

    counts = _activity(rng, n_users, lo, hi, median_interactions)
    users_col: list[int] = []
    items_col: list[int] = []
    times_col: list[np.ndarray] = []
    rings = [rng.permutation(p) for p in pool] if ordered else []
    for u in range(n_users):
        t = user_types[u]
        n = int(min(counts[u], n_items))
        n_home = int(min(rng.binomial(n, in_type_prob), len(pool[t])))
        n_away = min(n - n_home, n_items - len(pool[t]))
        away_pool = np.flatnonzero(item_types != t)
        if ordered:
            # in time order: the in-type items drift along the ring; off-type items fall at random positions
            start = int(rng.choice(len(pool[t]), p=pool_w[t]))
            home = _drift_walk(rng, rings[t], start, n_home)
            away = rng.choice(away_pool, size=n_away, replace=False) if n_away > 0 else np.empty(0, np.int64)
            is_away = np.zeros(n_home + n_away, dtype=bool)
            is_away[rng.choice(n_home + n_away, size=n_away, replace=False)] = True
            picked = np.empty(n_home + n_away, dtype=np.int64)
            picked[~is_away], picked[is_away] = home, away
            days = rng.uniform(0.0, 365.0) + np.cumsum(rng.exponential(1.0, size=len(picked)))
            times_col.append(1.6e9 + 86400.0 * days)
        else:
            home = rng.choice(pool[t], size=n_home, replace=False, p=pool_w[t])
            away = rng.choice(away_pool, size=n_away, replace=False) if n_away > 0 else np.empty(0, np.int64)
            picked = np.concatenate([home, away])
            rng.shuffle(picked)
        users_col.extend([u] * len(picked))
        items_col.extend(int(i) for i in picked)
    user_arr = np.asarray(users_col, dtype=np.int64)
    item_arr = np.asarray(items_col, dtype=np.int64)

    # ratings from the share of the item's features the user's type likes
    affinity = np.array([sum(w in liked_sets[user_types[u]] for w in item_features[i]) / len(item_features[i])
                         for u, i in zip(users_col, items_col)], dtype=np.float64)
    user_bias = rng.normal(0.0, 0.25, size=n_users)
    score = 1.3 + 3.7 * affinity + user_bias[user_arr] + rng.normal(0.0, rating_noise, size=len(user_arr))
    rating = np.clip(np.rint(score), 1, 5).astype(np.float32)

    timestamp = np.concatenate(times_col) if ordered else None
    if ordered:
        split = _temporal_split(user_arr, timestamp)
    else:
        split = hash_split(zip(users_col, items_col), seed=seed)
    has_train = np.zeros(n_users, dtype=bool)
    has_train[user_arr[split == "train"]] = True
    first_row = np.unique(user_arr, return_index=True)[1]
    for u, row in zip(np.unique(user_arr), first_row):
        if not has_train[u]:
            split[row] = "train"

    users = IdMap([f"u{u}" for u in range(n_users)])
    items = IdMap([f"i{i}" for i in range(n_items)])
    brands = rng.choice(len(BRANDS), size=n_items)
    titles = [f"{BRANDS[brands[i]]} {item_features[i][0].title()} {nouns[item_types[i]].title()}"
              for i in range(n_items)]
    item_profiles = [f"Fans of {_join(item_features[i])} would enjoy this {nouns[item_types[i]]}."
                     for i in range(n_items)]
    user_profiles = []
    for u in range(n_users):
        words = [type_words[user_types[u]][j] for j in rng.permutation(per_type)[:3]]
        user_profiles.append(f"The user enjoys items with good {_join(words)}.")

    pick = rng.integers(0, 1 << 30, size=len(user_arr))
    examples = []
    for row, (u, i) in enumerate(zip(users_col, items_col)):
        t = user_types[u]
        feats = item_features[i]
        liked = [w for w in feats if w in liked_sets[t]]
        r = float(rating[row])
        if r >= 4 and liked:
            text = POSITIVE[pick[row] % len(POSITIVE)].format(noun=nouns[item_types[i]], liked=_join(liked),
                                                             first=liked[0])
        elif r >= 3 and liked:
            text = MIXED[pick[row] % len(MIXED)].format(noun=nouns[item_types[i]], liked=_join(liked))
        else:
            # name what the user's type wants and this item does not offer
            others = [w for w in feats if w not in liked_sets[t]] or feats
            missing = [w for w in type_words[t] if w not in feats] or type_words[t]
            wanted = [missing[pick[row] % len(missing)]]
            text = NEGATIVE[pick[row] % len(NEGATIVE)].format(noun=nouns[item_types[i]], other=_join(others),
                                                             wanted=_join(wanted))
        examples.append(Example(
            user=u, item=i, split=str(split[row]), explanation=text, rating=r, features=tuple(feats),
            title=titles[i], user_profile=user_profiles[u], item_profile=item_profiles[i],
            timestamp=None if timestamp is None else float(timestamp[row]),
        ))

    inter = Interactions(user=user_arr, item=item_arr, split=split, rating=rating, timestamp=timestamp)
    meta = {
        "format": "synthetic",
        "item_types": item_types,
        "type_features": type_words,
        "params": {
            "n_users": n_users, "n_items": n_items, "n_types": n_types, "features_per_type": per_type,
            "interactions_per_user": [lo, hi], "median_interactions": median_interactions,
            "in_type_prob": in_type_prob, "features_per_item": k_feat, "rating_noise": rating_noise,
            "seed": seed,
        },
    }
    if ordered:  # only when set, so the default meta stays as it was
        meta["params"]["ordered"] = True
    return Dataset(name=name, interactions=inter, examples=examples, users=users, items=items,
                   user_types=user_types, meta=meta)
