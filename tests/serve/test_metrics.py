"""/metrics in Prometheus text format: it parses with prometheus-client's own parser, and its counters match the
requests this test sent (by route and status), the tokens the answers report, the batches generated."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import client_for, sse_events


def _samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted label items): value}`` of a /metrics body."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_the_requests_tokens_and_batches_sent(zero_shot, data):
    with client_for(zero_shot, data) as c:
        singles = [c.post("/v1/explain", json={"user": f"u{n}", "item": "i1", "max_new_tokens": 3}).json()
                   for n in range(3)]
        batch = c.post("/v1/explain/batch", json={"pairs": [{"user": "u1", "item": "i2"}, {"user": "u2", "item": "i3"}],
                                                  "max_new_tokens": 4}).json()["results"]
        stream = sse_events(c.post("/v1/explain/stream", json={"user": "u3", "item": "i1", "max_new_tokens": 5}).text)
        refused = [c.post("/v1/explain", json={"user": "u1"}).status_code for _ in range(2)]
        missing = [c.get("/v1/nothing").status_code, c.get("/no/such/page").status_code]
        c.get("/healthz")
        r = c.get("/metrics")
        c_openmetrics = c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert c_openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    m = _samples(r.text)

    def http(route: str, status: int) -> float:
        return m.get(("explainrec_http_requests_total", (("route", route), ("status", str(status)))), 0.0)

    assert refused == [422, 422] and missing == [404, 404]
    assert http("/v1/explain", 200) == 3 and http("/v1/explain", 422) == 2
    assert http("/v1/explain/batch", 200) == 1 and http("/v1/explain/stream", 200) == 1
    assert http("unmatched", 404) == 2 and http("/healthz", 200) == 1
    assert m[("explainrec_http_request_duration_seconds_count", (("route", "/v1/explain"),))] == 5
    answers = [*singles, *batch, stream[-1][1]]
    assert m[("explainrec_generation_tokens_total", ())] == sum(a["usage"]["completion_tokens"] for a in answers) == 22
    assert m[("explainrec_prompt_tokens_total", ())] == sum(a["usage"]["prompt_tokens"] for a in answers)
    assert m[("explainrec_request_success_total", (("finished_reason", "length"),))] == 6
    assert m[("explainrec_batch_size_count", ())] == 5 and m[("explainrec_batch_size_sum", ())] == 6
    assert m[("explainrec_time_to_first_token_seconds_count", ())] == 6
    assert m[("explainrec_num_requests_waiting", ())] == 0 and m[("explainrec_num_requests_running", ())] == 0
    assert m[("explainrec_server_state", (("explainrec_server_state", "ready"),))] == 1
    assert m[("explainrec_build_info", (("method", "zero-shot"), ("precision", "fp32"),
                                        ("version", __import__("explainrec").__version__)))] == 1
