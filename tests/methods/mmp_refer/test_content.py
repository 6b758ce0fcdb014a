"""Item content: two text views with their fallbacks, the feature-file reader (all formats, all errors), MiniLM."""
from __future__ import annotations

import numpy as np
import pytest

from explainrec.data.schema import DataError, Dataset, Example, IdMap, Interactions
from explainrec.methods.mmp_refer.config import ContentConfig
from explainrec.methods.mmp_refer.content import (
    encode_texts, file_views, item_content, item_texts, read_feature_file, text_views,
)


def small_dataset() -> Dataset:
    """5 items: 0 has title + profile, 1 only a title, 2 nothing but shares user 0 with items 0 and 1,
    3 nothing and shares users with item 0 twice, 4 nothing and no train user (global mean)."""
    users = np.array([0, 0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 2, 0, 3, 0, 3])
    inter = Interactions(user=users, item=items, split=np.array(["train"] * 7))
    examples = [
        Example(user=0, item=0, title="Blue Lake Cafe", item_profile="A cosy cafe by the lake."),
        Example(user=1, item=1, title="Red Rock Diner"),
        Example(user=2, item=4, split="test"),
    ]
    return Dataset("small", inter, examples, IdMap(["u0", "u1", "u2"]), IdMap([f"i{i}" for i in range(5)]))


def fake_encoder(texts):
    """A deterministic 'encoder': one unit vector per distinct text, from its hash."""
    out = []
    for t in texts:
        v = np.random.default_rng(abs(hash(t)) % (2 ** 32)).standard_normal(8)
        out.append(v / np.linalg.norm(v))
    return np.array(out, dtype=np.float32)


def unit(v):
    return v / np.linalg.norm(v)


def test_text_views_and_their_fallbacks():
    ds = small_dataset()
    titles, profiles = item_texts(ds)
    assert titles[:2] == ["Blue Lake Cafe", "Red Rock Diner"] and profiles[1] is None and titles[2] is None
    c = text_views(ds, encode=fake_encoder)
    t, p = c.views["title"], c.views["profile"]
    enc = {s: fake_encoder([s])[0] for s in ("Blue Lake Cafe", "Red Rock Diner", "A cosy cafe by the lake.")}
    assert np.allclose(t[0], enc["Blue Lake Cafe"]) and np.allclose(p[0], enc["A cosy cafe by the lake."])
    # item 1 has no profile: its profile view is its title vector (same encoder space)
    assert np.allclose(p[1], enc["Red Rock Diner"])
    # item 2: no text; shares user 0 with items 0 and 1 -> unit mean of their vectors
    assert np.allclose(t[2], unit(enc["Blue Lake Cafe"] + enc["Red Rock Diner"]), atol=1e-6)
    # item 3: shares users 1 and 2 with item 0 only (weight 2) -> item 0's vector
    assert np.allclose(t[3], enc["Blue Lake Cafe"], atol=1e-6)
    # item 4: no train user -> the unit mean of every item that has the view
    assert np.allclose(t[4], unit(t[:2].mean(0)), atol=1e-6)
    assert c.present["title"].tolist() == [True, True, False, False, False]
    assert c.present["profile"].tolist() == [True, False, False, False, False]
    assert c.report["title"] == {"neighbours": 2, "mean": 1, "own": 2, "other_view": 0}
    assert c.report["profile"]["other_view"] == 1
    assert "two text views" in c.source and "image" not in c.source
    back = type(c).from_arrays(c.to_arrays(), c.source, c.report)
    assert back.names == c.names and all(np.array_equal(back.views[k], c.views[k]) for k in c.names)
    assert all(np.array_equal(back.present[k], c.present[k]) for k in c.names)
    # fallback "mean": no neighbour averaging
    m = text_views(ds, ContentConfig(fallback="mean"), encode=fake_encoder)
    assert np.allclose(m.views["title"][2], m.views["title"][4])


def test_a_dataset_without_any_text_needs_a_feature_file():
    ds = small_dataset()
    ds.examples = []
    with pytest.raises(DataError, match="no item has a title or a profile"):
        text_views(ds, encode=fake_encoder)


# ---------------------------------------------------------------------------------------------------- files


def generated(n_items: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n_items, 6)).astype(np.float32),
            "audio": rng.standard_normal((n_items, 3)).astype(np.float32)}


