"""Helpers of the review-app tests: a tiny trained run folder, and the app served on a free
localhost port (for the browser test and the docs screenshot)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
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
def serve_app(
    run: Path | None = None,
    *,
    args: list[str] | None = None,
    address: str | None = "127.0.0.1",
    timeout: float = 120.0,
) -> Iterator[str]:
    """Run ``streamlit run app/viewer.py -- --run RUN`` (or ``-- ARGS``) from the repository
    root (so ``.streamlit/config.toml`` applies) and yield its URL once healthy.

    ``address``: ``--server.address`` (None leaves it to the project's config file).
    """
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    app_args = args if args is not None else ["--run", str(run)]
    bind = ["--server.address", address] if address is not None else []
    command = [
        sys.executable, "-m", "streamlit", "run", str(VIEWER),
        "--server.headless", "true",
        *bind,
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--", *app_args,
    ]  # fmt: skip
    # a file, not a pipe: a busy server never blocks on a full pipe (closed in `finally`)
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"streamlit exited: {log.read()[-3000:]}")
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
        log.close()


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


def chromium_path() -> str | None:
    """Debian's chromium (Playwright cannot download its own browser here)."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


class ReviewerPage:
    """One browser session of the app (Playwright async API) acting as one reviewer."""

    def __init__(self, page, reviewer: str, *, step_ms: int = 120_000) -> None:
        self.page = page
        self.reviewer = reviewer
        self.step_ms = step_ms
        self.saved: dict[tuple[str, int, int], str] = {}  # (image, x0, y0) -> verdict
        self.image = ""

    @property
    def sidebar(self):
        return self.page.get_by_test_id("stSidebar")

    async def open(self, url: str) -> None:
        """Load the app, wait for the first overlay, type the reviewer's name."""
        self.page.set_default_timeout(self.step_ms)
        await self.page.goto(url)
        await self._overlay_img().first.wait_for()
        box = self.sidebar.get_by_label("reviewer (saved with marks)")
        await box.fill(self.reviewer)
        await box.press("Enter")
        await self.page.get_by_test_id("stForm").wait_for()
        await self.wait_idle()
        self.image = await self._current_photo()

    def _overlay_img(self):
        overlay = self.page.get_by_test_id("stImage").filter(has_text="attention (rank) overlay")
        return overlay.locator("img")

    async def _current_photo(self) -> str:
        heading = self.page.get_by_test_id("stMarkdown").locator("h4").nth(1)
        return (await heading.inner_text()).strip()

    async def photo_names(self) -> list[str]:
        await self.sidebar.get_by_test_id("stSelectbox").filter(has_text="photo").click()
        options = self.page.get_by_role("option")
        names = [t.split(" (")[0].strip() for t in await options.all_inner_texts()]
        await self.page.keyboard.press("Escape")
        return names

    async def switch_photo(self, index: int) -> float:
        """Pick the ``index``-th photo; seconds from the click to its overlay loaded."""
        old_src = await self._overlay_img().first.get_attribute("src")
        await self.sidebar.get_by_test_id("stSelectbox").filter(has_text="photo").click()
        option = self.page.get_by_role("option").nth(index)
        name = (await option.inner_text()).split(" (")[0].strip()
        start = time.monotonic()
        await option.click()
        await self.page.get_by_role("heading", name=name, exact=True).wait_for()
        deadline = start + self.step_ms / 1000
        while time.monotonic() < deadline:  # until the new overlay image has loaded
            img = self._overlay_img().first
            try:
                src = await img.get_attribute("src", timeout=2000)
                ready = await img.evaluate("(el) => el.complete && el.naturalWidth > 0")
            except Exception:  # the <img> was swapped during the rerun: look again
                src, ready = None, False
            if ready and (src != old_src or name == self.image):
                break
            await self.page.wait_for_timeout(50)
        else:
            raise TimeoutError(f"{self.reviewer}: overlay of {name} not shown in time")
        elapsed = time.monotonic() - start
        await self.wait_idle()  # the rest of the page (the marks form) is for this photo now
        self.image = name
        return elapsed

    async def wait_idle(self) -> None:
        """Until the script run has finished (Streamlit's running indicator gone)."""
        running = self.page.get_by_test_id("stStatusWidgetRunningIcon")
        deadline = time.monotonic() + self.step_ms / 1000
        quiet = 0
        while quiet < 3:  # three checks in a row, 100 ms apart, with no run going
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.reviewer}: the page kept running")
            quiet = quiet + 1 if await running.count() == 0 else 0
            await self.page.wait_for_timeout(100)

    async def save_mark(self, target: int, verdict: str, *, click: bool = True) -> None:
        """Choose the ``target``-th tile or cell and a verdict, then press Save mark (or
        leave the press to the caller when ``click`` is False)."""
        form = self.page.get_by_test_id("stForm")
        await form.get_by_test_id("stSelectbox").click()
        option = self.page.get_by_role("option").nth(target)
        label = (await option.inner_text()).strip()
        await option.click()
        await form.get_by_text(verdict, exact=True).click()
        self._pending = (label, verdict)
        if click:
            await self.press_save()

    async def press_save(self) -> None:
        label, verdict = self._pending
        await self.page.get_by_role("button", name="Save mark").click()
        done = f"saved: {label} = {verdict} by {self.reviewer}"
        await self.page.get_by_text(done).wait_for()
        await self.wait_idle()
        if label.startswith("tile"):
            x0, y0 = (int(v) for v in label.rsplit(" at ", 1)[1].split(","))
            self.saved[(self.image, x0, y0)] = verdict

    async def exception_shown(self) -> bool:
        return await self.page.get_by_test_id("stException").count() > 0
