"""Helpers of the rating-study tests (a module of its own: test modules cannot import a conftest reliably)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from live_server import serving

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
    /healthz answers."""
    with serving(["rate", "--study", str(study_folder), *args], ready="/healthz", timeout=timeout) as served:
        yield served
