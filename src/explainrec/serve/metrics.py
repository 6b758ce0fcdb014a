"""Prometheus metrics of one server (``GET /metrics``, through ``prometheus-client``: the text format, or OpenMetrics
when the scraper's ``Accept`` header asks for it).

Names follow vLLM's OpenAI-compatible server where the quantity is the same (``num_requests_waiting``,
``time_to_first_token_seconds``, ``prompt_tokens_total``, ``generation_tokens_total``, ``request_success_total``
with a ``finished_reason`` label), with the ``explainrec_`` prefix; HTTP traffic is counted by route template
(``/v1/explain``, never the raw path, so a scan of random URLs cannot grow the label set) and status.
Each app has its own registry, so several apps in one process (the tests) do not share counters.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from explainrec.serve.schemas import PHASES

# Seconds: from a fast tiny-model answer (ms) to a loaded CPU batch of long texts (tens of s).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's counters, gauges and histograms; ``render(accept)`` is the answer of ``/metrics``."""

    def __init__(self, state: Callable[[], dict], phase: Callable[[], str]):
        """``state()`` gives the batcher's ``waiting`` / ``generating`` counts, ``phase()`` the server's phase."""
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter("explainrec_http_requests", "HTTP requests answered, by route template and "
                                     "status", ["route", "status"], registry=r)
        self.http_duration = Histogram("explainrec_http_request_duration_seconds", "From a request's arrival to the "
                                       "last byte of its answer (a stream: to its last event)", ["route"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.waiting = Gauge("explainrec_num_requests_waiting", "Pairs queued for a batch", registry=r)
        self.running = Gauge("explainrec_num_requests_running", "Pairs in the batch generating now", registry=r)
        self.waiting.set_function(lambda: state()["waiting"])
        self.running.set_function(lambda: state()["generating"])
        self.phase = Enum("explainrec_server_state", "loading, ready or draining", states=list(PHASES), registry=r)
        self.phase.state(phase())
        self._phase = phase
        self.batch_size = Histogram("explainrec_batch_size", "Pairs generated together in one explain call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_time = Histogram("explainrec_request_queue_time_seconds", "From a pair's arrival to the start of "
                                    "its batch", buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("explainrec_time_to_first_token_seconds", "From a pair's arrival to its first "
                                     "generated token", buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("explainrec_e2e_request_latency_seconds", "From a pair's arrival to the end of its "
                             "generation", buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("explainrec_prompt_tokens", "Prompt tokens read by the model", registry=r)
        self.generation_tokens = Counter("explainrec_generation_tokens", "Tokens generated (the eos included)",
                                         registry=r)
        self.success = Counter("explainrec_request_success", "Pairs explained, by why the text ended (stop: the "
                               "model ended it; length: cut at max_new_tokens; unknown: beam search)",
                               ["finished_reason"], registry=r)
        self.info = Info("explainrec_build", "What is served", registry=r)

    def describe(self, **info: str) -> None:
        self.info.info({k: str(v) for k, v in info.items()})

    def request(self, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, str(status)).inc()
        self.http_duration.labels(route).observe(seconds)

    def batch(self, jobs: list, answered: bool) -> None:
        """One explain call has ended (``answered``: it produced texts; else it was abandoned or failed)."""
        self.batch_size.observe(len(jobs))
        for job in jobs:
            counts = job.counts
            self.queue_time.observe(job.started - job.enqueued)
            if counts.first_token_at is not None:
                self.first_token.observe(counts.first_token_at - job.enqueued)
            self.generation_tokens.inc(counts.new_tokens)
            if counts.prompt_tokens is not None:
                self.prompt_tokens.inc(counts.prompt_tokens)
            if answered:
                self.e2e.observe(job.finished - job.enqueued)
                self.success.labels(finish_reason(counts) or "unknown").inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """``(body, content type)`` in the format the scraper accepts."""
        self.phase.state(self._phase())
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def finish_reason(counts) -> str | None:
    """``stop`` / ``length`` from a job's :class:`~explainrec.serve.streamer.RowCount`; None when uncounted."""
    if not counts.counted:
        return None
    return "stop" if counts.stopped else "length"
