"""`explainrec serve` on the command line: bad options are one-line usage errors before any model is loaded; a
real server (uvicorn on a loopback port, tiny model) answers, refuses bad input, and stops cleanly on SIGTERM."""
from __future__ import annotations

import json
import signal
import socket
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


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_real_server_answers_and_stops_cleanly(gavamoe_run, monkeypatch):
    from conftest import SYNTHETIC

    monkeypatch.setenv("EXPLAINREC_TEST_KEY", "k-123")
    with running_server(str(gavamoe_run), "--data", SYNTHETIC, "--api-key-env", "EXPLAINREC_TEST_KEY",
                        "--no-access-log") as (base, process):
        key = {"X-API-Key": "k-123"}
        status, body = _post(base + "/v1/explain", b'{"user": "u1", "item": "i1", "max_new_tokens": 5}', key)
        assert status == 200 and body["method"] == "gavamoe" and "cluster" in body["extras"]
        assert _post(base + "/v1/explain", b'{"user": "u1", "item": "i1"}')[0] == 401
        assert _post(base + "/v1/explain", b'{"user": "u1", "item": "i1", "top_p": 3}', key) == (
            422, {"error": "must be <= 1, got 3", "error_type": "validation", "field": "top_p"})
        assert _post(base + "/v1/explain", b"{" * 100_000, key)[0] == 413
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
            assert json.loads(response.read())["explained"] == 1
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal after a clean stop
    assert "Application shutdown complete" in out
    assert "serving gavamoe (tiny, int8" in out and "X-API-Key required" in out
    assert "k-123" not in out  # the key is never printed
