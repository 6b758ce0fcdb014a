"""Dynamic batching on the real app and the tiny model: concurrent requests share one explain call, different
settings do not, the queue is bounded (429 + Retry-After), a client that leaves or times out frees its slot and is
never generated, and the server answers /healthz while a batch generates (generation is off the event loop)."""
from __future__ import annotations

import asyncio
import json

from serve_helpers import Recording, async_client, make_service, wait_until

BODY = {"max_new_tokens": 4}


def _pair(n: int) -> dict:
    return {**_ids(n), **BODY}


def _ids(n: int) -> dict:
    return {"user": f"u{n}", "item": f"i{n}"}


def test_requests_arriving_within_max_wait_share_one_explain_call(zero_shot, data):
    recorder = Recording(zero_shot)
    service = make_service(recorder, data, max_batch=8, max_wait_ms=1500)

    async def main():
        async with async_client(service) as client:
            async def later(n):  # one every 100 ms: only the wait lets them meet
                await asyncio.sleep(0.1 * n)
                return await client.post("/v1/explain", json=_pair(n))
            return await asyncio.gather(*(later(n) for n in range(5)))

    answers = asyncio.run(main())
    assert [r.status_code for r in answers] == [200] * 5
    assert len(recorder.calls) == 1 and sorted(recorder.calls[0]) == sorted((f"u{n}", f"i{n}") for n in range(5))
    assert {r.json()["timing"]["batch_size"] for r in answers} == {5}
    assert service.batcher.state()["batches"] == 1 and service.batcher.state()["explained"] == 5


def test_a_lone_request_waits_max_wait_and_no_longer(zero_shot, data):
    service = make_service(zero_shot, data, max_wait_ms=300)

    async def main():
        async with async_client(service) as client:
            return await client.post("/v1/explain", json=_pair(0))

    queue_ms = asyncio.run(main()).json()["timing"]["queue_ms"]
    assert 290 <= queue_ms < 1500


def test_batches_are_capped_at_max_batch(zero_shot, data):
    recorder = Recording(zero_shot)
    service = make_service(recorder, data, max_batch=2, max_wait_ms=1000)

    async def main():
        async with async_client(service) as client:
            return await asyncio.gather(*(client.post("/v1/explain", json=_pair(n)) for n in range(5)))

    assert all(r.status_code == 200 for r in asyncio.run(main()))
    assert sorted(len(c) for c in recorder.calls) == [1, 2, 2]


def test_different_settings_never_share_a_batch(zero_shot, data):
    recorder = Recording(zero_shot)
    service = make_service(recorder, data, max_batch=16, max_wait_ms=500)
    bodies = ([{**_pair(n), "max_new_tokens": 4, "seed": n} for n in range(3)]  # greedy: the seed is unused
              + [{**_pair(n), "max_new_tokens": 5} for n in range(3, 5)]
              + [{**_pair(n), "do_sample": True, "seed": 7} for n in range(5, 7)])  # sampled: alone

    async def main():
        async with async_client(service) as client:
            return await asyncio.gather(*(client.post("/v1/explain", json=b) for b in bodies))

    answers = asyncio.run(main())
    assert all(r.status_code == 200 for r in answers)
    assert sorted(len(c) for c in recorder.calls) == [1, 1, 2, 3]
    by_pair = {r.json()["user"]: r.json() for r in answers}
    for call in recorder.calls:  # each call holds one kind of request
        tokens = {by_pair[u]["generation"]["max_new_tokens"] for u, _ in call}
        sampled = {by_pair[u]["generation"]["do_sample"] for u, _ in call}
        assert len(tokens) == 1 and len(sampled) == 1


