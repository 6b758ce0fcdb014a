"""Dynamic batching: requests arriving together are explained in one ``Explainer.explain`` call.

The model is not thread-safe, so one worker thread runs one explain call at a time, off the event loop (the server
keeps answering ``/healthz`` and queueing requests meanwhile). A collector task on the event loop takes the oldest
waiting request, gives others up to ``max_wait_ms`` (counted from that request's arrival) to join it, and sends up
to ``max_batch`` requests with the *same generation settings* to the worker. Greedy requests share a batch
regardless of seed/temperature/top_p (unused by greedy decoding, whose text does not depend on the batch); a
sampled request runs alone, so that its seed reproduces its text.

Only waiting requests count against ``queue``: a full queue refuses new ones (:class:`QueueFull`, the API's 429).
A request whose client leaves or whose time runs out is cancelled: dropped from the queue if it has not started,
its result discarded if it has; a running batch all of whose requests are gone is stopped at the next token.

Draining (SIGTERM): the server stops taking requests and waits for :meth:`Batcher.idle`; when the grace period
runs out, :meth:`Batcher.close` fails every waiting and running request with :class:`Unavailable` (the API's 503)
and the running batch stops at its next token.

Every batch carries a :class:`~explainrec.serve.streamer.BatchStreamer` (except with beam search, which
``generate`` cannot stream): it streams the text to the requests that asked for it and counts every request's
tokens, finish reason and time to first token into ``Job.counts``.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from explainrec.serve.streamer import BatchAbandoned, BatchStreamer, RowCount

_ids = itertools.count()


class QueueFull(RuntimeError):
    """No room for the request(s); ``retry_after`` is a guess in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class Unavailable(RuntimeError):
    """The server is draining or stopping: the request was not (or will not be) answered; retry elsewhere."""


@dataclass(eq=False)
class Job:
    """One pair waiting for (or being) generated; ``future`` gets its row, ``stream`` its text as it grows."""

    pair: Any
    generation: Any  # GenerationConfig
    stream: asyncio.Queue | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    batch_size: int = 0
    cancelled: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    future: asyncio.Future | None = None
    counts: RowCount = field(default_factory=RowCount)

    @property
    def key(self) -> tuple:
        """Requests with equal keys may share a batch (see the module docstring)."""
        g = self.generation.to_dict()
        g.pop("batch_size", None)
        if g.get("do_sample"):
            return ("sampled", self.id)
        for unused in ("temperature", "top_p", "seed"):
            g.pop(unused, None)
        return tuple(sorted(g.items()))


END = object()  # put on a job's stream after its last text piece
STARTED = object()  # put on a job's stream when its batch starts generating


