"""Several reviewers on one run: marks keyed by reviewer, saves from separate processes at
the same moment (nothing lost or mixed), and the agreement table."""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from mil_cyto.review.agreement import agreement_table, kappa, model_call
from mil_cyto.review.marks import MARKS, Mark, marks_csv_text, read_marks, reviewers, save_mark

N_PROCESSES = 6
N_BOXES = 15


def _verdict(reviewer: str, box: int) -> str:
    return MARKS[(len(reviewer) + box) % len(MARKS)]


def _saver(path: str, reviewer: str, offset: int, barrier) -> None:
    """One process: wait for every other one, then save N_BOXES marks as fast as it can."""
    barrier.wait(timeout=60)
    for j in range(N_BOXES):
        x0 = 10 * (offset + j)
        save_mark(
            Path(path),
            Mark("same.png", x0, 0, x0 + 10, 10, "tile", _verdict(reviewer, j), reviewer),
        )


def test_saves_from_several_processes_at_once_lose_and_mix_nothing(tmp_path: Path) -> None:
    """Six processes start saving at the same moment: three reviewers mark the same boxes
    of the same photo, and each reviewer also saves from two processes (other boxes)."""
    path = tmp_path / "review_marks.csv"
    ctx = mp.get_context("fork")  # separate processes, as separate servers would be
    barrier = ctx.Barrier(N_PROCESSES)
    jobs = []
    for i in range(N_PROCESSES):
        reviewer, offset = ["ana", "ben", "cleo"][i % 3], N_BOXES * (i // 3)
        jobs.append(ctx.Process(target=_saver, args=(str(path), reviewer, offset, barrier)))
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
    assert all(job.exitcode == 0 for job in jobs), [job.exitcode for job in jobs]
    marks = read_marks(path)
    assert len(marks) == N_PROCESSES * N_BOXES  # none lost
    assert len({m.key for m in marks}) == len(marks)  # none duplicated
    for m in marks:  # none mixed: each mark carries its own reviewer's verdict
        assert m.mark == _verdict(m.reviewer, (m.x0 // 10) % N_BOXES)
    assert reviewers(marks) == ["ana", "ben", "cleo"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_reviewers_on_the_same_box_keep_one_mark_each(tmp_path: Path) -> None:
    path = tmp_path / "review_marks.csv"
    save_mark(path, Mark("p.png", 0, 0, 48, 48, "tile", "atypical", "ana"))
    save_mark(path, Mark("p.png", 0, 0, 48, 48, "tile", "normal", "ben"))
    marks = save_mark(path, Mark("p.png", 0, 0, 48, 48, "tile", "unsure", "ana"))  # ana again
    assert sorted((m.reviewer, m.mark) for m in marks) == [("ana", "unsure"), ("ben", "normal")]
    text = marks_csv_text([m for m in marks if m.reviewer == "ben"])
    assert text.splitlines()[0].startswith("image,x0,y0,x1,y1,target,mark,reviewer")
    assert len(text.splitlines()) == 2 and ",ben," in text


def test_kappa_matches_the_definition_and_is_nan_when_undefined() -> None:
    a = ["atypical", "atypical", "normal", "normal", "atypical", "normal"]
    b = ["atypical", "normal", "normal", "normal", "atypical", "atypical"]
    po = 4 / 6
    pe = (3 / 6) * (3 / 6) + (3 / 6) * (3 / 6)
    assert kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(kappa(["normal"], ["normal"]))
    assert math.isnan(kappa(["normal"] * 3, ["normal"] * 3))


def test_agreement_table_between_reviewers_and_with_the_model() -> None:
    top = {"p.png": np.array([[0, 0, 10, 10], [10, 0, 20, 10]])}
    assert model_call((2, 2, 6, 6), top["p.png"]) == "atypical"
    assert model_call((30, 0, 40, 10), top["p.png"]) == "normal"
    boxes = [(0, 0, 10, 10), (10, 0, 20, 10), (20, 0, 30, 10), (30, 0, 40, 10)]
    ana = ["atypical", "atypical", "normal", "normal"]  # agrees with the model everywhere
    ben = ["atypical", "normal", "normal", "unsure"]
    marks = [Mark("p.png", *b, "tile", v, "ana") for b, v in zip(boxes, ana, strict=True)]
    marks += [Mark("p.png", *b, "tile", v, "ben") for b, v in zip(boxes, ben, strict=True)]
    marks.append(Mark("other.png", 0, 0, 5, 5, "tile", "normal", "ben"))  # no attention map
    rows = {r["between"]: r for r in agreement_table(marks, top, k=2)}
    assert set(rows) == {"ana / ben", "ana / model (top-2 tiles)", "ben / model (top-2 tiles)"}
    assert rows["ana / ben"]["shared boxes"] == 4 and rows["ana / ben"]["agree"] == 0.5
    assert rows["ana / ben"]["kappa"] == pytest.approx(kappa(ana, ben))
    assert rows["ana / model (top-2 tiles)"]["kappa"] == pytest.approx(1.0)
    assert rows["ben / model (top-2 tiles)"]["shared boxes"] == 3  # unsure left out