def test_full_queue_answers_429_with_retry_after(zero_shot, data):
    recorder = Recording(zero_shot)
    recorder.hold()
    service = make_service(recorder, data, max_batch=1, max_wait_ms=0, queue=2)

    async def main():
        async with async_client(service) as client:
            running = asyncio.ensure_future(client.post("/v1/explain", json=_pair(0)))
            await wait_until(recorder.entered.is_set)
            waiting = [asyncio.ensure_future(client.post("/v1/explain", json=_pair(n))) for n in (1, 2)]
            await wait_until(lambda: service.batcher.state()["waiting"] == 2)
            refused = await client.post("/v1/explain", json=_pair(3))
            refused_batch = await client.post("/v1/explain/batch", json={"pairs": [_ids(3)], **BODY})
            refused_stream = await client.post("/v1/explain/stream", json=_pair(4))
            health = await client.get("/healthz")
            recorder.release()
            rest = await asyncio.gather(running, *waiting)
            return refused, refused_batch, refused_stream, health, rest

    refused, refused_batch, refused_stream, health, rest = asyncio.run(main())
    for r in (refused, refused_batch, refused_stream):
        assert r.status_code == 429 and r.json()["error_type"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
    assert health.json()["waiting"] == 2 and health.json()["generating"] == 1
    assert [r.status_code for r in rest] == [200, 200, 200]
    assert ("u3", "i3") not in [p for call in recorder.calls for p in call]


def test_a_batch_request_is_admitted_whole_or_not_at_all(zero_shot, data):
    recorder = Recording(zero_shot)
    recorder.hold()
    service = make_service(recorder, data, max_batch=1, max_wait_ms=0, queue=2)

    async def main():
        async with async_client(service) as client:
            running = asyncio.ensure_future(client.post("/v1/explain", json=_pair(0)))
            await wait_until(recorder.entered.is_set)
            waiting = asyncio.ensure_future(client.post("/v1/explain", json=_pair(1)))
            await wait_until(lambda: service.batcher.state()["waiting"] == 1)
            refused = await client.post("/v1/explain/batch", json={"pairs": [_ids(2), _ids(3)], **BODY})
            state = service.batcher.state()
            recorder.release()
            await asyncio.gather(running, waiting)
            return refused, state

    refused, state = asyncio.run(main())
    assert refused.status_code == 429 and state["waiting"] == 1  # neither of the two pairs was queued


def test_healthz_answers_while_a_batch_generates(zero_shot, data):
    recorder = Recording(zero_shot)
    recorder.hold()
    service = make_service(recorder, data)

    async def main():
        async with async_client(service) as client:
            running = asyncio.ensure_future(client.post("/v1/explain", json=_pair(0)))
            await wait_until(recorder.entered.is_set)
            health = await asyncio.wait_for(client.get("/healthz"), 5)  # the worker is still inside explain
            model = await asyncio.wait_for(client.get("/v1/model"), 5)
            recorder.release()
            return health, model, await running

    health, model, answer = asyncio.run(main())
    assert health.status_code == 200 and health.json()["generating"] == 1
    assert model.status_code == 200 and answer.status_code == 200


def _asgi_request(app, path: str, body: dict):
    """Call the app directly with a client that can leave: ``(task, leave event, sent messages)``."""
    raw = json.dumps(body).encode()
    leave = asyncio.Event()
    sent: list[dict] = []
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": raw, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("test", 80)}
    return asyncio.ensure_future(app(scope, receive, send)), leave, sent


def test_a_client_that_leaves_frees_its_slot_and_is_never_generated(zero_shot, data):
    from explainrec.serve.app import create_app

    recorder = Recording(zero_shot)
    recorder.hold()
    service = make_service(recorder, data, max_batch=1, max_wait_ms=0, queue=1)
    app = create_app(service)

    async def main():
        async with async_client(service) as client:
            running = asyncio.ensure_future(client.post("/v1/explain", json=_pair(0)))
            await wait_until(recorder.entered.is_set)
            leaver, leave, _ = _asgi_request(app, "/v1/explain", _pair(1))
            streamer, leave_stream, _ = _asgi_request(app, "/v1/explain/stream", _pair(2))
            await wait_until(lambda: service.batcher.state()["waiting"] >= 1)
            full = await client.post("/v1/explain", json=_pair(3))  # the queue (1) is full
            leave.set()
            leave_stream.set()
            await asyncio.wait_for(asyncio.gather(leaver, streamer), 10)
            after = service.batcher.state()["waiting"]
            recorder.release()
            done = await running
            again = await client.post("/v1/explain", json=_pair(5))
            return full, after, done, again

    full, after, done, again = asyncio.run(main())
    assert full.status_code == 429
    assert after == 0  # both slots were freed when their clients left
    assert done.status_code == 200 and again.status_code == 200
    generated = [p for call in recorder.calls for p in call]
    assert ("u1", "i1") not in generated and ("u2", "i2") not in generated
    assert generated == [("u0", "i0"), ("u5", "i5")]


def test_a_request_that_times_out_is_504_and_frees_its_slot(zero_shot, data):
    recorder = Recording(zero_shot)
    recorder.hold()
    service = make_service(recorder, data, max_batch=1, max_wait_ms=0, timeout_s=0.5)

    async def main():
        async with async_client(service) as client:
            running = asyncio.ensure_future(client.post("/v1/explain", json=_pair(0)))
            await wait_until(recorder.entered.is_set)
            late = await client.post("/v1/explain", json=_pair(1))
            stream = await client.post("/v1/explain/stream", json=_pair(2))
            waiting = service.batcher.state()["waiting"]
            first = await running
            recorder.release()
            await wait_until(lambda: service.batcher.state()["generating"] == 0)
            return late, stream, waiting, first

    late, stream, waiting, first = asyncio.run(main())
    assert late.status_code == 504 and late.json()["error_type"] == "timeout"
    assert first.status_code == 504  # the running one too: its answer came too late and is dropped
    assert "event: error" in stream.text and '"error_type": "timeout"' in stream.text
    assert waiting == 0
    assert [p for call in recorder.calls for p in call] == [("u0", "i0")]  # the others were never generated
