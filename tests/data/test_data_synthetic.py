"""make_synthetic: determinism and the latent type structure other components rely on."""
from __future__ import annotations

import re

import numpy as np
import pytest

from explainrec.data import make_synthetic


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(seed=0)


def test_deterministic_per_seed(ds):
    again = make_synthetic(seed=0)
    for name in ("user", "item", "split", "rating"):
        assert np.array_equal(getattr(ds.interactions, name), getattr(again.interactions, name))
    assert ds.examples == again.examples and np.array_equal(ds.user_types, again.user_types)
    other = make_synthetic(seed=1)
    assert not np.array_equal(other.user_types, ds.user_types)


def test_types_and_feature_groups(ds):
    k = 4
    assert ds.n_users == 300 and ds.n_items == 200
    assert ds.user_types.dtype == np.int64 and ds.user_types.shape == (300,)
    assert np.bincount(ds.user_types).tolist() == [75] * k
    item_types = ds.meta["item_types"]
    assert item_types.shape == (200,) and set(item_types.tolist()) == set(range(k))
    groups = [set(g) for g in ds.meta["type_features"]]
    assert len(groups) == k and all(len(g) >= 2 for g in groups)
    assert sum(len(g) for g in groups) == len(set().union(*groups))  # disjoint
    assert all(w.isalpha() for g in groups for w in g)


def test_both_sides_carry_the_type(ds):
    inter, types, item_types = ds.interactions, ds.user_types, ds.meta["item_types"]
    same = types[inter.user] == item_types[inter.item]
    assert 0.78 < same.mean() < 0.92
    # user side: the home type of most of a user's items is the user's type
    hist = np.zeros((ds.n_users, 4))
    np.add.at(hist, (inter.user, item_types[inter.item]), 1)
    assert (hist.argmax(1) == types).mean() > 0.95
    # item side: most users of an item share its home type
    hist = np.zeros((ds.n_items, 4))
    np.add.at(hist, (inter.item, types[inter.user]), 1)
    seen = hist.sum(1) > 0
    assert (hist.argmax(1)[seen] == item_types[seen]).mean() > 0.95
    # ratings follow the affinity
    assert inter.rating[same].mean() > inter.rating[~same].mean() + 1.5


