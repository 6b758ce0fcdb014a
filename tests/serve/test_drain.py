"""Graceful drain with real signals: a real server process (explainrec serve, tiny zero-shot model) gets SIGTERM
while 16 requests and a stream are queued or generating.

With a grace period longer than their generation, every one is answered 200 with its full text and the stream ends
with its done event; meanwhile new requests get a JSON 503 with Retry-After and /healthz says draining. With a
grace period shorter than their generation, every client gets a full answer, a JSON 503 or (the stream) an error
event: no 500, no cut connection, no stream without its last event. The server exits 0 either way.
"""
from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
from serve_helpers import running_server

N = 16
TOKENS = 250  # the tiny random model never writes its eos: every text is exactly this long ("length")


async def _load_then_sigterm(base: str, process, *, check_draining: bool) -> dict:
    """Send N requests and a stream, wait until all are queued or generating, SIGTERM the server, collect."""
    limits = httpx.Limits(max_connections=N + 8)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        async def one(k: int):
            try:
                r = await http.post("/v1/explain", json={"user": f"u{k}", "item": "i1", "max_new_tokens": TOKENS})
                return r.status_code, r.json()
            except httpx.HTTPError as err:  # a cut connection: what must never happen
                return "cut", repr(err)

        async def stream():
            events = []
            try:
                async with http.stream("POST", "/v1/explain/stream",
                                       json={"user": "u99", "item": "i2", "max_new_tokens": TOKENS}) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
                return r.status_code, events
            except httpx.HTTPError as err:
                return "cut", events + [repr(err)]

        tasks = [asyncio.ensure_future(one(k)) for k in range(N)] + [asyncio.ensure_future(stream())]
        deadline = time.monotonic() + 60
        while True:  # every request admitted: queued or generating
            state = (await http.get("/healthz")).json()
            if state["waiting"] + state["generating"] == N + 1:
                break
            assert time.monotonic() < deadline, state
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        during = {}
        if check_draining:
            while (health := (await http.get("/healthz")).json())["status"] != "draining":
                await asyncio.sleep(0.02)
            during = {"health": health, "new": await http.post("/v1/explain", json={"user": "u1", "item": "i1"}),
                      "ready": await http.get("/readyz")}
        answers = await asyncio.gather(*tasks)
    return {"answers": answers[:N], "stream": answers[N], **during}


def _drain(tmp_path, grace: str, *, check_draining: bool) -> tuple[dict, int, str]:
    from conftest import SYNTHETIC

    log = tmp_path / "server.log"
    with running_server("--method", "zero-shot", "--model", "tiny", "--data", SYNTHETIC, "--max-batch", "4",
                        "--max-new-tokens", str(TOKENS), "--grace-seconds", grace, log=log) as (base, process):
        seen = asyncio.run(_load_then_sigterm(base, process, check_draining=check_draining))
        code = process.wait(timeout=120)
    return seen, code, log.read_text()


def _full(status, body) -> bool:
    return status == 200 and body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == TOKENS


def test_sigterm_with_a_long_grace_period_answers_everything_in_flight(tmp_path):
    seen, code, log = _drain(tmp_path, "120", check_draining=True)
    assert all(_full(status, body) for status, body in seen["answers"]), seen["answers"]
    status, events = seen["stream"]
    assert status == 200 and [e["event"] for e in events][:2] == ["meta", "start"] and events[-1]["event"] == "done"
    assert "".join(e["text"] for e in events if e["event"] == "delta") == events[-1]["explanation"]
    assert seen["health"]["status"] == "draining"
    new = seen["new"]
    assert new.status_code == 503 and new.json()["error_type"] == "unavailable" and new.headers["retry-after"]
    assert seen["ready"].status_code == 503 and seen["ready"].json() == {"status": "draining"}
    assert code == 0 and "drained in" in log and "Traceback" not in log, log


def test_sigterm_with_a_short_grace_period_gives_json_503_never_500_or_a_cut(tmp_path):
    seen, code, log = _drain(tmp_path, "0.3", check_draining=False)
    statuses = [status for status, _ in seen["answers"]]
    assert set(statuses) <= {200, 503}, seen["answers"]  # no 500, no cut connection
    assert statuses.count(503) >= 1  # the grace period did cut in
    for status, body in seen["answers"]:
        assert _full(status, body) or (body["error_type"] == "unavailable" and "grace period" in body["error"])
    status, events = seen["stream"]
    assert status == 200 and events[0]["event"] == "meta"
    assert events[-1]["event"] == "done" or (events[-1]["event"] == "error"
                                             and events[-1]["error_type"] == "unavailable"), events[-1]
    assert code == 0 and "grace period over" in log and "Traceback" not in log, log
