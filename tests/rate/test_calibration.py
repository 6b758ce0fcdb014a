"""The judge's calibration set: references, the same texts shuffled across pairs, the texts' words scrambled."""
from __future__ import annotations

import random

import pytest

from explainrec.rate.calibration import calibration_rows, scramble, write_calibration_set

RECORDS = [{"user": f"u{i % 4}", "item": f"i{i}", "explanation": f"text number {i} about item {i} for you",
            "title": f"item {i}"} for i in range(10)]


def test_shuffled_texts_belong_to_another_user_and_item():
    rows = calibration_rows(RECORDS, seed=0)
    by_text = {r["explanation"]: r for r in RECORDS}
    for own, moved in zip(rows["reference"], rows["shuffled"]):
        source = by_text[moved["prediction"]]
        assert moved["prediction"] != own["prediction"]
        assert source["user"] != own["user"] and source["item"] != own["item"]
    assert sorted(r["prediction"] for r in rows["shuffled"]) == sorted(r["explanation"] for r in RECORDS)


def test_scrambled_texts_keep_their_words_in_another_order():
    rows = calibration_rows(RECORDS, seed=0)
    for own, broken in zip(rows["reference"], rows["scrambled"]):
        assert broken["prediction"] != own["prediction"]
        assert sorted(broken["prediction"].split()) == sorted(own["prediction"].split())
    assert scramble("same same", random.Random(0)) == "same same"


def test_every_condition_keeps_the_pair_reference_and_context(tmp_path):
    paths = write_calibration_set(RECORDS, tmp_path, seed=1)
    from explainrec.metrics import load_predictions

    files = {c: load_predictions(p) for c, p in paths.items()}
    for c in ("shuffled", "scrambled"):
        assert [(r["user"], r["item"], r["reference"], r["title"]) for r in files[c]] == \
               [(r["user"], r["item"], r["reference"], r["title"]) for r in files["reference"]]
    assert calibration_rows(RECORDS, seed=1) == calibration_rows(RECORDS, seed=1)


def test_too_few_pairs_to_shuffle_is_refused():
    with pytest.raises(ValueError, match="at least 3"):
        calibration_rows(RECORDS[:2])