def test_feature_files_in_every_format_give_the_same_views(tmp_path):
    ds = small_dataset()
    vecs = generated()
    ids = ["i0", "i1", "i2", "i3", "zz"]  # "zz" is not an item of the dataset; item i4 is missing
    from safetensors.numpy import save_file

    per_key = {f"{m}/{r}": vecs[m][j] for m in vecs for j, r in enumerate(ids)}
    save_file(per_key, str(tmp_path / "f.safetensors"))
    np.savez(tmp_path / "keys.npz", **per_key)
    np.savez(tmp_path / "cols.npz", ids=np.array(ids), **vecs)
    rec = np.zeros(len(ids), dtype=[("id", "U8"), ("image", "f4", (6,)), ("audio", "f4", (3,))])
    rec["id"], rec["image"], rec["audio"] = ids, vecs["image"], vecs["audio"]
    np.save(tmp_path / "rec.npy", rec)
    results = []
    for name in ("f.safetensors", "keys.npz", "cols.npz", "rec.npy"):
        c = file_views(ds, tmp_path / name)
        assert sorted(c.views) == ["audio", "image"], name
        assert np.allclose(c.views["image"][:4], vecs["image"][:4]), name
        assert c.present["image"].tolist() == [True, True, True, True, False]
        assert c.report["image"]["ids_not_in_dataset"] == 1
        assert c.report["image"]["mean"] == 1  # item 4 has no train user: the mean of the others
        assert np.allclose(c.views["image"][4], vecs["image"][:4].mean(0), atol=1e-6)
        results.append(c)
    assert all(np.array_equal(r.views["audio"], results[0].views["audio"]) for r in results)
    single = {r: vecs["image"][j] for j, r in enumerate(ids)}  # keys without a modality: one view "features"
    np.savez(tmp_path / "single.npz", **single)
    c = item_content(ds, ContentConfig(features=str(tmp_path / "single.npz")))
    assert list(c.views) == ["features"] and c.source.startswith("file ")


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, match", [
    ("missing", "feature file not found"),
    ("suffix", "unknown feature file type '.csv'"),
    ("two_d", r"key 'image/i0': expected a non-empty 1-D vector, got shape \(2, 3\)"),
    ("widths", r"modality 'image': vectors differ in width"),
    ("nan", r"key 'image/i1': holds NaN"),
    ("text", r"key 'image/i0': expected numbers"),
    ("pickle", r"key 'image/i0': cannot be read without unpickling"),
    ("cols_shape", r"key 'image': expected shape \(2, d\) to match 'ids', got \(3, 4\)"),
    ("cols_dup", r"key 'ids': raw item id 'i0' appears more than once"),
    ("empty_key", r"key 'image/': expected '<raw item id>' or '<modality>/<raw item id>'"),
    ("npy_plain", r"a .npy feature file must hold a 1-D structured array"),
    ("corrupt", r"not a readable safetensors file"),
])
def test_feature_file_errors_name_the_file_and_the_key(tmp_path, case, match):
    path = tmp_path / "bad.npz"
    if case == "missing":
        path = tmp_path / "nothing.npz"
    elif case == "suffix":
        path = tmp_path / "f.csv"
        path.write_text("x")
    elif case == "two_d":
        write_npz(path, **{"image/i0": np.ones((2, 3))})
    elif case == "widths":
        write_npz(path, **{"image/i0": np.ones(3), "image/i1": np.ones(4)})
    elif case == "nan":
        write_npz(path, **{"image/i0": np.ones(3), "image/i1": np.array([1.0, np.nan, 0.0])})
    elif case == "text":
        write_npz(path, **{"image/i0": np.array(["a", "b"])})
    elif case == "pickle":
        write_npz(path, **{"image/i0": np.array([{"a": 1}], dtype=object)})
    elif case == "cols_shape":
        write_npz(path, ids=np.array(["i0", "i1"]), image=np.ones((3, 4)))
    elif case == "cols_dup":
        write_npz(path, ids=np.array(["i0", "i0"]), image=np.ones((2, 4)))
    elif case == "empty_key":
        write_npz(path, **{"image/": np.ones(3)})
    elif case == "npy_plain":
        path = tmp_path / "bad.npy"
        np.save(path, np.ones((3, 4)))
    elif case == "corrupt":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(DataError, match=match) as err:
        read_feature_file(path)
    assert str(path) in str(err.value)


def test_a_modality_that_covers_no_item_is_an_error(tmp_path):
    path = write_npz(tmp_path / "other.npz", ids=np.array(["x1", "x2"]), image=np.ones((2, 3)))
    with pytest.raises(DataError, match=r"modality 'image': none of its 2 ids is an item") as err:
        file_views(small_dataset(), path)
    assert str(path) in str(err.value)


@pytest.mark.embedded
def test_minilm_text_views_are_unit_vectors_that_group_similar_texts():
    from explainrec.llm.load import load_encoder

    tokenizer, model = load_encoder("minilm", device="cpu")
    texts = ["A cosy cafe with great coffee.", "A small coffee shop with excellent espresso.",
             "A tyre and brake repair garage.", "A cosy cafe with great coffee."]
    vecs = encode_texts(texts, tokenizer, model, batch_size=2)
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vecs[0], vecs[3])
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
