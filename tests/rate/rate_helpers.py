"""Helpers of the rating-study tests (a module of its own: test modules cannot import a conftest reliably)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

SYNTHETIC = "synthetic:users=30,items=25,types=2"
CONSTANT = "A great item that everyone will enjoy."
METHODS = {"reference": lambda t: t, "reversed": lambda t: " ".join(t.split()[::-1]), "constant": lambda t: CONSTANT}


def write_predictions(folder: Path, data, n: int = 12, methods=METHODS) -> dict[str, Path]:
    """One predictions file per method over the first ``n`` test pairs of ``data``; returns name -> path."""
    examples = data.split_examples("test")[:n]
    out = {}
    for name, make in methods.items():
        path = folder / f"{name}.jsonl"
        rows = []
        for e in examples:
            pair = data.pair_of(e)
            rows.append({"user": pair.user, "item": pair.item, "prediction": make(pair.explanation),
                         "reference": pair.explanation, "method": name})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = path
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, body=None, rater: str | None = None) -> tuple[int, dict]:
    """``(status, json)`` of a GET (no body) or POST to a real server."""
    headers = {"Content-Type": "application/json", **({"X-Rater": rater} if rater else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextmanager
def rating_server(study_folder: Path, *args: str, timeout: float = 60.0):
    """``explainrec rate --study FOLDER ARGS --port P`` in a subprocess; yields ``(base_url, process)`` once
    /healthz answers, and stops it (SIGTERM, then SIGKILL) afterwards unless the test already ended it."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "explainrec.cli", "rate", "--study", str(study_folder), *args,
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the rating server did not answer /healthz in time")
            time.sleep(0.2)
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
