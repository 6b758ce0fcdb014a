"""The server's phases in process, on the tiny model: while the model loads, liveness answers and says so,
readiness and the API answer 503 with Retry-After; a failed load is said; the drain lets every running and queued
request finish within the grace period and answers the rest with a JSON 503 (a stream: an error event), never a
500, while new requests get 503 at once. (Real signals on a real server process: test_drain.py.)"""
from __future__ import annotations

import asyncio
import threading

import httpx
from serve_helpers import Recording, make_service, sse_events, wait_until

from explainrec.serve.app import create_app
from explainrec.serve.lifecycle import Lifecycle
from explainrec.serve.schemas import ServeSettings

PAIR = {"user": "u1", "item": "i1", "max_new_tokens": 4}


async def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


def test_while_loading_liveness_answers_and_the_api_says_503(zero_shot, data):
    gate = threading.Event()

    def load():
        gate.wait(30)
        return make_service(zero_shot, data)

    lifecycle = Lifecycle(ServeSettings(), load=load)
    app = create_app(lifecycle)

    async def main():
        await lifecycle.start()
        async with await _client(app) as c:
            seen = [await c.get("/healthz"), await c.get("/readyz"), await c.post("/v1/explain", json=PAIR),
                    await c.get("/v1/model"), await c.get("/")]
            gate.set()
            await wait_until(lambda: lifecycle.phase == "ready")
            seen += [await c.get("/readyz"), await c.post("/v1/explain", json=PAIR)]
        await lifecycle.stop()
        return seen

    health, ready, explain, model, page, ready_after, explain_after = asyncio.run(main())
    assert health.status_code == 200 and health.json()["status"] == "loading"
    assert ready.status_code == 503 and ready.json() == {"status": "loading"} and ready.headers["retry-after"]
    for r in (explain, model):
        assert r.status_code == 503 and r.json()["error_type"] == "unavailable" and r.headers["retry-after"]
    assert page.status_code == 200  # the page loads and waits for the model
    assert ready_after.status_code == 200 and explain_after.status_code == 200


def test_a_failed_load_is_kept_for_the_command_and_stops_the_server(zero_shot):
    stopped = threading.Event()

    def load():
        raise FileNotFoundError("runs/x: no such folder")

    lifecycle = Lifecycle(ServeSettings(), load=load)
    lifecycle.on_failed = stopped.set
    app = create_app(lifecycle)

    async def main():
        await lifecycle.start()
        await wait_until(stopped.is_set)
        async with await _client(app) as c:
            return await c.post("/v1/explain", json=PAIR)

    r = asyncio.run(main())
    assert isinstance(lifecycle.load_error, FileNotFoundError)
    assert r.status_code == 503 and "failed to load" in r.json()["error"]


def _drain_scene(zero_shot, data, grace_s: float, release_before_grace: bool):
    """One request generating (held inside explain), one queued, one streaming behind them; then drain."""
    recorder = Recording(zero_shot)
    recorder.hold()
    service = make_service(recorder, data, max_batch=1, max_wait_ms=0, grace_s=grace_s)
    app = create_app(service)
    lifecycle = app.state.lifecycle

    async def main():
        await lifecycle.start()
        async with await _client(app) as c:
            running = asyncio.ensure_future(c.post("/v1/explain", json=PAIR))
            await wait_until(recorder.entered.is_set)
            queued = asyncio.ensure_future(c.post("/v1/explain", json={**PAIR, "user": "u2"}))
            stream = asyncio.ensure_future(c.post("/v1/explain/stream", json={**PAIR, "user": "u3"}))
            await wait_until(lambda: service.batcher.state()["waiting"] == 2)
            drain = asyncio.ensure_future(lifecycle.drain())
            await wait_until(lambda: lifecycle.phase == "draining")
            during = [await c.post("/v1/explain", json=PAIR), await c.get("/healthz"), await c.get("/readyz")]
            if release_before_grace:
                recorder.release()
            await asyncio.wait_for(drain, 30)
            recorder.release()
            answers = await asyncio.gather(running, queued, stream)
        await lifecycle.stop()
        return during, answers

    return asyncio.run(main())


def test_drain_finishes_running_and_queued_requests_within_the_grace_period(zero_shot, data):
    (new, health, ready), (running, queued, stream) = _drain_scene(zero_shot, data, 30.0, release_before_grace=True)
    assert new.status_code == 503 and new.json()["error_type"] == "unavailable" and new.headers["retry-after"]
    assert new.headers["connection"] == "close"
    assert health.status_code == 200 and health.json()["status"] == "draining"
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert running.status_code == 200 and queued.status_code == 200 and running.json()["explanation"]
    events = sse_events(stream.text)
    assert stream.status_code == 200 and events[-1][0] == "done" and events[-1][1]["explanation"]


def test_after_the_grace_period_the_rest_get_json_503_never_500(zero_shot, data):
    _, (running, queued, stream) = _drain_scene(zero_shot, data, 0.2, release_before_grace=False)
    for r in (running, queued):
        assert r.status_code == 503 and r.json()["error_type"] == "unavailable", r.text
    events = sse_events(stream.text)
    assert [name for name, _ in events] == ["meta", "error"] and events[-1][1]["error_type"] == "unavailable"
