"""Every loader of load_dataset, and the errors on bad input (file, line and field named)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from explainrec.data import DataError, load_dataset, make_synthetic


def graph_split(ds, user_raw, item_raw) -> list[str]:
    """Splits of every graph edge between two raw ids."""
    u, i = ds.users.encode(user_raw), ds.items.encode(item_raw)
    inter = ds.interactions
    return inter.split[(inter.user == u) & (inter.item == i)].tolist()


def train_pairs(ds) -> set[tuple[int, int]]:
    tr = ds.interactions.of_split("train")
    return set(zip(tr.user.tolist(), tr.item.tolist()))


# ---------------------------------------------------------------- XRec folder


def test_xrec_folder_with_train_edges(tmp_path, writers):
    row = writers.xrec_row
    rows = [row(1, 10, "train"), row(2, 20, "valid"), row(3, 30, "test"), row(9, 90, "test")]
    edges = [(1, 10, "valid"), (2, 20, "train"), (3, 30, "test"), (4, 40, "train"), (4, 40, "test"),
             (5, 50, "valid"), (6, 60, "test"), (1, 20, "train")]
    ds = load_dataset(writers.write_xrec(tmp_path / "mini", rows, edges))

    assert ds.name == "mini" and ds.implicit and ds.interactions.rating is None
    # one id map over both files; user 9 / item 90 only appear in explanations.jsonl
    assert set(ds.users.raw) == {"1", "2", "3", "4", "5", "6", "9"}
    assert set(ds.items.raw) == {"10", "20", "30", "40", "50", "60", "90"}
    # explained pairs take their own split, whatever the file said
    assert graph_split(ds, 1, 10) == ["train"]
    assert graph_split(ds, 2, 20) == ["valid"]
    # other edges keep the file split; a duplicated edge is kept once (the first)
    assert graph_split(ds, 4, 40) == ["train"]
    assert graph_split(ds, 5, 50) == ["valid"] and graph_split(ds, 6, 60) == ["test"]
    # an explained pair missing from the graph becomes an edge with its split
    assert graph_split(ds, 9, 90) == ["test"]
    assert len(ds.interactions) == 8
    assert ds.meta["file_has_train_edges"] and ds.meta["explained_edges_added"] == 1
    assert ds.meta["explained_edges_moved"] == 2

    ex = ds.examples[1]
    assert (ds.users.decode(ex.user), ds.items.decode(ex.item), ex.split) == ("2", "20", "valid")
    assert ex.title == "Place 20" and ex.user_profile == "User 2 likes food."
    assert ex.item_profile == "Item 20 serves food."
    assert ex.explanation == "Great tacos and friendly staff." and ex.rating is None
    held_out = {(e.user, e.item) for e in ds.examples if e.split != "train"}
    assert not held_out & train_pairs(ds)


def test_xrec_folder_without_train_edges_is_resplit(tmp_path, writers):
    """The amazon case: only valid/test edges were published, so the graph is re-split 8:1:1."""
    rows = [writers.xrec_row(0, 0, "train"), writers.xrec_row(1, 1, "valid"), writers.xrec_row(2, 2, "test")]
    edges = [(u, 1000 + k, "valid" if k % 2 else "test") for u in range(100) for k in range(10)]
    edges += [(1, 1, "test"), (2, 2, "valid")]
    folder = writers.write_xrec(tmp_path / "amz", rows, edges)
    ds = load_dataset(folder)

    counts = {s: int((ds.interactions.split == s).sum()) for s in ("train", "valid", "test")}
    assert sum(counts.values()) == 1003
    assert 0.75 < counts["train"] / 1003 < 0.85 and counts["valid"] > 60 and counts["test"] > 60
    assert not ds.meta["file_has_train_edges"] and ds.meta["resplit_edges"] == 1000
    assert graph_split(ds, 0, 0) == ["train"] and graph_split(ds, 1, 1) == ["valid"]
    assert graph_split(ds, 2, 2) == ["test"]
    # deterministic, and the seed matters
    again = load_dataset(folder)
    assert np.array_equal(again.interactions.split, ds.interactions.split)
    other = load_dataset(folder, seed=1)
    assert not np.array_equal(other.interactions.split, ds.interactions.split)


def test_xrec_folder_without_split_column(tmp_path, writers):
    rows = [writers.xrec_row("a", "x", "valid")]
    edges = [("a", "x"), ("b", "y"), ("c", "z")]
    ds = load_dataset(writers.write_xrec(tmp_path / "nosplit", rows, edges, header="user,item"))
    assert graph_split(ds, "a", "x") == ["valid"]
    assert set(ds.interactions.split.tolist()) <= {"train", "valid", "test"}


# ---------------------------------------------------------------- PETER / PEPLER


def test_peter_folder(peter_folder):
    ds = load_dataset(peter_folder, trust_pickle=True)
    assert len(ds.interactions) == 20 and len(ds.examples) == 20
    assert not ds.implicit and ds.interactions.rating.dtype == np.float32
    assert ds.interactions.split.tolist() == ["train"] * 16 + ["valid"] * 2 + ["test"] * 2
    ex = ds.examples[3]
    assert ex.explanation == "the feat0 is good number 3" and ex.features == ("feat0",) and ex.rating == 4.0
    assert ds.users.decode(ex.user) == "U3" and ds.items.decode(ex.item) == "I3"
    assert ds.meta["format"] == "peter"


def test_peter_index_dir_picks_the_split_folder(peter_folder, writers):
    reviews = writers.peter_reviews(20)
    writers.write_peter(peter_folder, reviews, {"train": [0, 1], "validation": [2], "test": [3]}, index_dir="2")
    ds = load_dataset(peter_folder, trust_pickle=True, index_dir="2")
    assert ds.interactions.split.tolist() == ["train", "train", "valid", "test"]


def test_peter_refuses_to_unpickle_without_opt_in(peter_folder):
    with pytest.raises(DataError) as err:
        load_dataset(peter_folder)
    msg = str(err.value)
    assert "reviews.pickle" in msg and "--trust-pickle" in msg and "trust_pickle=True" in msg


@pytest.mark.parametrize(
    ("train", "needle"),
    [
        ([0, 1, "x2", 3], "position 3: 'x2' is not an integer"),
        ([0, 1, 2, 99], "position 4: row 99 is out of range"),
        ([0, 1, 16], "row 16 is already listed"),
    ],
)
def test_peter_bad_index_files(tmp_path, train, needle, writers):
    splits = {"train": train, "validation": [16, 17], "test": [18]}
    folder = writers.write_peter(tmp_path / "p", writers.peter_reviews(20), splits)
    # validation.index is read after train.index: the duplicate is reported there
    with pytest.raises(DataError) as err:
        load_dataset(folder, trust_pickle=True)
    assert needle in str(err.value) and ".index:1" in str(err.value)


def test_peter_missing_index_file(tmp_path, writers):
    folder = writers.write_peter(tmp_path / "p", writers.peter_reviews(4), {"train": [0, 1], "test": [2]})
    with pytest.raises(DataError, match=r"validation\.index: missing"):
        load_dataset(folder, trust_pickle=True)


def test_peter_review_without_template(tmp_path, writers):
    reviews = writers.peter_reviews(4)
    del reviews[2]["template"]
    folder = writers.write_peter(tmp_path / "p", reviews, {"train": [0, 1, 2], "validation": [], "test": [3]})
    with pytest.raises(DataError) as err:
        load_dataset(folder, trust_pickle=True)
    assert "reviews.pickle:2 field 'template'" in str(err.value)


# ---------------------------------------------------------------- plain CSV / JSON lines


def test_csv_table(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text(
        "user,item,rating,timestamp,explanation,features,split,title\n"
        "u1,i1,5,100,Great battery.,battery;screen,train,Phone\n"
        "u1,i2,2,200,,,test,Case\n"
        "u2,i1,4,2024-01-02,\"Nice screen, bright.\",screen|size,valid,Phone\n"
    )
    ds = load_dataset(path)
    assert ds.name == "reviews" and not ds.implicit
    assert ds.interactions.rating.tolist() == [5.0, 2.0, 4.0]
    assert ds.interactions.split.tolist() == ["train", "test", "valid"]
    assert ds.interactions.timestamp[0] == 100.0 and ds.interactions.timestamp[2] > 1.7e9
    assert len(ds.examples) == 2  # the row with no explanation is only an interaction
    a, b = ds.examples
    assert a.features == ("battery", "screen") and a.title == "Phone" and a.rating == 5.0
    assert b.explanation == "Nice screen, bright." and b.features == ("screen", "size") and b.split == "valid"


def test_jsonl_table_without_split_is_hashed(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"user": u, "item": i, "explanation": f"e{u}{i}" if i % 2 else "", "features": ["a", "b"]}
            for u in range(30) for i in range(10)]
    rows.append({"user": 0, "item": 1, "explanation": "duplicate pair"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(path)
    assert ds.implicit and ds.interactions.timestamp is None
    assert len(ds.interactions) == 300  # the duplicated pair is one edge
    assert len(ds.examples) == 151 and ds.examples[0].features == ("a", "b")
    share = float((ds.interactions.split == "train").mean())
    assert 0.7 < share < 0.9
    # an example and its graph edge agree on the split: no held-out explained pair in the train graph
    split_of = {(u, i): s for u, i, s in zip(ds.interactions.user.tolist(), ds.interactions.item.tolist(),
                                              ds.interactions.split.tolist())}
    assert all(split_of[(e.user, e.item)] == e.split for e in ds.examples)
    assert np.array_equal(load_dataset(path).interactions.split, ds.interactions.split)


# ---------------------------------------------------------------- synthetic source


def test_synthetic_source_string():
    ds = load_dataset("synthetic:users=40,items=24,types=2,seed=3")
    ref = make_synthetic(n_users=40, n_items=24, n_types=2, seed=3)
    assert ds.n_users == 40 and ds.n_items == 24 and len(set(ds.user_types.tolist())) == 2
    assert np.array_equal(ds.interactions.item, ref.interactions.item)
    kw = load_dataset("synthetic", n_users=40, n_items=24, n_types=2, seed=3)
    assert np.array_equal(kw.interactions.item, ref.interactions.item)
    assert np.array_equal(load_dataset("synthetic", seed=5).user_types, make_synthetic(seed=5).user_types)


# ---------------------------------------------------------------- errors


def _error(path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(path, **kw)
    return str(err.value)


def test_csv_missing_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,rating\nu1,5\n")
    msg = _error(path)
    assert f"{path}:1 field 'item'" in msg and "missing column" in msg


def test_csv_non_numeric_rating(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,item,rating\nu1,i1,5\nu1,i2,five\n")
    msg = _error(path)
    assert f"{path}:3 field 'rating'" in msg and "'five'" in msg


def test_csv_rating_missing_on_one_row(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,item,rating\nu1,i1,5\nu1,i2,\n")
    assert f"{path}:3 field 'rating'" in _error(path)


def test_csv_unknown_split(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,item,split\nu1,i1,train\nu2,i1,holdout\n")
    msg = _error(path)
    assert f"{path}:3 field 'split'" in msg and "holdout" in msg


def test_csv_conflicting_split_of_a_pair(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,item,split,explanation\nu1,i1,train,x\nu1,i1,test,y\n")
    msg = _error(path)
    assert f"{path}:3 field 'split'" in msg and "line 2" in msg


def test_csv_short_row(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,item,split\nu1,i1,train\nu2\n")
    assert f"{path}:3" in _error(path)


def test_jsonl_broken_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"user": 1, "item": 2}\n{"user": 1, "item": 3}\n{"user": 1, "item":\n')
    msg = _error(path)
    assert f"{path}:3" in msg and "broken JSON" in msg


def test_jsonl_missing_field(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"user": 1, "item": 2}\n{"item": 3}\n')
    assert f"{path}:2 field 'user'" in _error(path)


def test_xrec_empty_explanation(tmp_path, writers):
    rows = [writers.xrec_row(1, 1), writers.xrec_row(2, 2, explanation="  ")]
    folder = writers.write_xrec(tmp_path / "x", rows, [(1, 1, "train")])
    msg = _error(folder)
    assert f"{folder / 'explanations.jsonl'}:2 field 'explanation'" in msg and "empty" in msg


def test_xrec_missing_field(tmp_path, writers):
    row = writers.xrec_row(1, 1)
    del row["user_profile"]
    folder = writers.write_xrec(tmp_path / "x", [writers.xrec_row(2, 2), row], [(1, 1, "train")])
    assert f"{folder / 'explanations.jsonl'}:2 field 'user_profile'" in _error(folder)


def test_xrec_unknown_split_in_graph(tmp_path, writers):
    edges = [(1, 1, "train"), (2, 2, "train"), (3, 3, "dev")]
    folder = writers.write_xrec(tmp_path / "x", [writers.xrec_row(1, 1)], edges)
    msg = _error(folder)
    assert f"{folder / 'interactions.csv'}:4 field 'split'" in msg and "dev" in msg


def test_xrec_conflicting_pair_split(tmp_path, writers):
    rows = [writers.xrec_row(1, 1, "train"), writers.xrec_row(1, 1, "test")]
    folder = writers.write_xrec(tmp_path / "x", rows, [(1, 1, "train")])
    assert f"{folder / 'explanations.jsonl'}:2 field 'split'" in _error(folder)


@pytest.mark.parametrize("name", ["explanations.jsonl", "interactions.csv"])
def test_git_lfs_pointer(tmp_path, name, writers):
    folder = writers.write_xrec(tmp_path / "x", [writers.xrec_row(1, 1)], [(1, 1, "train")])
    (folder / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    msg = _error(folder)
    assert name in msg and "Git LFS pointer" in msg


def test_git_lfs_pointer_pickle(peter_folder):
    (peter_folder / "reviews.pickle").write_text("version https://git-lfs.github.com/spec/v1\n")
    assert "Git LFS pointer" in _error(peter_folder, trust_pickle=True)


def test_unpicklable_file(peter_folder):
    (peter_folder / "reviews.pickle").write_bytes(b"not a pickle")
    assert "cannot unpickle" in _error(peter_folder, trust_pickle=True)


def test_pickle_of_wrong_type(peter_folder):
    (peter_folder / "reviews.pickle").write_bytes(pickle.dumps({"a": 1}))
    assert "expected a list" in _error(peter_folder, trust_pickle=True)


def test_unrecognised_sources(tmp_path):
    assert "no such file or folder" in _error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "unrecognised dataset folder" in _error(tmp_path / "empty")
    (tmp_path / "x.parquet").write_text("")
    assert "unsupported file type" in _error(tmp_path / "x.parquet")
    assert "synthetic option" in _error("synthetic:colour=red")
    with pytest.raises(DataError, match="only apply to the synthetic"):
        load_dataset(tmp_path / "empty", n_users=3)


def test_empty_csv(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("")
    assert "empty file" in _error(path)
    path.write_text("user,item\n")
    assert "no rows" in _error(path)


def test_not_utf8_and_bom(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"user,item\nu1,\xff\xfe\n")
    assert "not UTF-8" in _error(path) and str(path) in _error(path)
    path.write_bytes("\ufeffuser,item\nu1,i1\n".encode("utf-8"))  # a BOM is not part of the first column name
    assert load_dataset(path).users.raw == ["u1"]


def test_bad_synthetic_config_is_a_data_error():
    assert "synthetic" in _error("synthetic:users=2,types=4")
