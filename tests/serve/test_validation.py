"""Bad input never crashes the server: each refusal is a 4xx naming the field; nothing out of range is clamped;
the field limits are the server's settings (flags); bodies over the limit are 413 (with or without
Content-Length), bodies that stall are 408; a batch larger than the queue is 422, not an endless 429; the API key
guards /v1 only, as X-API-Key or Authorization: Bearer; CORS only for the origins given."""
from __future__ import annotations

import pytest
from serve_helpers import client_for

OK = {"user": "u1", "item": "i2", "max_new_tokens": 4}
BODY_SHORT = {"max_new_tokens": 2}


@pytest.fixture(scope="module")
def client(zero_shot, data):
    with client_for(zero_shot, data, max_new_tokens=32, max_pairs=3) as c:
        yield c


BAD = [  # (change to a good body, field named in the 422)
    ({"max_new_tokens": 33}, "max_new_tokens"),  # over this server's limit: refused, not clamped
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": "8"}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"max_new_tokens": 4.5}, "max_new_tokens"),
    ({"do_sample": True, "temperature": 0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"num_beams": 0}, "num_beams"),
    ({"num_beams": 5}, "num_beams"),  # over the server's beam limit
    ({"repetition_penalty": 11.0}, "repetition_penalty"),
    ({"no_repeat_ngram_size": 33}, "no_repeat_ngram_size"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**40}, "seed"),
    ({"do_sample": "yes"}, "do_sample"),
    ({"user": True}, "user"),  # ids may be numbers, never booleans or floats
    ({"item": 1.5}, "item"),
    ({"user": ""}, "user"),
    ({"item": "x" * 201}, "item"),
    ({"item": None}, "item"),
    ({"title": "t" * 501}, "title"),
    ({"user_profile": ["a"]}, "user_profile"),
    ({"features": "screen, lens"}, "features"),
    ({"features": ["f" * 65]}, "features.0"),
    ({"features": ["f"] * 33}, "features"),
    ({"colour": "red"}, "colour"),  # unknown keys are refused, not ignored
]


@pytest.mark.parametrize("change,field", BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_out_of_range_or_wrong_type_is_422_naming_the_field(client, change, field):
    r = client.post("/v1/explain", json={**OK, **change})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_type"] == "validation" and body["field"] == field and body["error"]


def test_missing_fields_are_named(client):
    r = client.post("/v1/explain", json={"user": "u1"})
    assert r.status_code == 422 and r.json()["field"] == "item"


@pytest.mark.parametrize("raw,field", [(b"NaN", None), (b"Infinity", None)])
def test_non_finite_numbers_are_refused(client, raw, field):
    body = b'{"user": "u1", "item": "i2", "do_sample": true, "temperature": ' + raw + b"}"
    r = client.post("/v1/explain", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "temperature"


@pytest.mark.parametrize("raw", [b'{"user": "u1",', b"not json", b"\xff\xfe\x00", b""])
def test_bad_json_is_4xx(client, raw):
    r = client.post("/v1/explain", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error_type"] in ("bad_json", "validation")


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_422(client, body):
    r = client.post("/v1/explain", json=body)
    assert r.status_code == 422 and r.json()["field"] == "body"


def test_batch_limits_and_nested_fields(client):
    too_many = {"pairs": [{"user": "u1", "item": "i1"}] * 4}
    r = client.post("/v1/explain/batch", json=too_many)
    assert r.status_code == 422 and r.json()["field"] == "pairs" and "at most 3" in r.json()["error"]
    r = client.post("/v1/explain/batch", json={"pairs": [{"user": "u1", "item": "i1"}, {"user": [1], "item": "i1"}]})
    assert r.status_code == 422 and r.json()["field"] == "pairs.1.user"
    r = client.post("/v1/explain/batch", json={"pairs": [{"user": "u1", "item": "i1", "title": "t" * 501}]})
    assert r.status_code == 422 and r.json()["field"] == "pairs.0.title"
    r = client.post("/v1/explain/batch", json={"pairs": []})
    assert r.status_code == 422 and r.json()["field"] == "pairs"
    r = client.post("/v1/explain/batch", json={"pairs": [OK]})  # generation settings belong at the top
    assert r.status_code == 422 and r.json()["field"] == "pairs.0.max_new_tokens"


def test_field_limits_are_the_servers_settings(zero_shot):
    limits = dict(max_id_chars=5, max_title_chars=10, max_profile_chars=20, max_features=2, max_feature_chars=4)
    with client_for(zero_shot, **limits) as c:
        for change, field in [({"user": "u" * 6}, "user"), ({"title": "t" * 11}, "title"),
                              ({"item_profile": "p" * 21}, "item_profile"), ({"features": ["a", "b", "c"]}, "features"),
                              ({"features": ["abcde"]}, "features.0")]:
            r = c.post("/v1/explain", json={**OK, **change})
            assert r.status_code == 422 and r.json()["field"] == field, (change, r.text)
        within = {"user": "u" * 5, "title": "t" * 10, "user_profile": "p" * 20, "features": ["abcd", "x"]}
        assert c.post("/v1/explain", json={**OK, **within}).status_code == 200
        assert c.get("/v1/model").json()["limits"]["title_chars"] == 10


def test_a_batch_larger_than_the_queue_is_422_not_an_endless_429(zero_shot):
    with client_for(zero_shot, queue=4, max_pairs=32) as c:
        r = c.post("/v1/explain/batch", json={"pairs": [{"user": "u1", "item": "i1"}] * 5, **BODY_SHORT})
        assert r.status_code == 422 and r.json()["field"] == "pairs"
        assert "at most 4 pairs" in r.json()["error"] and "--queue 4" in r.json()["error"]
        assert c.post("/v1/explain/batch", json={"pairs": [{"user": "u1", "item": "i1"}] * 4,
                                                 **BODY_SHORT}).status_code == 200
        assert c.get("/v1/model").json()["limits"]["max_pairs"] == 4


def test_streaming_validates_before_streaming(client):
    r = client.post("/v1/explain/stream", json={**OK, "top_p": 2})
    assert r.status_code == 422 and r.json()["field"] == "top_p"


def test_search_limits(client):
    r = client.get("/v1/items", params={"limit": 51})
    assert r.status_code == 422 and r.json()["field"] == "limit"
    r = client.get("/v1/users", params={"limit": "many"})
    assert r.status_code == 422 and r.json()["field"] == "limit"
    assert client.get("/v1/users", params={"q": "q" * 201}).status_code == 422


def test_oversized_bodies_are_413(client):
    huge = {**OK, "title": "t" * 70_000}  # over the 64 KiB body limit (checked before the title's own limit)
    r = client.post("/v1/explain", json=huge)
    assert r.status_code == 413 and r.json()["error_type"] == "too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"user": "u1", "item": "i2", "title": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/v1/explain", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/explain", content=b"{}", headers={"content-type": "application/json",
                                                           "content-length": "abc"})
    assert r.status_code == 400
    assert client.post("/v1/explain", json=OK).status_code == 200  # and it still serves


def test_a_declared_length_over_the_limit_is_refused_before_reading_the_body(zero_shot):
    """A client announcing 10 MB gets 413 at once: the server never reads (or buffers) that body."""
    import asyncio

    from serve_helpers import make_service

    from explainrec.serve.app import create_app

    app = create_app(make_service(zero_shot))
    sent = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/explain", "raw_path": b"/v1/explain", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"10000000")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413


def _stalling_request(app, body_start: bytes, declared: int):
    """Call the app with a client that sends the first bytes of a body of ``declared`` bytes and then stalls."""
    import asyncio

    sent = []
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body_start, "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/explain", "raw_path": b"/v1/explain", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(declared).encode())],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    return app(scope, receive, send), sent


