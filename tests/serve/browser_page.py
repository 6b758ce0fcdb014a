"""Drive the served page in Debian's headless Chromium through Playwright: pick a pair, explain it, screenshot.

Used by test_browser.py (tiny model) and, as a script, to take docs/serve-page.png from any running server:

    explainrec serve RUN --data DATA --port 8000 &
    python tests/serve/browser_page.py http://127.0.0.1:8000 docs/serve-page.png --user u3 --item i7

Playwright's own browser download cannot be reached here, so it launches /usr/bin/chromium with a fresh profile.
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# Records the explanation's length after every change in data-lengths (read back without eval, which the page's
# CSP forbids): a streamed text grows in several steps, a text set at the end in one.
WATCH_TEXT = """
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("explanation");
  const seen = [];
  new MutationObserver(() => { seen.push(el.textContent.length); el.dataset.lengths = seen.join(","); })
    .observe(el, { childList: true, characterData: true, subtree: true });
});
"""


def browser_missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def explain_on_page(base: str, screenshot: Path, *, user: str | None = None, item: str | None = None,
                    user_query: str = "u1", item_query: str = "i", timeout_s: float = 120.0,
                    width: int = 1100) -> dict:
    """Open the page, choose a user and an item through the autocomplete (or the given ids), explain, wait for the
    streamed answer, and take a full-page screenshot. Returns what the page showed and every URL it requested."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="explainrec-chromium-")
    requested: list[str] = []
    console_errors: list[str] = []
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": 900}, device_scale_factor=1)
            try:
                page = context.new_page()
                page.add_init_script(WATCH_TEXT)
                page.set_default_timeout(timeout_s * 1000)
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda err: console_errors.append(str(err)))
                page.goto(base + "/")
                # Locator waits run outside the page's world: its CSP (no eval) stays on, as for a person.
                page.locator("#model-line").filter(has_text=" on ").wait_for()
                user = user or _choose(page, "user", user_query)
                item = item or _choose(page, "item", item_query)
                page.fill("#user", user)
                page.fill("#item", item)
                page.click("#explain")
                page.locator("#status").filter(has_text=re.compile(r"^(done|failed)$")).wait_for()
                shown = {
                    "user": user, "item": item,
                    "status": page.text_content("#status"),
                    "explanation": page.text_content("#explanation"),
                    "error": page.text_content("#error") if page.is_visible("#error") else None,
                    "extras": page.inner_text("#extras"),
                    "timing": page.inner_text("#timing"),
                    "prompt": page.inner_text("#prompt"),
                    "model_line": page.text_content("#model-line"),
                    "lengths": [int(n) for n in (page.get_attribute("#explanation", "data-lengths") or "").split(",")
                                if n],
                }
                page.mouse.click(5, 5)  # no focus ring in the picture
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return {**shown, "requested": requested, "console_errors": console_errors}


def _choose(page, field: str, query: str) -> str:
    """Type ``query`` into the field and take the first id the autocomplete offers."""
    page.click(f"#{field}")
    page.fill(f"#{field}", "")
    page.type(f"#{field}", query, delay=40)
    answered = page.locator(f'#{field}-options[data-query="{query}"] option').first  # the answer to all of it
    answered.wait_for(state="attached")
    return answered.get_attribute("value")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the server's address, e.g. http://127.0.0.1:8000")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--user")
    parser.add_argument("--item")
    args = parser.parse_args()
    shown = explain_on_page(args.base.rstrip("/"), args.out, user=args.user, item=args.item)
    for key in ("user", "item", "status", "explanation", "extras", "timing"):
        print(f"{key}: {shown[key]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
