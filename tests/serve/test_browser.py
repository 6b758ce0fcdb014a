"""The page in a real browser (Debian's headless Chromium via Playwright) against a real server (explainrec serve
in a subprocess, uvicorn on a loopback port, the tiny model): autocomplete offers known ids, the explanation streams
in, the method's facts, the prompt text and the latency are shown, nothing is fetched from another host, and a
screenshot is taken. Skipped with the reason where Chromium or Playwright is missing."""
from __future__ import annotations

import struct

import pytest
from browser_page import browser_missing, explain_on_page
from serve_helpers import running_server

pytestmark = [pytest.mark.browser, pytest.mark.skipif(browser_missing() is not None,
                                                      reason=browser_missing() or "")]


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_the_page_explains_a_pair_in_a_real_browser(gavamoe_run, tmp_path):
    from conftest import SYNTHETIC

    shot = tmp_path / "serve-page.png"
    with running_server(str(gavamoe_run), "--data", SYNTHETIC, "--max-new-tokens", "24",
                        "--no-access-log") as (base, _process):
        shown = explain_on_page(base, shot, user_query="u1", item_query="gadget")
    assert shown["status"] == "done", shown
    assert shown["user"].startswith("u1") and shown["item"].startswith("i")  # chosen from the autocomplete
    assert shown["explanation"].strip() and shown["error"] is None
    growing = sorted({n for n in shown["lengths"] if n})
    assert len(growing) >= 3, shown["lengths"]  # the text appeared piece by piece, as it was generated
    assert "gavamoe" in shown["model_line"]
    assert "cluster" in shown["extras"] and "top experts" in shown["extras"]  # the method's extras, rendered
    assert "batch size" in shown["timing"] and "generation" in shown["timing"]
    assert "title" in shown["prompt"]  # the prompt text taken from --data
    assert shown["requested"] and all(url.startswith(base + "/") for url in shown["requested"]), shown["requested"]
    assert any("/v1/explain/stream" in url for url in shown["requested"])
    assert shown["console_errors"] == []
    width, height = _png_size(shot)
    assert width >= 1000 and height >= 600
