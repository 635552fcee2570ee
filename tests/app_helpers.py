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
