"""Helpers of the server tests (a module of its own: test modules cannot import a conftest reliably)."""
from __future__ import annotations

import asyncio
import json
import threading
from contextlib import asynccontextmanager, contextmanager

import httpx
from fastapi.testclient import TestClient

from live_server import free_port, serving  # noqa: F401 -- free_port for the tests

from explainrec.serve.app import create_app
from explainrec.serve.schemas import ServeSettings
from explainrec.serve.service import Service


class Recording:
    """An explainer that records every explain call's pairs; with ``hold()`` the worker waits inside the call until
    ``release()`` (so a test can fill the queue behind it or let a request time out)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[list[tuple[str, str]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def explain(self, pairs, generation=None, **kwargs):
        self.calls.append([(p.user, p.item) for p in pairs])
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never released")
        return self.inner.explain(pairs, generation, **kwargs)


def make_service(explainer, dataset=None, **settings) -> Service:
    return Service(explainer, dataset, ServeSettings(**settings), load_seconds=0.0)


@contextmanager
def client_for(explainer, dataset=None, **settings):
    """A TestClient on a fresh app (its lifespan starts and stops the batcher)."""
    service = make_service(explainer, dataset, **settings)
    with TestClient(create_app(service)) as client:
        client.service = service
        yield client


@asynccontextmanager
async def async_client(service: Service):
    """An httpx client on the app in this event loop (for concurrent requests); stops the batcher after."""
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            yield client
    finally:
        await service.batcher.stop()


def sse_events(text: str) -> list[tuple[str, dict]]:
    """``[(event, data)]`` of a server-sent-events body."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def wait_until(condition, timeout: float = 10.0) -> None:
    """Poll ``condition()`` on the event loop (the app runs in the same loop) until it holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------- a real server


@contextmanager
def running_server(*args: str, timeout: float = 120.0, log=None):
    """``explainrec serve ARGS --port P`` in a subprocess (uvicorn on loopback); yields ``(base_url, process)``
    once /readyz answers 200 (the model is loaded)."""
    with serving(["serve", *args], ready="/readyz", timeout=timeout, log=log) as served:
        yield served
