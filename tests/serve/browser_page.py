"""Drive the served page in Debian's headless Chromium through Playwright: pick a pair, explain it, screenshot.

Used by test_browser.py (tiny model) and, as a script, to take docs/serve-page.png from any running server:

    explainrec serve RUN --data DATA --port 8000 &
    python tests/serve/browser_page.py http://127.0.0.1:8000 docs/serve-page.png      # a pair picked from --data
    python tests/serve/browser_page.py http://127.0.0.1:8000 shot.png --user 3 --item 7

Playwright's own browser download cannot be reached here, so it launches /usr/bin/chromium with a fresh profile.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script
from live_server import CHROMIUM, CHROMIUM_ARGS, browser_missing  # noqa: E402,F401 -- browser_missing for the tests

FINISHED = re.compile(r"^(done|failed|stopped)$")

# Records every length of the explanation and every status text, in data-lengths / data-statuses (read back without
# eval, which the page's CSP forbids): a streamed text grows in several steps, a text set at the end in one.
WATCH = """
document.addEventListener("DOMContentLoaded", () => {
  const watch = (id, attr, value) => {
    const el = document.getElementById(id);
    const seen = [];
    new MutationObserver(() => { seen.push(value(el)); el.dataset[attr] = seen.join("|"); })
      .observe(el, { childList: true, characterData: true, subtree: true });
  };
  watch("explanation", "lengths", (el) => el.textContent.length);
  watch("status", "statuses", (el) => el.textContent);
});
"""


@contextmanager
def chromium(width: int = 1100, height: int = 900):
    """A headless Chromium context with a fresh profile; yields ``new_page(base, width=None) -> (page, requested,
    errors)`` (``width``: that page's viewport width, e.g. a phone's 375 px)."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="explainrec-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height}, device_scale_factor=1)

            def new_page(base: str, timeout_s: float = 120.0, width: int | None = None):
                requested: list[str] = []
                errors: list[str] = []
                page = context.new_page()
                if width is not None:
                    page.set_viewport_size({"width": width, "height": height})
                page.add_init_script(WATCH)
                page.set_default_timeout(timeout_s * 1000)
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda err: errors.append(str(err)))
                page.goto(base + "/")
                # Locator waits run outside the page's world: its CSP (no eval) stays on, as for a person.
                page.locator("#model-line").filter(has_text=" on ").wait_for()
                return page, requested, errors

            try:
                yield new_page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def explain(page, user: str | None = None, item: str | None = None) -> dict:
    """Fill the ids (None: keep what is there), press Explain, wait for the end, and return what the page shows."""
    if user is not None:
        page.fill("#user", user)
    if item is not None:
        page.fill("#item", item)
    page.click("#explain")  # the status says "sending..." before the click returns
    page.locator("#status").filter(has_text=FINISHED).wait_for()
    return shown(page)


def set_tokens(page, n: int) -> None:
    """Max new tokens, in the Generation settings (opened if closed)."""
    if page.get_attribute("#settings", "open") is None:
        page.click("#settings summary")
    page.fill("#max_new_tokens", str(n))


def shown(page) -> dict:
    visible = lambda selector: page.is_visible(selector)  # noqa: E731
    return {
        "user": page.input_value("#user"), "item": page.input_value("#item"),
        "status": page.text_content("#status"),
        "statuses": (page.get_attribute("#status", "data-statuses") or "").split("|"),
        "explanation": page.text_content("#explanation"),
        "result_visible": visible("#result"),
        "error": page.text_content("#error") if visible("#error") else None,
        "cut": page.text_content("#cut") if visible("#cut") else None,
        "ungrounded": visible("#ungrounded"), "cold": visible("#cold"),
        "note": page.text_content("#note") if visible("#note") else None,
        "extras": page.inner_text("#extras"), "timing": page.inner_text("#timing"),
        "prompt": page.inner_text("#prompt"), "prompt_source": page.text_content("#prompt-source"),
        "model_line": page.text_content("#model-line"),
        "lengths": [int(n) for n in (page.get_attribute("#explanation", "data-lengths") or "").split("|") if n],
    }


def choose(page, field: str, query: str) -> str:
    """Type ``query`` into the field and take the first id the autocomplete offers."""
    page.click(f"#{field}")
    page.fill(f"#{field}", "")
    page.type(f"#{field}", query, delay=40)
    answered = page.locator(f'#{field}-options[data-query="{query}"] option').first  # the answer to all of it
    answered.wait_for(state="attached")
    return answered.get_attribute("value")


def screenshot(page, path: Path) -> None:
    page.mouse.click(5, 5)  # no focus ring in the picture
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the server's address, e.g. http://127.0.0.1:8000")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--user", help="a user id (default: Pick a known pair)")
    parser.add_argument("--item", help="an item id (default: Pick a known pair)")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    with chromium() as new_page:
        page, _, _ = new_page(args.base.rstrip("/"), timeout_s=args.timeout_s)
        if args.user is None or args.item is None:
            page.click("#pick")
            page.locator("#status").filter(has_text="picked").wait_for()
        result = explain(page, args.user, args.item)
        screenshot(page, args.out)
    for key in ("user", "item", "status", "explanation", "extras", "timing"):
        print(f"{key}: {result[key]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
