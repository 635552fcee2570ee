"""The review app in a real browser: served on localhost, driven by Playwright in Debian's
headless Chromium (Playwright cannot download its own browser here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_helpers import browse_app, make_tiny_run, serve_app

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
