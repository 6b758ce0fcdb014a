"""The ratings file: appended line by line, checked against the study, bad lines reported by number and skipped."""
from __future__ import annotations

import json

import pytest

from explainrec.rate.ratings import HUMAN, JUDGE, append_rating, check_record, rating_record, read_ratings


def scores(study, value=4.0):
    return {m: {"P": value, "Q": value, "U": value} for m in study.method_names}


def test_appended_ratings_read_back_and_the_last_of_a_pair_counts(study):
    append_rating(study.ratings_path, rating_record(study, "alice", HUMAN, 0, scores(study, 2)))
    append_rating(study.ratings_path, rating_record(study, "bob", HUMAN, 0, scores(study, 3)))
    append_rating(study.ratings_path, rating_record(study, "alice", HUMAN, 0, scores(study, 4.5)))
    ratings = read_ratings(study)
    assert ratings.problems == [] and len(ratings.records) == 3
    latest = ratings.latest()
    assert latest[("alice", 0)]["scores"]["reference"]["P"] == 4.5 and latest[("bob", 0)]["scores"]["constant"]["U"] == 3


def test_a_corrupt_line_is_reported_with_its_number_and_the_rest_kept(study):
    path = study.ratings_path
    append_rating(path, rating_record(study, "alice", HUMAN, 0, scores(study)))
    with open(path, "a") as f:
        f.write("{this is not json\n")
        bad = rating_record(study, "alice", HUMAN, 1, scores(study))
        bad["scores"]["reversed"]["Q"] = 4.2  # not a half point (check_record ran before the edit)
        f.write(json.dumps(bad) + "\n")
        f.write(json.dumps({**rating_record(study, "bob", HUMAN, 1, scores(study)), "study": "another"}) + "\n")
    append_rating(path, rating_record(study, "alice", HUMAN, 2, scores(study)))
    ratings = read_ratings(study)
    assert [(r["rater"], r["pair"]) for r in ratings.records] == [("alice", 0), ("alice", 2)]
    assert len(ratings.problems) == 3
    assert "line 2: broken JSON" in ratings.problems[0]
    assert "line 3: scores.reversed.Q: must be a whole or half point" in ratings.problems[1]
    assert "line 4: study: 'another' is not this study" in ratings.problems[2]


def test_a_line_torn_by_a_crash_never_swallows_the_next_rating(study):
    """A kill mid-write leaves a line without its newline; the next append ends it first."""
    path = study.ratings_path
    append_rating(path, rating_record(study, "alice", HUMAN, 0, scores(study)))
    line = json.dumps(rating_record(study, "alice", HUMAN, 1, scores(study)))
    with open(path, "a") as f:
        f.write(line[: len(line) // 2])  # the rating in flight, cut
    append_rating(path, rating_record(study, "alice", HUMAN, 2, scores(study)))
    ratings = read_ratings(study)
    assert [r["pair"] for r in ratings.records] == [0, 2]
    assert len(ratings.problems) == 1 and "line 2: broken JSON" in ratings.problems[0]


def test_records_are_checked_against_the_study(study):
    with pytest.raises(ValueError, match="scores: must give every method"):
        rating_record(study, "alice", HUMAN, 0, {"reference": {"P": 1, "Q": 1, "U": 1}})
    with pytest.raises(ValueError, match="pair: must be an index from 0 to 3"):
        check_record({**rating_record(study, "alice", HUMAN, 0, scores(study)), "pair": 4}, study)
    with pytest.raises(ValueError, match="rater"):
        rating_record(study, "judge:x", HUMAN, 0, scores(study))  # a person cannot pose as a judge
    with pytest.raises(ValueError, match="rater"):
        rating_record(study, "smollm2", JUDGE, 0, scores(study))
    judged = rating_record(study, "judge:tiny", JUDGE, 0, scores(study, 3.1416))
    assert judged["scores"]["reference"]["P"] == 3.1416  # a judge's expected value needs no half point