def test_ratings_and_long_tail(ds):
    r = ds.interactions.rating
    assert r.dtype == np.float32 and set(np.unique(r).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(np.unique(r)) == 5
    per_user = np.bincount(ds.interactions.user, minlength=ds.n_users)
    assert per_user.min() >= 3 and per_user.max() <= 40
    assert per_user.mean() > np.median(per_user)  # right-skewed
    assert per_user.max() >= 3 * np.median(per_user)
    assert (per_user <= np.median(per_user)).sum() >= 150
    assert 10 < per_user.mean() < 20


def test_splits(ds):
    split = ds.interactions.split
    assert abs(float((split == "train").mean()) - 0.8) < 0.04
    assert abs(float((split == "test").mean()) - 0.1) < 0.03
    assert set(ds.interactions.user[split == "train"].tolist()) == set(range(ds.n_users))
    assert [e.split for e in ds.examples] == split.tolist()


def test_examples_text(ds):
    groups = [set(g) for g in ds.meta["type_features"]]
    assert len(ds.examples) == len(ds.interactions)
    for e in ds.examples:
        words = set(re.findall(r"[a-z]+", e.explanation.lower()))
        liked = groups[ds.user_types[e.user]]
        assert words & liked, e.explanation
        assert set(re.findall(r"[a-z]+", e.user_profile)) & liked
        assert e.title and e.item_profile and e.features
        assert set(e.features) <= set().union(*groups)
        if e.rating >= 4:
            # a good rating is explained by the item's features that the user's type likes
            assert words & liked & set(e.features), e.explanation
    # several templates, and low ratings read differently from high ones
    skeleton = lambda text: re.sub(r"[a-z]+(, [a-z]+)*( and [a-z]+)?", "_", text)  # noqa: E731
    assert len({e.explanation.split()[0] + e.explanation.split()[-1] for e in ds.examples}) >= 6
    low = {e.explanation for e in ds.examples if e.rating <= 2}
    high = {e.explanation for e in ds.examples if e.rating >= 4}
    assert low and high and not low & high
    assert len({skeleton(t) for t in high}) >= 3


def test_small_and_invalid_configs():
    tiny = make_synthetic(n_users=8, n_items=8, n_types=4, seed=2)
    assert tiny.n_users == 8 and len(set(tiny.user_types.tolist())) == 4
    themed = make_synthetic(n_users=60, n_items=60, n_types=12, n_features=72, seed=0)
    assert len(themed.meta["type_features"]) == 12
    # more types than themed groups: consecutive runs of the word list, still disjoint
    many = make_synthetic(n_users=64, n_items=64, n_types=16, n_features=96, seed=0)
    words = [w for g in many.meta["type_features"] for w in g]
    assert len(words) == len(set(words)) == 96
    with pytest.raises(ValueError):
        make_synthetic(n_types=12, n_features=120)
    with pytest.raises(ValueError):
        make_synthetic(n_types=4, n_features=4)
    with pytest.raises(ValueError):
        make_synthetic(n_users=3, n_types=4)
    with pytest.raises(ValueError):
        make_synthetic(interactions_per_user=(5, 2))


# ---------------------------------------------------------------------------------------------------- ordered=True


def _digest(ds) -> str:
    """SHA-256 over everything make_synthetic returns (arrays as bytes, examples and meta as repr)."""
    import hashlib

    h = hashlib.sha256()
    for name in ("user", "item", "split", "rating", "timestamp"):
        a = getattr(ds.interactions, name)
        h.update(repr(None if a is None else (a.dtype.str, a.tobytes())).encode())
    h.update(repr(ds.examples).encode())
    h.update(ds.user_types.tobytes())
    h.update(repr({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ds.meta.items()}).encode())
    h.update(repr((ds.users.raw, ds.items.raw, ds.name)).encode())
    return h.hexdigest()


def test_default_output_is_pinned():
    # the value of the generator before the ordered option existed: the option must not move the default by a byte
    assert _digest(make_synthetic(seed=0)) == "7eba7c6b2a0f709a4093848e596e929b6696f8c218af92cdca2b6d3ca6766621"
    assert _digest(make_synthetic(seed=0, ordered=False)) == _digest(make_synthetic(seed=0))
    ds = make_synthetic(seed=0)
    assert ds.interactions.timestamp is None and all(e.timestamp is None for e in ds.examples)
    assert "ordered" not in ds.meta["params"]


@pytest.fixture(scope="module")
def ordered():
    return make_synthetic(seed=0, ordered=True)


def test_ordered_timestamps_and_temporal_split(ordered):
    inter = ordered.interactions
    t = inter.timestamp
    assert t is not None and t.dtype == np.float64 and np.isfinite(t).all()
    assert [e.timestamp for e in ordered.examples] == t.tolist()
    assert ordered.meta["params"]["ordered"] is True
    per_user = np.bincount(inter.user, minlength=ordered.n_users)
    for u in range(ordered.n_users):
        rows = np.flatnonzero(inter.user == u)
        times = t[rows]
        assert (np.diff(times) > 0).all()  # increasing in generation order
        by_time = inter.split[rows[np.argsort(times)]].tolist()
        # leave-one-out by time: the last is test, the one before valid, the rest train
        assert by_time[-1] == "test" and by_time[-2] == "valid" and set(by_time[:-2]) == {"train"}
    assert per_user.min() >= 3
    # the user/item type structure is kept
    same = ordered.user_types[inter.user] == ordered.meta["item_types"][inter.item]
    assert 0.78 < same.mean() < 0.92


def _successor_share(ds, times) -> float:
    """Share of a user's consecutive pairs (a, b) where b is a's most frequent successor over all users."""
    from collections import Counter, defaultdict

    inter = ds.interactions
    order = np.lexsort((times, inter.user))
    u, i = inter.user[order], inter.item[order]
    same = u[1:] == u[:-1]
    a, b = i[:-1][same], i[1:][same]
    succ = defaultdict(Counter)
    for x, y in zip(a, b):
        succ[x][y] += 1
    best = {x: c.most_common(1)[0][0] for x, c in succ.items()}
    return float(np.mean([best[x] == y for x, y in zip(a, b)]))


def test_ordered_histories_are_sequential(ordered):
    # the previous item predicts the next one (a Markov drift): far above the unordered generator's rate
    assert _successor_share(ordered, ordered.interactions.timestamp) > 0.4
    plain = make_synthetic(seed=0)
    assert _successor_share(plain, np.arange(len(plain.interactions))) < 0.2


def test_ordered_option_through_load_dataset():
    from explainrec.data import load_dataset

    ds = load_dataset("synthetic:ordered=1,users=50,items=40,seed=3")
    ref = make_synthetic(n_users=50, n_items=40, seed=3, ordered=True)
    assert _digest(ds) == _digest(ref) == _digest(make_synthetic(n_users=50, n_items=40, seed=3, ordered=True))
    assert ds.interactions.timestamp is not None
    assert _digest(ref) != _digest(make_synthetic(n_users=50, n_items=40, seed=4, ordered=True))


def test_a_size_that_cannot_fit_in_memory_is_refused_up_front_with_the_estimate(monkeypatch):
    """A billion users used to be killed for memory after minutes with no message: it is refused before any
    generation, naming the estimate and what is available."""
    import time

    import explainrec.io
    from explainrec.data import load_dataset
    from explainrec.data.schema import DataError
    from explainrec.data.synthetic import BYTES_PER_INTERACTION, memory_estimate

    interactions, need = memory_estimate(1000, 200)
    assert 1000 * 10 < interactions < 1000 * 20 and need >= interactions * BYTES_PER_INTERACTION
    monkeypatch.setattr(explainrec.io, "memory_available", lambda: 2 * 10**9)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"users=1000000000, items=200 make about [\d,]+ interactions, about "
                                        r"[\d,.]+ GB in memory, but 2.0 GB are available"):
        load_dataset("synthetic:users=1000000000")
    assert time.perf_counter() - start < 5
    assert load_dataset("synthetic:users=30,items=25,types=2").n_users == 30  # a size that fits is made


def test_a_data_file_larger_than_the_memory_available_is_refused_before_reading(tmp_path, monkeypatch):
    import explainrec.io
    from explainrec.data import load_dataset
    from explainrec.data.schema import DataError

    data = tmp_path / "big.jsonl"
    data.write_text('{"user": "u1", "item": "i1", "explanation": "Nice."}\n' * 50)
    monkeypatch.setattr(explainrec.io, "memory_available", lambda: 100)
    with pytest.raises(DataError, match=r"big.jsonl: 0.0 GB of data, more than the 0.0 GB of memory available"):
        load_dataset(data)
