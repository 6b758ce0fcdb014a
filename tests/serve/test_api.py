"""Every endpoint of the API on the tiny models: what it answers (typed: every answer validates against its
OpenAPI model), where the prompt text came from, cold start, ungrounded pairs, token usage and finish reason,
request ids, search, known pairs, the model's description, the page and its files, streaming equal to the plain
answer with its events in order."""
from __future__ import annotations

import re

import pytest
from serve_helpers import Recording, client_for, sse_events

from explainrec.serve.schemas import STREAM_EVENTS, BatchResponse, ExplainResponse, ModelInfo

SHORT = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def client(zero_shot, data):
    with client_for(zero_shot, data) as c:
        yield c


def _known_pair(data):
    example = data.split_examples("test")[0]
    return data.pair_of(example)


def test_explain_known_pair_uses_the_training_prompt_text(client, data):
    pair = _known_pair(data)
    r = client.post("/v1/explain", json={"user": pair.user, "item": pair.item, **SHORT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == pair.user and body["item"] == pair.item and body["method"] == "zero-shot"
    assert body["explanation"] and isinstance(body["explanation"], str)
    assert body["prompt"]["source"] == "example"
    assert body["prompt"]["title"] == pair.title and body["prompt"]["user_profile"] == pair.user_profile
    assert body["prompt"]["features"] == list(pair.features)
    assert body["cold_start"] is False and body["known"] == {"user": None, "item": None}  # zero-shot: no id maps
    assert body["generation"]["max_new_tokens"] == 6 and "batch_size" not in body["generation"]
    timing = body["timing"]
    assert timing["batch_size"] == 1 and timing["queue_ms"] >= 0 and timing["generation_ms"] > 0
    assert timing["total_ms"] >= timing["generation_ms"] and timing["queue_ms"] < timing["first_token_ms"]
    assert body["grounded"] is True and body["note"] is None and body["extras"] == {}
    ExplainResponse.model_validate(body)


def test_usage_counts_the_prompt_and_the_text_and_says_why_it_ended(client, zero_shot, data):
    from explainrec.data.prompts import render_prompt

    pair = _known_pair(data)
    body = client.post("/v1/explain", json={"user": pair.user, "item": pair.item, **SHORT}).json()
    rendered = render_prompt(zero_shot.tokenizer, zero_shot.prompt(pair))
    prompt_tokens = len(zero_shot.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    # The tiny random model never writes its eos: every text runs to max_new_tokens, and says so.
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 6, "total_tokens": prompt_tokens + 6}
    assert body["finish_reason"] == "length"
    beams = client.post("/v1/explain", json={"user": pair.user, "item": pair.item, "num_beams": 2, **SHORT}).json()
    assert beams["finish_reason"] is None and beams["usage"]["completion_tokens"] is None  # generate cannot count


def test_request_ids_are_echoed_or_made(client):
    r = client.post("/v1/explain", json={"user": "u1", "item": "i1", **SHORT}, headers={"X-Request-Id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42" and r.json()["request_id"] == "trace-42"
    made = client.post("/v1/explain", json={"user": "u1", "item": "i1", **SHORT})
    other = client.get("/v1/model", headers={"X-Request-Id": "bad id\nforged log line"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"]) and made.json()["request_id"] == made.headers[
        "x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", other.headers["x-request-id"])  # a header that could forge a log: replaced
    assert client.post("/v1/explain", json={"user": 5}).headers["x-request-id"]  # refusals carry one too


def test_numeric_ids_are_ids(client, data):
    r = client.post("/v1/explain", json={"user": 1903, "item": 7, **SHORT})
    assert r.status_code == 200 and r.json()["user"] == "1903" and r.json()["item"] == "7"


def test_request_text_overrides_the_data(client, data):
    pair = _known_pair(data)
    r = client.post("/v1/explain", json={"user": pair.user, "item": pair.item, "title": "A Custom Title",
                                         "features": ["lens"], **SHORT})
    prompt = r.json()["prompt"]
    assert prompt["source"] == "example+request" and prompt["title"] == "A Custom Title"
    assert prompt["features"] == ["lens"] and prompt["user_profile"] == pair.user_profile  # the rest from the data


def test_unknown_ids_are_explained_from_what_is_known(client, data):
    r = client.post("/v1/explain", json={"user": "nobody", "item": "nothing", **SHORT})
    assert r.status_code == 200 and r.json()["prompt"]["source"] == "none"
    assert r.json()["grounded"] is False and "nothing is known" in r.json()["note"]  # said, in a field to test
    item = data.items.raw[0]
    r = client.post("/v1/explain", json={"user": "nobody", "item": item, **SHORT})
    assert r.json()["prompt"]["source"] == "profiles" and r.json()["prompt"]["title"] and r.json()["grounded"]


def test_an_ungrounded_pair_is_refused_when_the_server_says_so(gavamoe, zero_shot):
    with client_for(zero_shot, ungrounded="refuse") as c:
        r = c.post("/v1/explain", json={"user": "a", "item": "b", **SHORT})
        assert r.status_code == 422 and r.json()["error_type"] == "ungrounded" and r.json()["field"] == "user"
        r = c.post("/v1/explain/batch", json={"pairs": [{"user": "a", "item": "b", "title": "Kettle"},
                                                        {"user": "a", "item": "b"}], **SHORT})
        assert r.status_code == 422 and r.json()["field"] == "pairs.1.user"
        described = c.post("/v1/explain", json={"user": "a", "item": "b", "user_profile": "likes tea", **SHORT})
        assert described.status_code == 200 and described.json()["grounded"] is True
    with client_for(gavamoe, ungrounded="refuse") as c:  # no --data: ids the model learned are enough
        assert c.post("/v1/explain", json={"user": "u1", "item": "i1", **SHORT}).json()["grounded"] is True
        r = c.post("/v1/explain", json={"user": "u1", "item": "never-seen", **SHORT})
        assert r.status_code == 422 and r.json()["field"] == "item"


def test_without_data_the_prompt_is_the_request(zero_shot):
    with client_for(zero_shot) as c:
        r = c.post("/v1/explain", json={"user": "u1", "item": "i1", "title": "Red Kettle", **SHORT})
        assert r.status_code == 200 and r.json()["prompt"]["source"] == "request"
        assert c.get("/v1/items").json() == {"query": "", "source": "none", "results": []}


def test_cold_start_is_said_never_a_500(gavamoe, data):
    with client_for(gavamoe, data) as c:
        known = _known_pair(data)
        warm = c.post("/v1/explain", json={"user": known.user, "item": known.item, **SHORT}).json()
        assert warm["cold_start"] is False and warm["known"] == {"user": True, "item": True} and warm["note"] is None
        r = c.post("/v1/explain", json={"user": "never-seen", "item": known.item, **SHORT})
        assert r.status_code == 200
        cold = r.json()
        assert cold["cold_start"] is True and cold["known"] == {"user": False, "item": True}
        assert "cold-start" in cold["note"]
        assert set(cold["extras"]) == {"cluster", "top_experts"}  # the method's extras, generically
        assert isinstance(cold["extras"]["cluster"], int) and len(cold["extras"]["top_experts"]) >= 1


def test_batch_endpoint_answers_in_order_in_one_call(zero_shot, data):
    recorder = Recording(zero_shot)
    pairs = [{"user": u, "item": i} for u, i in [("u1", "i2"), ("u3", "i4"), ("nobody", "i0")]]
    with client_for(recorder, data, max_wait_ms=200) as c:
        r = c.post("/v1/explain/batch", json={"pairs": pairs, **SHORT})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["user"], x["item"]) for x in results] == [(p["user"], p["item"]) for p in pairs]
    assert len(recorder.calls) == 1 and len(recorder.calls[0]) == 3
    assert all(x["timing"]["batch_size"] == 3 for x in results)
    assert {x["request_id"] for x in results} == {r.json()["request_id"]} == {r.headers["x-request-id"]}
    BatchResponse.model_validate(r.json())


@pytest.mark.parametrize("explainer", ["zero_shot", "gavamoe"])
def test_streaming_gives_the_same_text_as_the_plain_answer(explainer, request, data):
    pair = _known_pair(data)
    body = {"user": pair.user, "item": pair.item, "max_new_tokens": 12}
    with client_for(request.getfixturevalue(explainer), data) as c:
        plain = c.post("/v1/explain", json=body).json()
        r = c.post("/v1/explain/stream", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [name for name, _ in events]
    assert names[:2] == ["meta", "start"] and names[-1] == "done" and names.count("delta") > 1  # text in pieces
    assert set(names[2:-1]) == {"delta"}
    assert events[0][1]["prompt"] == plain["prompt"] and events[0][1]["request_id"] == r.headers["x-request-id"]
    streamed = "".join(data_["text"] for name, data_ in events if name == "delta")
    done = events[-1][1]
    assert streamed == done["explanation"] == plain["explanation"]
    assert done["extras"] == plain["extras"] and done["usage"] == plain["usage"]
    models = {m.model_fields["event"].default: m for m in STREAM_EVENTS}
    for name, data_ in events:  # every event is what the OpenAPI schema says
        assert data_["event"] == name
        models[name].model_validate(data_)


def test_stream_with_beam_search_still_ends_with_the_text(client, data):
    pair = _known_pair(data)
    r = client.post("/v1/explain/stream", json={"user": pair.user, "item": pair.item, "num_beams": 2, **SHORT})
    events = sse_events(r.text)
    assert events[-1][0] == "done" and events[-1][1]["explanation"]


def test_search_items_and_users(client, data):
    hits = client.get("/v1/items", params={"q": "i1", "limit": 5}).json()
    assert hits["source"] == "data" and hits["results"][0]["id"] == "i1"  # the exact id first
    assert all("i1" in h["id"] for h in hits["results"]) and len(hits["results"]) <= 5
    title = next(e.title for e in data.examples if e.title)
    word = title.split()[0].lower()
    found = client.get("/v1/items", params={"q": word}).json()["results"]
    assert found and all(word in (h["id"] + " " + (h["text"] or "")).lower() for h in found)
    users = client.get("/v1/users", params={"q": "u2"}).json()["results"]
    assert users[0]["id"] == "u2" and users[0]["text"]  # a user's profile
    assert client.get("/v1/items", params={"q": "no-such-thing"}).json()["results"] == []


def test_search_ranks_exact_id_then_prefix_then_id_then_text(zero_shot):
    from serve_helpers import make_service

    service = make_service(zero_shot)
    service.items = [("x-lamp", "Desk"), ("z", "Lamp of the year"), ("lamp-3", None), ("lamp", "A lamp"),
                     ("big-lamp-2", None), ("other", "table")]
    assert [h["id"] for h in service.search("items", "LAMP", 10)] == ["lamp", "lamp-3", "x-lamp", "big-lamp-2", "z"]
    assert [h["id"] for h in service.search("items", "lamp", 2)] == ["lamp", "lamp-3"]
    assert [h["id"] for h in service.search("items", "", 3)] == ["x-lamp", "z", "lamp-3"]


def test_search_without_data_uses_the_models_ids(gavamoe):
    with client_for(gavamoe) as c:
        hits = c.get("/v1/items", params={"q": "i2"}).json()
    assert hits["source"] == "model" and hits["results"][0] == {"id": "i2", "text": None}


def test_known_pairs_exist_in_the_data(client, data, zero_shot):
    for _ in range(5):
        pair = client.get("/v1/pairs/random").json()
        found, source = data.pair(pair["user"], pair["item"])
        assert source == "example" and pair["split"] == "test" and pair["title"] == found.title
    with client_for(zero_shot) as c:  # no --data: no pairs to offer
        r = c.get("/v1/pairs/random")
        assert r.status_code == 404 and "--data" in r.json()["error"]


def test_model_description(gavamoe, data):
    with client_for(gavamoe, data, max_new_tokens=64) as c:
        info = c.get("/v1/model").json()
    ModelInfo.model_validate(info)
    assert info["method"] == "gavamoe" and info["model"] == "tiny" and info["precision"] == "fp32"
    assert info["config"]["clusters"] >= 1 and info["data"]["fingerprint"]
    assert info["served_data"]["matches_model"] is True and info["load_seconds"] == 0.0
    assert info["limits"]["max_new_tokens"] == 64 and info["limits"]["max_batch"] == 16
    assert info["known_users"] == data.n_users and re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"])


def test_health_readiness_and_docs(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ready" and health["auth"] is False and health["waiting"] == 0
    assert client.get("/readyz").json() == {"status": "ready"}
    spec = client.get("/openapi.json").json()
    for path in ("/v1/explain", "/v1/explain/batch", "/v1/explain/stream", "/v1/items", "/v1/users", "/v1/model",
                 "/v1/pairs/random", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    assert "max_new_tokens" in spec["components"]["schemas"]["ExplainRequest"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "<code>POST /v1/explain</code>" in docs.text
    assert "max_new_tokens" in docs.text and "http" not in docs.text.split("<body>")[0]  # nothing fetched from outside


def test_openapi_names_every_operation_and_types_every_answer(client):
    spec = client.get("/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert ids == {"explain", "explain_batch", "explain_stream", "search_items", "search_users", "random_pair",
                   "model_info", "healthz", "readyz", "metrics"}  # stable names, none generated
    schemas = spec["components"]["schemas"]

    def ok(path, verb="get"):
        return spec["paths"][path][verb]["responses"]["200"]["content"]

    assert ok("/v1/model")["application/json"]["schema"] == {"$ref": "#/components/schemas/ModelInfo"}
    explained = schemas["ExplainResponse"]["properties"]
    assert explained["extras"] == {"$ref": "#/components/schemas/MethodExtras"}
    assert explained["generation"] == {"$ref": "#/components/schemas/GenerationUsed"}
    assert {"cluster", "top_experts", "decision", "paths"} <= set(schemas["MethodExtras"]["properties"])
    assert explained["finish_reason"]["anyOf"][0]["enum"] == ["stop", "length"]
    stream = ok("/v1/explain/stream", "post")["text/event-stream"]["schema"]
    assert set(stream["discriminator"]["mapping"]) == {"meta", "start", "delta", "done", "error"}
    for ref in stream["discriminator"]["mapping"].values():
        assert ref.rsplit("/", 1)[-1] in schemas
    user = schemas["ExplainRequest"]["properties"]["user"]
    assert {"type": "integer"} in user["anyOf"]  # ids: strings or numbers


def test_the_page_and_its_files_load_nothing_from_outside(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text), f"{name} refers to another host"
    assert not re.search(r"https?://", page.text)
    missing = client.get("/static/../app.py")
    assert missing.status_code == 404
    assert client.get("/static/secret.txt").json()["error_type"] == "not_found"
