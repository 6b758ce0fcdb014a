"""The rating page in a real browser (Debian's headless Chromium via Playwright) against a real server
(explainrec rate in a subprocess): three pairs rated with the keyboard only, the criteria opened with "?", a reload
mid-study that finds its place again, every rating in the file under the right method, nothing fetched from
another host, and a screenshot. Skipped with the reason where Chromium or Playwright is missing."""
from __future__ import annotations

import struct

import pytest
from rate_helpers import rating_server
from rating_page import browser_missing, rate_with_keyboard

from explainrec.rate import create_study
from explainrec.rate.ratings import read_ratings

pytestmark = [pytest.mark.browser, pytest.mark.skipif(browser_missing() is not None,
                                                      reason=browser_missing() or "")]

TYPED = [[("4.5", "4", "5"), ("2", "3.5", "1"), ("3", "5", "4.5")],
         [("1", "1.5", "2"), ("5", "5", "5"), ("3.5", "2.5", "4")],
         [("4", "4", "4"), ("2.5", "3", "3"), ("1", "2", "1.5")]]


def test_three_pairs_rated_with_the_keyboard_and_a_reload_mid_study(tmp_path, files, data):
    study = create_study(tmp_path / "study", files, n_pairs=3, seed=0, dataset=data)
    shot = tmp_path / "rate-page.png"
    with rating_server(study.folder) as (base, _process):
        shown = rate_with_keyboard(base, shot, name="alice", ratings=TYPED, reload_after=2, back_at=2, shot_at=1)
    assert shown["pairs"] == ["Pair 1 of 3:", "Pair 2 of 3:", "Pair 3 of 3:"]
    assert shown["after_reload"] == {"label": "Pair 3 of 3:", "progress": "pair 3 of 3 · 2 of 3 rated",
                                     "draft": "2"}  # the unsaved score typed before the reload is still there
    # Alt+Left went back to pair 2 (the page stayed, no browser history step) with its saved scores in place
    assert shown["went_back_to"]["label"] == "Pair 2 of 3:" and shown["went_back_to"]["url"] == base + "/"
    assert shown["went_back_to"]["shown"] == [str(float(v)).removesuffix(".0") for t in TYPED[1] for v in t]
    assert "Personalization (P)" in shown["criteria"] and "Text is unclear, incoherent" in shown["criteria"]
    assert "All pairs rated" in shown["finished"] and shown["progress"] == "3 of 3 rated"
    assert shown["explanations"] == study.shown(2)  # the pair's texts, in the study's order for it
    ratings = read_ratings(study)
    assert ratings.problems == [] and [r["pair"] for r in ratings.records] == [0, 1, 1, 2]  # pair 2 saved twice
    assert ratings.records[1]["scores"] == ratings.records[2]["scores"]
    for record, typed in zip([ratings.records[i] for i in (0, 1, 3)], TYPED):
        order = study.pairs[record["pair"]]["order"]
        for slot, triple in enumerate(typed):
            assert record["scores"][order[slot]] == dict(zip("PQU", map(float, triple)))
    assert shown["requested"] and all(url.startswith(base + "/") for url in shown["requested"]), shown["requested"]
    assert shown["console_errors"] == []
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24])[0] >= 1000
