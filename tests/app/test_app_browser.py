"""The review app in a real browser: served on localhost, driven by Playwright in Debian's
headless Chromium (Playwright cannot download its own browser here)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from app_helpers import (
    CHROMIUM_ARGS,
    ReviewerPage,
    browse_app,
    chromium_path,
    make_tiny_run,
    serve_app,
)

from mil_cyto.review.marks import marks_path, read_marks

pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install '.[dev]'")
pytestmark = [
    pytest.mark.slow,  # about 30 s idle (server start, torch import, first render); .ci/run runs it
    pytest.mark.skipif(
        shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
        reason="no chromium executable: apt-get install -y chromium",
    ),
]


def test_browser_opens_photo_overlay_and_metrics(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    with serve_app(run) as url:
        seen = browse_app(url, tmp_path / "shots")
    assert seen["photo"].startswith("images/")
    assert seen["overlay_width"] > 100  # the overlay image really loaded
    table = seen["metrics_table"]
    assert "sensitivity" in table and "CIN2+" in table and "mean (macro)" in table
    for name in ("photo.png", "summary.png"):
        assert (tmp_path / "shots" / name).stat().st_size > 10_000


async def _try_to_leave(url: str, outside: Path) -> dict[str, str]:
    """Type paths that leave the root, and craft a ``?run=`` URL; the page text after each."""
    from playwright.async_api import async_playwright

    seen: dict[str, str] = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1500})
            page.set_default_timeout(120_000)
            await page.goto(url)
            await page.get_by_text("Test photos of tiny").wait_for()
            sidebar = page.get_by_test_id("stSidebar")
            await sidebar.get_by_test_id("stSelectbox").filter(has_text="run").first.click()
            seen["offered"] = " | ".join(await page.get_by_role("option").all_inner_texts())
            await page.keyboard.press("Escape")
            box = sidebar.get_by_role("textbox", name="run folder below the root")
            for name, typed, expect in [
                ("dotdot", "../outside/secret", "'..' may not be used"),
                ("symlink", "escape", "symlink that leads outside the runs root"),
                ("absolute", str(outside), "a path outside the runs root"),
            ]:
                await box.fill(typed)
                await box.press("Enter")
                error = page.get_by_test_id("stAlertContentError").filter(has_text=typed)
                await error.filter(has_text=expect).wait_for()
                seen[name] = await page.get_by_test_id("stMain").inner_text()
            await page.goto(f"{url}/?run=..%2Foutside%2Fsecret")  # a crafted link
            await page.get_by_test_id("stAlertContentError").first.wait_for()
            seen["query"] = await page.get_by_test_id("stMain").inner_text()
        finally:
            await browser.close()
    return seen


def test_browser_cannot_leave_the_runs_root(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    outside = tmp_path / "outside" / "secret"
    shutil.copytree(run, outside)
    (run.parent / "escape").symlink_to(outside, target_is_directory=True)
    with serve_app(args=["--runs-root", str(run.parent)]) as url:
        seen = asyncio.run(_try_to_leave(url, outside))
    assert seen["offered"] == "tiny"  # the symlink out is not offered
    assert "'..' may not be used" in seen["dotdot"]
    assert "symlink that leads outside the runs root" in seen["symlink"]
    assert "a path outside the runs root" in seen["absolute"]
    assert "'..' may not be used" in seen["query"]
    for text in seen.values():
        assert "Test photos of secret" not in text


async def _two_reviewers_at_once(url: str) -> list[ReviewerPage]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            sessions = []
            for name in ("ana", "ben"):  # two browser contexts: two separate sessions
                context = await browser.new_context(viewport={"width": 1400, "height": 1500})
                sessions.append(ReviewerPage(await context.new_page(), name))
            await asyncio.gather(*(s.open(url) for s in sessions))
            assert sessions[0].image == sessions[1].image  # the same photo
            await asyncio.gather(
                sessions[0].save_mark(0, "atypical", click=False),
                sessions[1].save_mark(0, "normal", click=False),
            )
            await asyncio.gather(*(s.press_save() for s in sessions))  # the same moment
            assert not any([await s.exception_shown() for s in sessions])
        finally:
            await browser.close()
    return sessions


def test_two_reviewers_saving_the_same_photo_at_once_keep_both(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    with serve_app(run) as url:
        sessions = asyncio.run(_two_reviewers_at_once(url))
    marks = read_marks(marks_path(run))
    assert sorted((m.reviewer, m.mark) for m in marks) == [("ana", "atypical"), ("ben", "normal")]
    assert len({m.key[1:] for m in marks}) == 1  # one box, two reviewers
    for s in sessions:
        ((image, x0, y0),) = s.saved
        assert any((m.reviewer, m.image, m.x0, m.y0) == (s.reviewer, image, x0, y0) for m in marks)
