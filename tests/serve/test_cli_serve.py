"""`explainrec serve` on the command line: bad options are one-line usage errors before any model is loaded; a
real server (uvicorn on a loopback port, tiny model) answers, refuses bad input, times out a stalled body, and
stops cleanly on SIGTERM; its log is one structured line per request (JSON with --log-format json) with no
progress bars, even where loading the model would draw one."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from serve_helpers import free_port, running_server
from typer.testing import CliRunner

from explainrec.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args,message", [
    ([], "serve needs a run folder"),
    (["--method", "pepler"], "unknown method 'pepler'"),
    (["--method", "gavamoe"], "needs a trained run folder"),
    (["RUN", "--model", "tiny"], "drop --model"),
    (["--method", "zero-shot", "--precision", "fp8"], "expected one of auto, fp32, int8"),
    (["--method", "zero-shot", "--api-key-env", "EXPLAINREC_TEST_UNSET_KEY"], "not set or empty"),
    (["--method", "zero-shot", "--max-batch", "0"], "--max-batch"),
    (["--method", "zero-shot", "--port", "70000"], "--port"),
    (["--method", "zero-shot", "--ungrounded", "maybe"], "expected one of explain, refuse"),
    (["--method", "zero-shot", "--log-format", "xml"], "expected one of text, json"),
    (["--method", "zero-shot", "--grace-seconds", "-1"], "--grace-seconds"),
    (["--method", "zero-shot", "--max-body-bytes", "10"], "--max-body-bytes"),
])
def test_bad_options_are_usage_errors(args, message, monkeypatch):
    monkeypatch.delenv("EXPLAINREC_TEST_UNSET_KEY", raising=False)
    result = runner.invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_a_busy_port_is_said_before_loading_anything():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--method", "zero-shot", "--model", "tiny", "--port", str(port)])
    assert result.exit_code == 2 and "cannot listen there" in result.output


def test_a_missing_run_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path / "nothing"), "--port", str(free_port())])
    assert result.exit_code == 1 and "no such folder" in result.output


def _post(url: str, body: bytes, headers: dict | None = None, *, with_headers: bool = False):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        answer = err.code, json.loads(err.read()), err.headers
    return answer if with_headers else answer[:2]


def _stall(base: str, declared: int, sent: bytes) -> bytes:
    """Announce a body of ``declared`` bytes, send ``sent``, and wait for whatever the server answers."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + sent)
        answer = b""
        while chunk := s.recv(4096):  # until the server closes the connection
            answer += chunk
        return answer


def test_a_real_server_answers_and_stops_cleanly(gavamoe_run, monkeypatch):
    from conftest import SYNTHETIC

    monkeypatch.setenv("EXPLAINREC_TEST_KEY", "k-123")
    with running_server(str(gavamoe_run), "--data", SYNTHETIC, "--api-key-env", "EXPLAINREC_TEST_KEY",
                        "--no-access-log", "--body-timeout-s", "1") as (base, process):
        key = {"X-API-Key": "k-123"}
        status, body = _post(base + "/v1/explain", b'{"user": "u1", "item": "i1", "max_new_tokens": 5}', key)
        assert status == 200 and body["method"] == "gavamoe" and "cluster" in body["extras"]
        assert _post(base + "/v1/explain", b'{"user": "u1", "item": "i1"}')[0] == 401
        assert _post(base + "/v1/explain", b'{"user": "u1", "item": "i1", "top_p": 3}', key) == (
            422, {"error": "must be <= 1, got 3", "error_type": "validation", "field": "top_p"})
        assert _post(base + "/v1/explain", b"{" * 100_000, key)[0] == 413
        status, body = _post(base + "/v1/explain", b'{"user": 1, "item": "i1", "max_new_tokens": 5}',
                             {"Authorization": "Bearer k-123"})
        assert status == 200 and body["user"] == "1"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            assert json.loads(response.read())["explained"] == 2
        started = time.monotonic()
        answer = _stall(base, 200, b'{"user": "u1", ')
        assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer, answer
        assert 1.0 <= time.monotonic() - started < 15  # --body-timeout-s 1
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out  # drained, then a clean exit
    assert "Application shutdown complete" in out and "drained in" in out
    assert "serving gavamoe (tiny, int8" in out and "API key required" in out
    assert "k-123" not in out  # the key is never printed


@pytest.fixture(scope="module")
def tiny_hf_folder(tmp_path_factory, zero_shot):
    """The tiny LLaMA saved as a Hugging Face folder: loading it draws transformers' "Loading weights" bar."""
    folder = tmp_path_factory.mktemp("tiny-hf")
    zero_shot.llm.save_pretrained(folder)
    zero_shot.tokenizer.save_pretrained(folder)
    return folder


def test_the_log_is_one_json_line_per_request_and_no_progress_bars(tiny_hf_folder):
    from conftest import SYNTHETIC

    with running_server("--method", "zero-shot", "--model", str(tiny_hf_folder), "--data", SYNTHETIC,
                        "--log-format", "json") as (base, process):
        status, body, headers = _post(base + "/v1/explain", b'{"user": "u1", "item": "i1", "max_new_tokens": 4}',
                                      {"X-Request-Id": "req-7"}, with_headers=True)
        assert status == 200 and headers["X-Request-Id"] == "req-7"
        assert _post(base + "/v1/explain", b'{"user": "u1"}')[0] == 422
        urllib.request.urlopen(base + "/healthz", timeout=5).read()  # a probe: not logged
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert "\r" not in out and "Loading weights" not in out and "it/s" not in out, out  # no progress bars
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    requests = [line for line in lines if line["logger"] == "explainrec.serve.access"]
    assert [(r["route"], r["status"]) for r in requests] == [("/v1/explain", 200), ("/v1/explain", 422)]
    ok = requests[0]
    assert ok["request_id"] == "req-7" and ok["user"] == "u1" and ok["finish"] == "length"
    assert ok["completion_tokens"] == 4 and ok["prompt_tokens"] == body["usage"]["prompt_tokens"] and ok["ms"] > 0
