"""The server's phase: loading -> ready -> draining, and the graceful drain itself.

The HTTP server listens before the model is loaded, so an orchestrator sees the process alive (``/healthz``) and
not yet ready (``/readyz`` 503 ``loading``); the model loads in a background thread. On SIGTERM the server drains
as Triton does with ``--exit-timeout-secs`` and Kubernetes expects within ``terminationGracePeriodSeconds``: it
stops admitting requests (503 with ``Retry-After``, ``/readyz`` says ``draining``, so a load balancer moves on),
lets every queued and running request finish for up to ``--grace-seconds``, then fails what is left with a JSON
503 (a stream: an ``error`` event) and only then lets uvicorn close the connections. Nothing is cut mid-answer.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from explainrec.serve.metrics import Metrics
from explainrec.serve.schemas import ServeSettings

log = logging.getLogger("explainrec.serve")
# After the grace period: how long the failed requests' answers may take to be written before the server closes.
ANSWER_SECONDS = 10.0


class Lifecycle:
    """The settings, the :class:`~explainrec.serve.service.Service` once loaded, the phase, the in-flight count and
    the metrics: what every route and middleware of one app reads."""

    def __init__(self, settings: ServeSettings, service=None, *, load: Callable[[], object] | None = None,
                 on_ready: Callable[[object], None] | None = None):
        """Give a loaded ``service`` (tests), or ``load()`` that builds one in a background thread (the server)."""
        self.settings = settings
        self.service = None
        self.phase = "loading"
        self.load_error: BaseException | None = None
        self.in_flight = 0  # HTTP requests being answered (counted by the request middleware)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_failed: Callable[[], None] | None = None  # set by the server: stop serving
        self.metrics = Metrics(self.batcher_state, lambda: self.phase)
        self._load, self._on_ready = load, on_ready
        self._hurry = asyncio.Event()
        if service is not None:
            self._attach(service)

    # ------------------------------------------------------------------ loading

    async def start(self) -> None:
        """At the app's startup: start the batcher, or the loading thread (a daemon: SIGTERM while loading exits)."""
        self.loop = asyncio.get_running_loop()
        if self.service is not None:
            await self.service.batcher.start()
        elif self._load is not None:
            threading.Thread(target=self._load_in_thread, name="explainrec-load", daemon=True).start()

    def _load_in_thread(self) -> None:
        try:
            service = self._load()
        except BaseException as err:  # noqa: BLE001 -- handed to the command, which reports it as usual
            self.loop.call_soon_threadsafe(self._failed, err)
            return
        self.loop.call_soon_threadsafe(self._loaded, service)

    def _loaded(self, service) -> None:
        if self.phase == "draining":  # stopped while loading: never serve
            return
        self._attach(service)
        self.loop.create_task(service.batcher.start())
        if self._on_ready is not None:
            self._on_ready(service)

    def _failed(self, err: BaseException) -> None:
        self.load_error = err
        if self.on_failed is not None:
            self.on_failed()

    def _attach(self, service) -> None:
        from explainrec import __version__

        self.service = service
        service.batcher.on_batch = self.metrics.batch
        self.metrics.describe(method=service.explainer.method, precision=service.precision, version=__version__)
        self.phase = "ready"

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.batcher.stop()

    # ------------------------------------------------------------------ state

    def batcher_state(self) -> dict:
        if self.service is None:
            return {"waiting": 0, "generating": 0, "batches": 0, "explained": 0}
        return self.service.batcher.state()

    def idle(self) -> bool:
        return self.in_flight == 0 and (self.service is None or self.service.batcher.idle())

    # ------------------------------------------------------------------ draining

    async def drain(self) -> None:
        """Stop admitting, let queued and running requests finish for up to the grace period, fail the rest (503),
        and return once every answer has been written (or :data:`ANSWER_SECONDS` later)."""
        if self.phase == "draining":
            return
        self.phase = "draining"
        grace = self.settings.grace_s
        state = self.batcher_state()
        log.info("draining: %d waiting, %d generating, %d requests open; up to %g s to finish them",
                 state["waiting"], state["generating"], self.in_flight, grace)
        start = time.monotonic()
        while not self.idle() and time.monotonic() - start < grace and not self._hurry.is_set():
            await asyncio.sleep(0.05)
        if self.service is not None and not self.service.batcher.idle():
            state = self.batcher_state()
            log.warning("grace period over: %d waiting and %d generating requests get 503", state["waiting"],
                        state["generating"])
            self.service.batcher.close("the server is shutting down (its grace period ran out); retry elsewhere")
        deadline = time.monotonic() + ANSWER_SECONDS
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("drained in %.1f s", time.monotonic() - start)

    def hurry(self) -> None:
        """A second signal while draining: the grace period ends now."""
        self._hurry.set()
