"""Helpers of the review-app tests: a tiny trained run folder, and the app served on a free
localhost port (for the browser test and the docs screenshot)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FAST = ["--epochs", "1", "--quiet", "--tile-size", "48", "--stride", "48", "--threads", "2"]

REPO = Path(__file__).resolve().parents[1]
VIEWER = REPO / "app" / "viewer.py"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_app(run: Path, *, timeout: float = 120.0) -> Iterator[str]:
    """Run ``streamlit run app/viewer.py -- --run RUN`` and yield its URL once healthy."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [
        sys.executable, "-m", "streamlit", "run", str(VIEWER),
        "--server.headless", "true",
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--", "--run", str(run),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited: {process.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on {url} in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_tiny_run(root: Path, *, n_images: int = 30) -> Path:
    """Train 1 epoch on ``n_images`` small synthetic photos (with cells.csv); return the run
    folder ``root/runs/tiny`` (about 10 s on 2 cores)."""
    from mil_cyto.data.synthetic import SynthConfig, generate_dataset
    from mil_cyto.train import main

    config = SynthConfig(
        n_images=n_images, seed=3, width=256, height=192, images_per_patient=(2, 3)
    )
    data = generate_dataset(root / "data", config, workers=1, progress=False)
    run = root / "runs" / "tiny"
    if main(["--data", str(data), "--out", str(run), *FAST]) != 0:
        raise RuntimeError("training the tiny run failed")
    return run


def browse_app(url: str, shots: Path, *, first_ms: int = 180_000, step_ms: int = 60_000) -> dict:
    """Drive the served app in headless Chromium: open it, pick the last photo of the list,
    wait for its attention overlay, open the run summary and read the metrics table.

    Saves ``shots/photo.png`` and ``shots/summary.png``; returns what it saw (the photo
    chosen, the overlay's natural width in px, the metrics table's text).
    """
    import shutil
    import time

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    shots.mkdir(parents=True, exist_ok=True)
    seen: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(url)
            overlay = page.get_by_test_id("stImage").filter(has_text="attention (rank) overlay")
            overlay.first.wait_for(timeout=first_ms)
            page.set_default_timeout(step_ms)
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_test_id("stSelectbox").filter(has_text="photo").click()
            option = page.get_by_role("option").last
            seen["photo"] = option.inner_text().split(" (")[0].strip()
            option.click()
            page.get_by_role("heading", name=seen["photo"]).wait_for()
            image = overlay.first.locator("img")
            # Streamlit may swap the <img> for a new one while the photo re-renders: poll
            # through the locator (re-resolved each time) until the current one has loaded
            deadline = time.monotonic() + step_ms / 1000
            width = 0
            while not width and time.monotonic() < deadline:
                width = image.evaluate("(el) => (el.complete ? el.naturalWidth : 0)")
                if not width:
                    page.wait_for_timeout(200)
            seen["overlay_width"] = width
            page.mouse.wheel(0, -5000)
            page.screenshot(path=str(shots / "photo.png"))
            sidebar.get_by_text("Run summary", exact=True).click()
            table = page.get_by_test_id("stTable").first
            table.wait_for()
            seen["metrics_table"] = table.inner_text()
            page.screenshot(path=str(shots / "summary.png"))
        finally:
            browser.close()
    return seen