class Batcher:
    """Gathers :class:`Job` s into batched explain calls on one worker thread (see the module docstring)."""

    def __init__(self, explainer, *, max_batch: int = 16, max_wait_ms: float = 20.0, queue: int = 64,
                 on_batch: Callable[[list[Job], bool], None] | None = None):
        """``on_batch(batch, answered)`` is called on the event loop after every explain call (metrics)."""
        self.explainer = explainer
        self.on_batch = on_batch
        self.closed = False
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue = queue
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.batches = 0
        self.explained = 0
        self.batch_seconds = 1.0  # running mean of an explain call's time, for Retry-After
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explainrec-generate")
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._eos = _eos_ids(explainer)
        self._pad = getattr(getattr(explainer, "tokenizer", None), "pad_token_id", None)

    # ------------------------------------------------------------------ requests

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of ``jobs`` or none (:class:`QueueFull`, :class:`Unavailable` once closed); each gets a future
        on the running loop."""
        if self.closed:
            raise Unavailable("the server is shutting down")
        self._ensure_running()
        if len(self.waiting) + len(jobs) > self.queue:
            raise QueueFull(self.retry_after())
        for job in jobs:
            job.future = self._loop.create_future()
            self.waiting.append(job)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        """The client left or timed out: free its place in the queue (a running job's result is discarded)."""
        job.cancelled = True
        try:
            self.waiting.remove(job)
        except ValueError:
            pass  # already started (or finished)
        if job.future is not None and not job.future.done():
            job.future.cancel()

    def idle(self) -> bool:
        """Nothing waiting and nothing generating."""
        return not self.waiting and not self.running

    def close(self, reason: str) -> None:
        """Refuse new jobs; fail every waiting and running one with :class:`Unavailable` (the running batch stops at
        its next token, as nobody is left to read it)."""
        self.closed = True
        for job in [*self.waiting, *self.running]:
            job.cancelled = True
            if job.future is not None and not job.future.done():
                job.future.set_exception(Unavailable(reason))
            if job.stream is not None:
                job.stream.put_nowait(END)
        self.waiting.clear()

    def retry_after(self) -> int:
        batches_ahead = len(self.waiting) / self.max_batch + 1
        return max(1, min(60, math.ceil(self.batch_seconds * batches_ahead)))

    # ------------------------------------------------------------------ lifecycle

    def _ensure_running(self) -> None:
        """Start the collector on the current event loop (again, if an earlier loop has gone)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._collect(), name="explainrec-batcher")

    async def start(self) -> None:
        self._ensure_running()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job in list(self.waiting):
            self.cancel(job)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the collector

    async def _collect(self) -> None:
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self.waiting[0]
            same = [j for j in self.waiting if j.key == first.key]
            wait = first.enqueued + self.max_wait - time.perf_counter()
            if len(same) < self.max_batch and wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                continue  # look again: more may have come, the first may have gone
            batch = same[: self.max_batch]
            for job in batch:
                self.waiting.remove(job)
            await self._run(batch)

    async def _run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.started, job.batch_size = start, len(batch)
            if job.stream is not None:
                job.stream.put_nowait(STARTED)
        self.running = batch
        try:
            rows = await self._loop.run_in_executor(self._executor, self._explain, batch)
            error = None
        except BatchAbandoned:
            rows, error = None, None
        except Exception as err:  # noqa: BLE001 -- reported to every request of the batch
            rows, error = None, err
        finally:
            self.running = []
        end = time.perf_counter()
        self.batches += 1
        self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (end - start) if self.batches > 1 else end - start
        for i, job in enumerate(batch):
            job.finished = end
            if job.stream is not None:
                job.stream.put_nowait(END)
            if job.future is None or job.future.done():
                continue
            if rows is not None:
                job.future.set_result(rows[i])
                self.explained += 1
            else:
                job.future.set_exception(error or BatchAbandoned("cancelled"))
        if self.on_batch is not None:
            self.on_batch(batch, rows is not None)

    def _explain(self, batch: list[Job]) -> list[dict]:
        """In the worker thread: one explain call with a streamer that feeds each job's stream."""
        generation = batch[0].generation
        streamer_for = None
        if generation.num_beams == 1:  # generate refuses a streamer with beam search
            streamer_for = self._streamer_for(batch)
        return self.explainer.explain([j.pair for j in batch], generation, streamer_for=streamer_for)

    def _streamer_for(self, batch: list[Job]) -> Callable:
        loop = self._loop
        tokenizer = self.explainer.tokenizer

        def sink(job: Job):
            if job.stream is None:
                return None
            return lambda text: loop.call_soon_threadsafe(job.stream.put_nowait, text)

        def make(index) -> BatchStreamer:
            rows = [batch[int(i)] for i in index.tolist()]
            return BatchStreamer(tokenizer, [sink(j) for j in rows], self._eos,
                                 abandoned=lambda: all(j.cancelled for j in rows), counts=[j.counts for j in rows],
                                 pad_id=self._pad)

        return make

    # ------------------------------------------------------------------ state

    def state(self) -> dict:
        return {"waiting": len(self.waiting), "generating": len(self.running), "batches": self.batches,
                "explained": self.explained}


def _eos_ids(explainer) -> set[int]:
    """The ids that end a text (what generate stops on), so the streamer stops a row there too."""
    ids: set[int] = set()
    llm = getattr(explainer, "llm", None)
    values = [getattr(getattr(llm, "generation_config", None), "eos_token_id", None),
              getattr(getattr(explainer, "tokenizer", None), "eos_token_id", None)]
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids
