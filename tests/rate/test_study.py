"""A study is a seeded, fixed design: which pairs, every method's text, a random order per pair, the context."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from explainrec.data.schema import DataError
from explainrec.rate import create_study, load_study


def test_the_design_is_seeded_and_fixed(tmp_path, files, data):
    a = create_study(tmp_path / "a", files, n_pairs=6, seed=3, dataset=data)
    b = create_study(tmp_path / "b", files, n_pairs=6, seed=3, dataset=data)
    c = create_study(tmp_path / "c", files, n_pairs=6, seed=4, dataset=data)
    assert a.id == b.id and a.pairs == b.pairs
    assert a.id != c.id
    rows = {name: {(r["user"], r["item"]): r["prediction"] for r in map(json.loads, path.read_text().splitlines())}
            for name, path in files.items()}
    for pair in a.pairs:
        assert sorted(pair["order"]) == sorted(files)
        assert pair["texts"] == {name: rows[name][(pair["user"], pair["item"])] for name in files}
    assert len({tuple(p["order"]) for p in a.pairs}) > 1  # the order changes from pair to pair
    assert Counter(p["order"][0] for p in create_study(tmp_path / "d", files, n_pairs=12, seed=0).pairs) \
        != Counter({"reference": 12})  # the reference is not always shown first


def test_the_context_comes_from_the_data(study, data):
    context = study.pairs[0]["context"]
    pair, _ = data.pair(context["user"], context["item"])
    assert context["title"] == pair.title and context["user_profile"] == pair.user_profile
    assert 0 < len(context["history"]) <= 5 and context["history_total"] >= len(context["history"])


def test_the_same_design_resumes_and_another_is_refused(files, study, data):
    assert create_study(study.folder, files, n_pairs=4, seed=0, dataset=data).id == study.id
    with pytest.raises(DataError, match="already holds study .* fixed before its first rating"):
        create_study(study.folder, files, n_pairs=5, seed=0)


def test_an_edited_study_file_is_refused(study):
    path = study.folder / "study.json"
    obj = json.loads(path.read_text())
    obj["pairs"][0]["order"] = obj["pairs"][0]["order"][::-1]
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError, match="no longer matches its id"):
        load_study(study.folder)


def test_bad_inputs_name_the_file(tmp_path, files):
    with pytest.raises(DataError, match="only 12 pairs"):
        create_study(tmp_path / "s", files, n_pairs=13)
    with pytest.raises(DataError, match="two or more"):
        create_study(tmp_path / "s", {"reference": files["reference"]}, n_pairs=2)
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in files["reversed"].read_text().splitlines()]
    rows[2]["reference"] = "another text"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="different references .* not the same test set"):
        create_study(tmp_path / "s", {"reference": files["reference"], "other": other}, n_pairs=2)
    no_ids = tmp_path / "no_ids.jsonl"
    no_ids.write_text(json.dumps({"prediction": "x", "reference": "y"}) + "\n")
    with pytest.raises(DataError, match="no_ids.jsonl.*no user or item"):
        create_study(tmp_path / "s", {"reference": files["reference"], "n": no_ids}, n_pairs=1)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(files["reference"].read_text() + "{not json\n")
    with pytest.raises(DataError, match="broken.jsonl:13"):
        create_study(tmp_path / "s", {"reference": files["reference"], "b": broken}, n_pairs=1)
    assert not (tmp_path / "s" / "study.json").exists()
