"""Drive the rating page in Debian's headless Chromium through Playwright, with the keyboard only: sign in, open
the criteria, rate pairs, reload mid-study, take a screenshot.

Used by test_rate_browser.py (a synthetic study) and, as a script, to take docs/human-evaluation-page.png from any
running study:

    explainrec rate --study STUDY --port 8010 &
    python tests/rate/rating_page.py http://127.0.0.1:8010 docs/human-evaluation-page.png

Playwright's own browser download cannot be reached here, so it launches /usr/bin/chromium with a fresh profile
(as tests/serve/browser_page.py does).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script
from live_server import CHROMIUM, CHROMIUM_ARGS, browser_missing  # noqa: E402,F401 -- browser_missing for the tests

DIMS = ("P", "Q", "U")


def rate_with_keyboard(base: str, screenshot: Path, *, name: str, ratings: list[list[tuple[str, str, str]]],
                       reload_after: int | None = None, back_at: int | None = None, shot_at: int = 0, width: int = 1200,
                       timeout_s: float = 60.0) -> dict:
    """Sign in as ``name`` and rate ``len(ratings)`` pairs: ``ratings[i][slot] = (P, Q, U)`` as typed. Before the
    first pair's scores it opens the criteria with "?" and closes them with Escape; after ``reload_after`` pairs
    it types one score and reloads the page; on pair ``back_at`` it first goes back a pair (Alt+Left), reads what is shown there and
    saves it again with Enter; the screenshot is taken on pair ``shot_at`` once its scores are typed, before saving.
    Returns what the page showed along the way and every URL it requested."""
    from playwright.sync_api import expect, sync_playwright

    profile = tempfile.mkdtemp(prefix="explainrec-chromium-")
    requested: list[str] = []
    console_errors: list[str] = []
    seen: dict = {"pairs": [], "focus_on_first_score": []}
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": 900}, device_scale_factor=1)
            try:
                page = context.new_page()
                page.set_default_timeout(timeout_s * 1000)
                expect.set_options(timeout=timeout_s * 1000)
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda err: console_errors.append(str(err)))
                page.goto(base + "/")
                expect(page.locator("#as")).to_be_focused()
                page.keyboard.type(name)
                page.keyboard.press("Enter")
                for i, pair_scores in enumerate(ratings):
                    if reload_after is not None and i == reload_after:
                        expect(page.locator("#score-0-P")).to_be_focused()
                        page.keyboard.type("2")  # typed, not saved: kept as a draft across the reload
                        page.reload()
                        seen["after_reload"] = {"label": _label(page), "progress": _progress(page),
                                                "draft": page.input_value("#score-0-P")}
                    if i == back_at:
                        expect(page.locator("#score-0-P")).to_be_focused()
                        here = _label(page)
                        page.keyboard.press("Alt+ArrowLeft")
                        expect(page.locator("#pair-label")).not_to_have_text(here)
                        seen["went_back_to"] = {"label": _label(page), "url": page.url,
                                                "shown": [page.input_value(f"#score-{s}-{d}")
                                                          for s in range(len(pair_scores)) for d in DIMS]}
                        page.keyboard.press("Enter")  # saved again as it was: a revision line
                        expect(page.locator("#pair-label")).not_to_have_text(seen["went_back_to"]["label"])
                    label = _label(page)
                    seen["pairs"].append(label)
                    expect(page.locator("#score-0-P")).to_be_focused()
                    if i == 0:
                        page.keyboard.press("?")
                        expect(page.locator("#criteria")).to_be_visible()
                        seen["criteria"] = page.inner_text("#criteria-body")
                        page.keyboard.press("Escape")
                        expect(page.locator("#criteria")).to_be_hidden()
                        expect(page.locator("#score-0-P")).to_be_focused()
                    seen["explanations"] = [page.text_content(f"#text-{s}") for s in range(len(pair_scores))]
                    for slot, triple in enumerate(pair_scores):
                        for j, value in enumerate(triple):
                            page.keyboard.press("Control+A")  # a draft kept from before a reload is replaced
                            page.keyboard.type(value)
                            if (slot, j) != (len(pair_scores) - 1, len(triple) - 1):
                                page.keyboard.press("Tab")
                    if i == shot_at:
                        screenshot.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(screenshot), full_page=True)
                    current = page.text_content("#status").removeprefix("showing pair ")
                    page.keyboard.press("Enter")
                    moved_on = re.compile(rf"^(showing pair (?!{current}$)\d+|all pairs rated)$")
                    expect(page.locator("#status")).to_have_text(moved_on)  # saved, and the next view is up
                if not page.locator("#finished").is_hidden():
                    seen["finished"] = page.inner_text("#finished")
                seen["progress"] = _progress(page)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return {**seen, "requested": requested, "console_errors": console_errors}


def _label(page) -> str:
    from playwright.sync_api import expect

    expect(page.locator("#rating")).to_be_visible()
    return page.text_content("#pair-label")


def _progress(page) -> str:
    return page.text_content("#progress-text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the page's address, e.g. http://127.0.0.1:8010")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--name", default="screenshot", help="the rater to sign in as")
    parser.add_argument("--scores", default="4.5,4,4;2,4.5,3;3.5,1.5,2",
                        help="what to type on the first pair: P,Q,U per explanation, ';' between them")
    args = parser.parse_args()
    typed = [tuple(t.split(",")) for t in args.scores.split(";")]
    shown = rate_with_keyboard(args.base.rstrip("/"), args.out, name=args.name, ratings=[typed], shot_at=0)
    print(f"pair: {shown['pairs'][0]}; progress after saving: {shown['progress']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
