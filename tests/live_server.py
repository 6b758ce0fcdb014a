"""What the server tests and the rating-page tests share: an explainrec command serving on a free loopback port in a
subprocess, and Debian's Chromium for the browser tests (a module of its own: test modules cannot import a conftest
reliably; tests/ is on sys.path through tests/conftest.py)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_missing() -> str | None:
    """Why a browser test cannot run here (None: it can)."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str], *, ready: str, timeout: float, log=None):
    """``explainrec ARGS --port P`` in a subprocess; yields ``(base_url, process)`` once GET ``ready`` answers 200,
    and stops it (SIGTERM, then SIGKILL) afterwards unless the test already ended it. Its output goes to
    ``process.stdout`` (a pipe), or to the file ``log`` (for servers that log a lot)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = open(log, "w") if log is not None else subprocess.PIPE  # noqa: SIM115 -- closed below
    process = subprocess.Popen([sys.executable, "-m", "explainrec.cli", *args, "--port", str(port)],
                               stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                said = process.stdout.read() if log is None else Path(log).read_text()
                raise AssertionError(f"the server exited with {process.returncode}:\n{said}")
            try:
                with urllib.request.urlopen(base + ready, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:  # not listening yet, or 503 while loading
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer {ready} in time")
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
        if log is not None:
            out.close()
