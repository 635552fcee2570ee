"""Synthetic Pap-smear data set: determinism, files, labels, cell boxes, cache, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil_cyto.data.synthetic import (
    ATYPICAL_KIND,
    CELL_COLUMNS,
    CELL_KINDS,
    MANIFEST_COLUMNS,
    SynthConfig,
    draw_field,
    generate_dataset,
    plan_patients,
    random_stain,
)
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.synth import main as synth_main

W, H = 160, 128
REPO = Path(__file__).resolve().parents[2]


def _config(**kw: object) -> SynthConfig:
    base = dict(n_images=9, seed=3, width=W, height=H, class_fractions=(0.34, 0.33, 0.33))
    base.update(kw)
    return SynthConfig(**base)  # type: ignore[arg-type]


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn") / "ds", _config(), progress=False)


def test_same_seed_identical_bytes_whatever_workers(dataset: Path, tmp_path: Path) -> None:
    other = generate_dataset(tmp_path / "ds2", _config(), workers=2, progress=False)
    assert _tree(dataset) == _tree(other)


def test_different_seeds_differ(dataset: Path, tmp_path: Path) -> None:
    other = generate_dataset(tmp_path / "ds", _config(seed=4), progress=False)
    a, b = _tree(dataset), _tree(other)
    assert a["images/img_00000.png"] != b["images/img_00000.png"]
    assert a["cells.csv"] != b["cells.csv"]


def test_layout_and_columns(dataset: Path) -> None:
    cols, rows = _rows(dataset / "manifest.csv")
    assert cols == list(MANIFEST_COLUMNS)
    assert [r["image"] for r in rows] == [f"images/img_{i:05d}.png" for i in range(9)]
    for r in rows:
        assert r["histology"] in GRADES and r["cytology"] in GRADES
        assert r["hpv"] in ("positive", "negative")
        assert r["patient_id"].startswith("P")
        with Image.open(dataset / r["image"]) as im:
            assert im.size == (W, H) and im.mode == "RGB"
    cols, cells = _rows(dataset / "cells.csv")
    assert cols == list(CELL_COLUMNS)
    assert {c["image"] for c in cells} == {r["image"] for r in rows}
    assert {c["kind"] for c in cells} <= set(CELL_KINDS)
    cfg = json.loads((dataset / "synth_config.json").read_text())
    assert SynthConfig.from_json_dict(cfg) == _config()


def test_atypical_cells_match_photo_grade(dataset: Path) -> None:
    _, rows = _rows(dataset / "manifest.csv")
    _, cells = _rows(dataset / "cells.csv")
    per_image: dict[str, Counter[str]] = defaultdict(Counter)
    for c in cells:
        assert c["grade"] in GRADES
        if c["kind"] in ("superficial", "intermediate", "parabasal", "inflammatory", "debris"):
            assert c["grade"] == "normal"
        else:
            assert c["grade"] == {v: k for k, v in ATYPICAL_KIND.items()}[c["kind"]]
        per_image[c["image"]][c["kind"]] += 1
    assert {r["histology"] for r in rows} == set(GRADES)
    for r in rows:
        kinds = per_image[r["image"]]
        if r["histology"] == "normal":
            assert kinds["koilocyte"] == 0 and kinds["hsil"] == 0
        elif r["histology"] == "CIN1":
            assert 1 <= kinds["koilocyte"] <= 5 and kinds["hsil"] == 0
        else:
            assert 1 <= kinds["hsil"] <= 5 and kinds["koilocyte"] <= 2
        assert sum(kinds.values()) >= 3


def test_boxes_inside_image(dataset: Path) -> None:
    _, cells = _rows(dataset / "cells.csv")
    for c in cells:
        x0, y0, x1, y1 = (int(c[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_patients_have_several_photos_and_one_grade(dataset: Path) -> None:
    _, rows = _rows(dataset / "manifest.csv")
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_patient[r["patient_id"]].append(r)
    for photos in by_patient.values():
        assert 2 <= len(photos) <= 4
        assert len({(p["histology"], p["cytology"], p["hpv"]) for p in photos}) == 1


def test_plan_follows_fractions() -> None:
    plans = plan_patients(SynthConfig(n_images=360))
    assert sum(len(p.images) for p in plans) == 360
    assert all(2 <= len(p.images) <= 4 for p in plans)
    counts = Counter(p.histology for p in plans)
    for g, frac in zip(GRADES, (0.4, 0.3, 0.3), strict=True):
        assert abs(counts[g] - frac * len(plans)) <= 1
    agree = np.mean([p.cytology == p.histology for p in plans])
    assert 0.6 < agree < 0.95


def test_cache_hit_does_not_rewrite(dataset: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    assert generate_dataset(dataset, _config(), workers=2, progress=False) == dataset
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


def test_other_config_in_dir_raises(dataset: Path) -> None:
    with pytest.raises(MilCytoError, match="different config"):
        generate_dataset(dataset, _config(seed=99), progress=False)


def test_foreign_nonempty_dir_raises(tmp_path: Path) -> None:
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MilCytoError, match=str(out)):
        generate_dataset(out, _config(n_images=2), progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob("stuff.partial-*"))


def test_empty_dir_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    generate_dataset(out, _config(n_images=2), progress=False)
    assert (out / "synth_config.json").is_file()
    assert not list(tmp_path.glob("empty.partial-*"))


def test_invalid_config_raises() -> None:
    with pytest.raises(MilCytoError):
        SynthConfig(n_images=0)
    with pytest.raises(MilCytoError):
        SynthConfig(cells_per_field=(10, 5))


def test_draw_field_cells_and_contrast() -> None:
    """At native scale an HSIL nucleus is darker than the normal cells' mean nucleus region."""
    rng = np.random.default_rng(0)
    img, cells = draw_field(rng, 320, 240, "CIN2+", random_stain(rng))
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    hsil = [c for c in cells if c["kind"] == "hsil"]
    assert 1 <= len(hsil) <= 5
    gray = img.mean(axis=2)
    darkest = min(gray[c["y0"] : c["y1"], c["x0"] : c["x1"]].min() for c in hsil)
    assert darkest < np.median(gray) - 60


def test_draw_field_rejects_unknown_grade() -> None:
    with pytest.raises(MilCytoError):
        draw_field(
            np.random.default_rng(0), 100, 100, "CIN3", random_stain(np.random.default_rng(0))
        )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mil_cyto.synth", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_cli_runs_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--n-images", "6", "--seed", "1", "--width", "256"]
    args += ["--height", "192", "--workers", "1", "--no-progress"]
    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    assert "6 images" in res.stdout and len(res.stdout.strip().splitlines()) == 1
    assert len(list((out / "images").glob("*.png"))) == 6
    assert synth_main(args) == 0  # second run: the cache
    assert "reused" in capsys.readouterr().out


def test_cli_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.txt").write_text("x")
    code = synth_main(["--out", str(tmp_path), "--n-images", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and str(tmp_path) in err and "Traceback" not in err


def test_cli_help() -> None:
    res = _cli("--help")
    assert res.returncode == 0 and "--n-images" in res.stdout
