"""The page in a real browser (Debian's headless Chromium via Playwright) against a real server (explainrec serve
in a subprocess, a tiny GaVaMoE trained on XRec-format data with numeric ids, as XRec's own): a known pair is picked
from the data, its status goes queued -> generating -> done from the stream's events, the text streams in and is
marked when cut at the token limit, the method's facts, tokens and request id are shown; an error and the last
answer are cleared by the next request; a pair nothing is known about is marked and can be described in text; Stop
ends the stream and the server stops generating for it; the page fits a 375 px phone; nothing is fetched from
another host. Skipped with the reason where Chromium or Playwright is missing."""
from __future__ import annotations

import json
import re
import struct
import time
import urllib.request

import pytest
from browser_page import browser_missing, chromium, explain, screenshot, set_tokens, shown
from serve_helpers import running_server

pytestmark = [pytest.mark.browser, pytest.mark.skipif(browser_missing() is not None,
                                                      reason=browser_missing() or "")]
LONG = 260  # tokens: the tiny model writes them for a second or two (its prompts take ~220 of its 512 positions)


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def write_xrec(dataset, folder):
    """``dataset`` as an XRec folder (explanations.jsonl + interactions.csv) with numeric ids, as XRec has them."""
    number = lambda raw: int(raw.lstrip("ui"))  # noqa: E731 -- u12 -> 12, i7 -> 7
    folder.mkdir(parents=True, exist_ok=True)
    users, items = dataset.users.raw, dataset.items.raw
    with open(folder / "explanations.jsonl", "w") as f:
        for e in dataset.examples:
            f.write(json.dumps({"user": number(users[e.user]), "item": number(items[e.item]), "title": e.title,
                                "user_profile": e.user_profile, "item_profile": e.item_profile,
                                "explanation": e.explanation, "split": e.split}) + "\n")
    g = dataset.interactions
    lines = [f"{number(users[u])},{number(items[i])},{s}" for u, i, s in zip(g.user, g.item, g.split)]
    (folder / "interactions.csv").write_text("user,item,split\n" + "\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def xrec_folder(tmp_path_factory, data):
    return write_xrec(data, tmp_path_factory.mktemp("xrec") / "synthetic-xrec")


@pytest.fixture(scope="module")
def xrec_run(tmp_path_factory, xrec_folder):
    from explainrec.data import load_dataset
    from explainrec.methods import registry
    from explainrec.methods.runs import train_run

    out = tmp_path_factory.mktemp("xrec-run") / "gavamoe"
    method = registry.get("gavamoe")
    train_run(method, load_dataset(str(xrec_folder)), out, method.make_config("tiny"), progress=False,
              echo=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def server(xrec_run, xrec_folder):
    with running_server(str(xrec_run), "--data", str(xrec_folder), "--max-new-tokens", str(LONG),
                        "--no-access-log") as (base, _process):
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as new_page:
        yield new_page


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _tokens_generated(base: str) -> float:
    line = next(x for x in _get(base + "/metrics").splitlines() if x.startswith("explainrec_generation_tokens_total"))
    return float(line.split()[-1])


def test_a_known_pair_streams_in_with_its_status_facts_and_cut_mark(server, browser, xrec_folder, tmp_path):
    from explainrec.data import load_dataset

    page, requested, errors = browser(server)
    set_tokens(page, 24)
    page.click("#pick")
    page.locator("#status").filter(has_text="picked").wait_for()
    result = explain(page)
    found, source = load_dataset(str(xrec_folder)).pair(result["user"], result["item"])
    assert source == "example" and result["user"].isdigit()  # a pair that exists in the data, XRec's numeric ids
    assert result["status"] == "done" and result["explanation"].strip() and result["error"] is None
    statuses = [s for s in result["statuses"] if s]
    queued = next(i for i, s in enumerate(statuses) if s.startswith("queued"))
    generating = next(i for i, s in enumerate(statuses) if s.startswith("generating"))
    assert queued < generating < statuses.index("done"), statuses  # from the stream's meta and start events
    growing = sorted({n for n in result["lengths"] if n})
    assert len(growing) >= 3, result["lengths"]  # the text appeared piece by piece, as it was generated
    assert result["cut"] and "24-token limit" in result["cut"]  # the tiny model never ends a text itself
    assert "cut" in page.get_attribute("#explanation", "class")
    assert "gavamoe" in result["model_line"]
    assert "cluster" in result["extras"] and "top experts" in result["extras"]  # the method's extras, rendered
    assert "batch size" in result["timing"] and "tokens (prompt + text)" in result["timing"]
    assert re.search(r"request id\s+[0-9a-f]{32}", result["timing"])
    assert found.title in result["prompt"]  # the prompt text taken from --data
    assert requested and all(url.startswith(server + "/") for url in requested), requested
    assert any("/v1/explain/stream" in url for url in requested) and any("/v1/pairs/random" in url for url in requested)
    assert errors == []
    shot = tmp_path / "serve-page.png"
    screenshot(page, shot)
    width, height = _png_size(shot)
    assert width >= 1000 and height >= 600
    page.close()


def test_an_error_and_the_last_answer_are_cleared_by_the_next_request(server, browser):
    page, _, errors = browser(server)
    set_tokens(page, 4)
    first = explain(page, "1", "2")
    assert first["status"] == "done" and first["result_visible"]
    page.click("#describe summary")
    page.fill("#features", "x" * 70)  # a feature word over the server's limit (64 characters): 422
    failed = explain(page)
    assert failed["status"] == "failed" and "features.0" in failed["error"]
    assert not failed["result_visible"] and failed["explanation"] == ""  # the old answer went with the new request
    page.fill("#features", "")
    fixed = explain(page)
    assert fixed["status"] == "done" and fixed["error"] is None and fixed["result_visible"]
    assert [e for e in errors if "422" not in e] == []  # the browser logs the refused fetch itself
    page.close()


def test_a_pair_nothing_is_known_about_is_marked_and_can_be_described(server, browser):
    page, _, _ = browser(server)
    set_tokens(page, 4)
    unknown = explain(page, "someone-new", "something-new")
    assert unknown["status"] == "done" and unknown["ungrounded"] and "nothing is known" in unknown["note"]
    page.click("#describe summary")
    page.fill("#user_profile", "Loves waterproof gear for long hikes.")
    page.fill("#title", "Trail Boots")
    page.fill("#features", "leather, grip")
    described = explain(page)
    assert described["status"] == "done" and not described["ungrounded"] and described["cold"]
    assert "Trail Boots" in described["prompt"] and "leather, grip" in described["prompt"]
    assert described["prompt_source"].startswith("from request")
    page.close()


def test_stop_ends_the_stream_and_the_server_stops_generating(server, browser):
    page, _, _ = browser(server)
    set_tokens(page, LONG)
    before = _tokens_generated(server)
    page.fill("#user", "1")
    page.fill("#item", "3")
    page.click("#explain")
    page.locator("#status").filter(has_text="generating").wait_for()
    page.locator("#explanation").filter(has_text=re.compile(r"\S")).wait_for()  # text is arriving
    page.click("#stop")
    page.locator("#status").filter(has_text="stopped").wait_for()
    result = shown(page)
    assert result["error"] is None and page.is_hidden("#stop") and page.is_enabled("#explain")
    deadline = time.monotonic() + 30
    while json.loads(_get(server + "/healthz"))["generating"]:
        assert time.monotonic() < deadline, "the server kept generating"
        time.sleep(0.05)
    generated = _tokens_generated(server) - before
    assert 0 < generated < LONG, generated  # stopped at the next token, not run to the limit
    page.close()


def test_the_page_fits_a_phone(server, browser):
    page, _, _ = browser(server, width=375)
    page.click("#describe summary")
    set_tokens(page, 4)
    for selector in ("#user", "#item", "#explain", "#pick", "#title", "#user_profile", "#max_new_tokens"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, (selector, box)
    for selector in ("#user", "#item", "#user_profile"):
        assert page.locator(selector).bounding_box()["width"] >= 300, selector  # the width of the screen
    assert explain(page, "1", "2")["status"] == "done"
    box = page.locator("#result").bounding_box()
    assert box["x"] + box["width"] <= 375
    page.close()
