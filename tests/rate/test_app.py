"""The page's API: blind, every rating on disk before the answer, bad input refused naming the field, resumable."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from explainrec.rate.app import create_app, read_tokens
from explainrec.rate.ratings import read_ratings


def client(study, **kw) -> TestClient:
    return TestClient(create_app(study, **kw))


def shown_scores(n, p=4, q=3.5, u=5):
    return [{"P": p, "Q": q, "U": u} for _ in range(n)]


def test_nothing_sent_to_the_page_names_a_method_or_a_file(tmp_path, files, data):
    from explainrec.rate import create_study

    named = {f"method{name.upper()}x": path for name, path in files.items()}  # names no page text contains
    study = create_study(tmp_path / "blind", named, n_pairs=4, seed=0, dataset=data)
    c = client(study)
    texts = [c.get("/").text, c.get("/static/rate.js").text, json.dumps(c.get("/api/study").json())]
    texts += [json.dumps(c.get(f"/api/pair/{k}", headers={"X-Rater": "alice"}).json()) for k in range(4)]
    c.post("/api/rate", json={"pair": 0, "scores": shown_scores(3)}, headers={"X-Rater": "alice"})
    texts.append(json.dumps(c.get("/api/pair/0", headers={"X-Rater": "alice"}).json()))
    for text in texts:
        for secret in [*study.method_names, *(str(p) for p in files.values()), *(p.name for p in files.values())]:
            assert secret not in text, secret


def test_explanations_come_in_the_pairs_order_and_ratings_map_back_to_methods(study):
    c = client(study)
    pair = c.get("/api/pair/2", headers={"X-Rater": "alice"}).json()
    order = study.pairs[2]["order"]
    assert pair["explanations"] == [study.pairs[2]["texts"][m] for m in order]
    assert pair["context"]["title"] and pair["saved"] is None
    given = [{"P": 1 + slot, "Q": 2.5, "U": 5} for slot in range(3)]
    answer = c.post("/api/rate", json={"pair": 2, "scores": given}, headers={"X-Rater": "alice"}).json()
    assert answer == {"rater": "alice", "done": 1, "total": 4, "next": 0}
    (line,) = study.ratings_path.read_text().splitlines()  # on disk by the time the page heard back
    record = json.loads(line)
    assert {m: record["scores"][m]["P"] for m in order} == {order[0]: 1, order[1]: 2, order[2]: 3}
    assert c.get("/api/pair/2", headers={"X-Rater": "alice"}).json()["saved"] == given


def test_progress_and_next_follow_the_study_order_and_survive_a_restart(study):
    c = client(study)
    assert c.post("/api/sign-in", json={"as": "bob"}).json() == {"rater": "bob", "done": 0, "total": 4, "next": 0}
    for k in (0, 1):
        c.post("/api/rate", json={"pair": k, "scores": shown_scores(3)}, headers={"X-Rater": "bob"})
    again = client(study)  # a new server process reads the file
    assert again.post("/api/sign-in", json={"as": "bob"}).json()["next"] == 2
    assert again.post("/api/sign-in", json={"as": "carol"}).json()["next"] == 0
    for k in (2, 3):
        again.post("/api/rate", json={"pair": k, "scores": shown_scores(3)}, headers={"X-Rater": "bob"})
    assert again.post("/api/sign-in", json={"as": "bob"}).json() == {"rater": "bob", "done": 4, "total": 4,
                                                                     "next": None}


@pytest.mark.parametrize("body, status, field", [
    ({"pair": 0, "scores": [{"P": 4.2, "Q": 3, "U": 3}] * 3}, 422, "scores.0.P"),
    ({"pair": 0, "scores": [{"P": 4, "Q": 3, "U": 3}, {"P": 4, "Q": 6, "U": 3}, {"P": 4, "Q": 3, "U": 3}]}, 422,
     "scores.1.Q"),
    ({"pair": 0, "scores": [{"P": 4, "Q": 3}] * 3}, 422, "scores.0"),
    ({"pair": 0, "scores": [{"P": 4, "Q": 3, "U": 3}] * 2}, 422, "scores"),
    ({"pair": 9, "scores": [{"P": 4, "Q": 3, "U": 3}] * 3}, 422, "pair"),
    ({"pair": 0, "scores": [{"P": 4, "Q": 3, "U": 3}] * 3, "method": "reference"}, 422, "method"),
])
def test_bad_ratings_are_refused_naming_the_field_and_nothing_is_written(study, body, status, field):
    answer = client(study).post("/api/rate", json=body, headers={"X-Rater": "alice"})
    assert answer.status_code == status and answer.json()["field"] == field, answer.json()
    assert not study.ratings_path.exists()


def test_sign_in_is_checked(study, tmp_path):
    c = client(study)
    assert c.get("/api/pair/0").status_code == 401
    assert c.post("/api/sign-in", json={"as": "judge:me"}).status_code == 422  # nobody signs in as a judge
    assert c.post("/api/sign-in", content=b"{oops").status_code == 400
    assert c.get("/api/pair/7", headers={"X-Rater": "alice"}).status_code == 404
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# name token\nalice s3cret-alice-token\nbob s3cret-bob-token\n")
    c = client(study, tokens=read_tokens(tokens))
    assert c.get("/api/study").json()["sign_in"] == "token"
    assert c.post("/api/sign-in", json={"as": "alice"}).status_code == 401  # a name is not a token
    assert c.post("/api/sign-in", json={"as": "s3cret-bob-token"}).json()["rater"] == "bob"
    c.post("/api/rate", json={"pair": 1, "scores": shown_scores(3)}, headers={"X-Rater": "s3cret-bob-token"})
    assert [r["rater"] for r in read_ratings(study).records] == ["bob"]
    assert "s3cret" not in study.ratings_path.read_text()


def test_bad_tokens_files_name_the_line(tmp_path):
    from explainrec.data.schema import DataError

    path = tmp_path / "tokens.txt"
    for text, match in (("alice\n", "line 1: expected 'NAME TOKEN'"), ("alice short\n", "line 1: .*shorter than 8"),
                        ("alice abcdefgh\nbob abcdefgh\n", "line 2: .*also alice's"), ("a:b abcdefghij\n", "line 1")):
        path.write_text(text)
        with pytest.raises(DataError, match=match):
            read_tokens(path)


def test_the_page_is_served_with_a_strict_policy(study):
    c = client(study)
    page = c.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script src=\"/static/rate.js\"" in page.text and "<script>" not in page.text
    assert c.get("/static/nope.js").status_code == 404
