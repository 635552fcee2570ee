"""Reviewer marks on tiles or cells, kept in ``RUN/review_marks.csv``.

Marks are keyed by reviewer: two reviewers marking the same box keep one mark each. Each
save is a read-modify-write of the whole file under an exclusive ``fcntl.flock`` on a lock
file beside it (held across processes: several Streamlit servers or workers on one run
folder serialise), and the new file replaces the old one by an atomic rename, so a reader
never sees a half-written file and no concurrent save loses or mixes another's mark. Marks
read back as rows of the ``cells.csv`` format (``image, x0, y0, x1, y1, grade, kind``).
"""

from __future__ import annotations

import csv
import fcntl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_path
from mil_cyto.labels import GRADES

MARKS_FILE = "review_marks.csv"
MARKS = ("atypical", "normal", "unsure")
TARGETS = ("tile", "cell", "suspect")
FIELDS = ("image", "x0", "y0", "x1", "y1", "target", "mark", "reviewer", "time")
CELL_FIELDS = ("image", "x0", "y0", "x1", "y1", "grade", "kind")


@dataclass(frozen=True)
class Mark:
    """One mark: a box ``x0, y0, x1, y1`` (photo pixels) on ``image``, what was marked
    (``target``: tile, annotated cell or suspect cell) and the verdict (``mark``)."""

    image: str
    x0: int
    y0: int
    x1: int
    y1: int
    target: str
    mark: str
    reviewer: str = ""
    time: str = ""

    @property
    def key(self) -> tuple[str, str, int, int, int, int]:
        """``(reviewer, image, x0, y0, x1, y1)``: one mark per reviewer and box of a photo; a
        reviewer's new mark on a box replaces their old one, never another reviewer's."""
        return (self.reviewer, self.image, self.x0, self.y0, self.x1, self.y1)

    def check(self) -> None:
        if self.mark not in MARKS:
            raise MilCytoError(f"mark {self.mark!r} unknown; use one of {', '.join(MARKS)}")
        if self.target not in TARGETS:
            raise MilCytoError(f"target {self.target!r} unknown; use one of {', '.join(TARGETS)}")
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise MilCytoError(f"mark box {self.key[2:]} is empty; x1 > x0 and y1 > y0 needed")


def marks_path(run_dir: Path) -> Path:
    return Path(run_dir) / MARKS_FILE


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock beside ``path`` for one read-modify-write."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_marks(path: Path) -> list[Mark]:
    """Every mark in a marks CSV, in file order (an absent file holds none).

    Raises:
        MilCytoError: a missing column or a malformed row, naming the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(FIELDS[:7]) - set(reader.fieldnames or [])
        if missing:
            raise MilCytoError(f"{path}: missing columns {sorted(missing)}; move it aside")
        marks = []
        for row in reader:
            try:
                mark = Mark(
                    image=row["image"],
                    x0=int(row["x0"]),
                    y0=int(row["y0"]),
                    x1=int(row["x1"]),
                    y1=int(row["y1"]),
                    target=row["target"],
                    mark=row["mark"],
                    reviewer=row.get("reviewer") or "",
                    time=row.get("time") or "",
                )
                mark.check()
            except (TypeError, ValueError, MilCytoError) as err:
                raise MilCytoError(f"{path} line {reader.line_num}: {err}") from None
            marks.append(mark)
    return marks


def _write(path: Path, marks: Sequence[Mark]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for mark in marks:
            writer.writerow(asdict(mark))


def save_mark(path: Path, mark: Mark) -> list[Mark]:
    """Add ``mark`` (replacing the same reviewer's mark on the same box) and return all marks.

    The time is stamped (UTC, ISO 8601) when ``mark.time`` is empty.
    """
    mark.check()
    if not mark.time:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        mark = Mark(**{**asdict(mark), "time": stamp})
    path = Path(path)
    with _locked(path):
        marks = [m for m in read_marks(path) if m.key != mark.key] + [mark]
        _write(path, marks)
    return marks


def remove_mark(path: Path, key: tuple[str, str, int, int, int, int]) -> list[Mark]:
    """Drop the mark ``key`` (reviewer, image, x0, y0, x1, y1), if any; return the rest."""
    path = Path(path)
    with _locked(path):
        marks = read_marks(path)
        kept = [m for m in marks if m.key != key]
        if len(kept) != len(marks):
            _write(path, kept)
    return kept


def marks_as_cells(
    marks: Sequence[Mark],
    photo_grades: Mapping[str, str] | None = None,
    *,
    include_unsure: bool = False,
) -> list[dict[str, str | int]]:
    """Marks as ``cells.csv`` rows (``image, x0, y0, x1, y1, grade, kind``) for evaluation.

    ``normal`` marks get grade ``normal``. ``atypical`` marks get the photo's grade from
    ``photo_grades`` when that grade is abnormal (the photo's worst lesion is the best guess
    of an atypical cell's grade), else ``CIN1``, the lowest atypical grade; either way they
    count as atypical in :func:`mil_cyto.localization.read_cell_boxes`. ``unsure`` marks are
    left out unless ``include_unsure`` (then with grade ``normal`` and kind ``...-unsure``).
    ``kind`` is ``review-<target>``.
    """
    grades = photo_grades or {}
    rows: list[dict[str, str | int]] = []
    for m in marks:
        if m.mark == "unsure" and not include_unsure:
            continue
        if m.mark == "atypical":
            photo = grades.get(m.image, "normal")
            grade = photo if photo in GRADES[1:] else GRADES[1]
        else:
            grade = "normal"
        kind = f"review-{m.target}" + ("-unsure" if m.mark == "unsure" else "")
        rows.append(
            {
                "image": m.image,
                "x0": m.x0,
                "y0": m.y0,
                "x1": m.x1,
                "y1": m.y1,
                "grade": grade,
                "kind": kind,
            }
        )
    return rows


def reviewers(marks: Sequence[Mark]) -> list[str]:
    """The reviewers who left marks, sorted ("" for marks saved without a name)."""
    return sorted({m.reviewer for m in marks})


def marks_csv_text(marks: Sequence[Mark]) -> str:
    """Marks as ``review_marks.csv`` text (for one reviewer's download)."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for mark in marks:
        writer.writerow(asdict(mark))
    return buffer.getvalue()


def write_cells_csv(path: Path, rows: Sequence[Mapping[str, str | int]]) -> None:
    """Write ``cells.csv``-format rows atomically."""
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CELL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def cells_csv_text(rows: Sequence[Mapping[str, str | int]]) -> str:
    """The same rows as CSV text (for a download button)."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CELL_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
