"""Atomic file and folder writes: a reader never sees a half-written output."""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mil_cyto.errors import MilCytoError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name, created by the writer itself, so the file gets the usual permissions
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"))
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh folder ``<out_dir>.partial-<pid>`` beside ``out_dir``; it becomes
    ``out_dir`` (an atomic rename, which also replaces an empty folder) only if the block
    succeeds, and is removed otherwise. An ``OSError`` of the rename reaches the caller."""
    out_dir = Path(out_dir)
    absolute = out_dir.absolute()
    tmp = absolute.with_name(f"{absolute.name}.partial-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as err:
        raise MilCytoError(f"cannot create {tmp} next to {out_dir}: {err}") from None
    try:
        yield tmp
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV with ``header`` then ``rows``, ``\n`` line ends (byte-stable across platforms)."""
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
