"""Load test of the review app on localhost: 8 browser sessions (Playwright contexts in one
headless Chromium) open cases, switch photos and save marks for 60 s at once.

Asserts no exception page and that every session's marks read back exactly (none lost,
none duplicated, none mixed between reviewers); prints the p95 time from the click on a
photo to its rendered attention overlay. Marked slow; run it with
``python -m pytest -q -m slow tests/test_app_load.py -s`` (figures in app/README.md).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import numpy as np
import pytest
from app_helpers import CHROMIUM_ARGS, ReviewerPage, chromium_path, make_tiny_run, serve_app

from mil_cyto.review.marks import MARKS, marks_path, read_marks

pytest.importorskip("playwright.async_api", reason="playwright not installed: pip install '.[dev]'")
pytestmark = [
    pytest.mark.slow,  # 60 s of load plus the server start and a tiny training run
    pytest.mark.skipif(chromium_path() is None, reason="no chromium: apt-get install -y chromium"),
]

SESSIONS = 8
DURATION_S = 60.0
TARGETS = 8  # the top-8 tiles offered in the marks form


async def _open(browser, url: str, name: str) -> ReviewerPage:
    context = await browser.new_context(viewport={"width": 1400, "height": 1500})
    page = ReviewerPage(await context.new_page(), name)
    await page.open(url)
    return page


async def _work(page: ReviewerPage, seed: int, stop_at: float) -> dict:
    """One session's load: switch to a random photo, save a random mark, until ``stop_at``."""
    rng = random.Random(seed)
    names = await page.photo_names()
    times: list[float] = []
    exceptions = 0
    while time.monotonic() < stop_at:  # bounded: each step has its own timeout
        other = [i for i, name in enumerate(names) if name != page.image]  # a real switch
        times.append(await page.switch_photo(rng.choice(other)))
        await page.save_mark(rng.randrange(TARGETS), rng.choice(MARKS))
        exceptions += await page.exception_shown()
    return {"name": page.reviewer, "times": times, "saved": page.saved, "exceptions": exceptions}


async def _load(url: str) -> tuple[list[dict], float, float]:
    """``(per-session results, seconds to open all sessions, seconds of load)``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            start = time.monotonic()
            pages = await asyncio.gather(
                *(_open(browser, url, f"reviewer{i}") for i in range(SESSIONS))
            )
            opened = time.monotonic()
            results = await asyncio.gather(
                *(_work(page, i, opened + DURATION_S) for i, page in enumerate(pages))
            )
            return list(results), opened - start, time.monotonic() - opened
        finally:
            await browser.close()


def test_eight_sessions_for_a_minute(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    with serve_app(run) as url:
        results, open_s, load_s = asyncio.run(_load(url))
    marks = read_marks(marks_path(run))
    times = np.concatenate([r["times"] for r in results])
    saves = sum(len(r["times"]) for r in results)
    print(
        f"\n{SESSIONS} sessions opened in {open_s:.0f} s, then {load_s:.0f} s of load: "
        f"{len(times)} photo "
        f"switches and {saves} saves; click-to-overlay p50 {np.percentile(times, 50):.2f} s, "
        f"p95 {np.percentile(times, 95):.2f} s, max {times.max():.2f} s; {len(marks)} marks "
        "in the file"
    )
    assert sum(r["exceptions"] for r in results) == 0
    assert all(r["times"] for r in results)
    assert len({m.key for m in marks}) == len(marks)  # none duplicated
    for r in results:  # every session's marks read back, as it saved them last
        got = {(m.image, m.x0, m.y0): m.mark for m in marks if m.reviewer == r["name"]}
        assert got == r["saved"], r["name"]
    assert len(marks) == sum(len(r["saved"]) for r in results)  # nothing else, nothing mixed