def test_a_body_that_stalls_is_408_within_the_body_timeout(zero_shot):
    import asyncio
    import time

    from serve_helpers import make_service

    from explainrec.serve.app import create_app

    app = create_app(make_service(zero_shot, body_timeout_s=0.3))
    call, sent = _stalling_request(app, b'{"user": "u1", ', 200)
    start = time.perf_counter()
    asyncio.run(asyncio.wait_for(call, 10))
    assert 0.3 <= time.perf_counter() - start < 5
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b'"error_type":"body_timeout"' in sent[1]["body"]


def test_bearer_token_is_the_key_too(zero_shot, data):
    with client_for(zero_shot, data, api_key="s3cret") as c:
        assert c.post("/v1/explain", json=OK, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": "bearer s3cret"}).status_code == 200
        for wrong in ("Bearer nope", "Basic s3cret", "s3cret"):
            r = c.get("/v1/model", headers={"Authorization": wrong})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", wrong


def test_cors_only_for_the_origins_given(zero_shot):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, authorization"}
    with client_for(zero_shot) as c:  # the default: only the server's own page
        assert c.options("/v1/explain", headers=preflight).status_code == 405
        assert "access-control-allow-origin" not in c.post("/v1/explain", json=OK, headers={
            "Origin": "https://app.example"}).headers
    with client_for(zero_shot, cors_origins=("https://app.example",)) as c:
        r = c.options("/v1/explain", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.post("/v1/explain", json=OK, headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = c.options("/v1/explain", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_unknown_routes_and_methods_are_json_4xx(client):
    assert client.get("/v1/nothing").json()["error_type"] == "not_found"
    r = client.get("/v1/explain")
    assert r.status_code == 405 and r.json()["error_type"] == "method_not_allowed"


def test_api_key(zero_shot, data):
    with client_for(zero_shot, data, api_key="s3cret") as c:
        assert c.get("/v1/model").status_code == 401
        r = c.post("/v1/explain", json=OK, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and r.json()["error_type"] == "auth"
        assert c.post("/v1/explain", json=OK, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/items", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/healthz").json()["auth"] is True  # the page learns that it must ask for the key
        assert c.get("/").status_code == 200
        assert "s3cret" not in c.get("/v1/model", headers={"X-API-Key": "s3cret"}).text
