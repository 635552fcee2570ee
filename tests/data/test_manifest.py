"""manifest.csv reading: valid rows, and one clear MilCytoError (file + line) per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil_cyto.data.manifest import read_manifest
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES


def _png(folder: Path, name: str) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(path)


def _manifest(folder: Path, text: str, images: tuple[str, ...] = ()) -> Path:
    for name in images:
        _png(folder, name)
    path = folder / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return path


VALID = (
    "image,patient_id,histology,cytology,hpv\n"
    "a.png,p1,CIN3,HSIL,positive\n"
    "sub/b.png,p1,,NILM,\n"
    "c.png,p2,LSIL,HSIL,neg\n"
    "d.png,p3,normal,LSIL,negative\n"
)
VALID_IMAGES = ("a.png", "sub/b.png", "c.png", "d.png")


def test_valid_manifest(tmp_path: Path) -> None:
    path = _manifest(tmp_path, VALID, VALID_IMAGES)
    rows = read_manifest(path)
    assert [r.image_id for r in rows] == list(VALID_IMAGES)
    assert [r.patient_id for r in rows] == ["p1", "p1", "p2", "p3"]
    assert [r.grade for r in rows] == ["CIN2+", "normal", "CIN1", "normal"]
    assert [r.label for r in rows] == [2, 0, 1, 0]
    assert rows[1].image == (tmp_path / "sub" / "b.png").resolve()
    assert all(r.image.is_absolute() and r.image.is_file() for r in rows)
    assert rows[0].sources == {"histology": "CIN2+", "cytology": "CIN2+", "hpv": "positive"}
    assert rows[1].sources["hpv"] is None
    assert rows[2].sources["hpv"] == "negative"


def test_folder_path_reads_manifest_csv(tmp_path: Path) -> None:
    _manifest(tmp_path, VALID, VALID_IMAGES)
    assert len(read_manifest(tmp_path)) == 4


def test_label_column_choice(tmp_path: Path) -> None:
    path = _manifest(tmp_path, VALID, VALID_IMAGES)
    histology = [r.grade for r in read_manifest(path, label_column="histology")]
    cytology = [r.grade for r in read_manifest(path, label_column="cytology")]
    assert histology == ["CIN2+", "normal", "CIN1", "normal"]
    assert cytology == ["CIN2+", "normal", "CIN2+", "CIN1"]
    # histology is the default target when present
    assert [r.grade for r in read_manifest(path)] == histology


def test_label_column_fallback_to_label(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "image,patient_id,label\na.png,p1,CIN2\n", ("a.png",))
    assert read_manifest(path)[0].grade == "CIN2+"


def test_empty_histology_is_normal(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "image,patient_id,histology\na.png,p1,\n", ("a.png",))
    row = read_manifest(path)[0]
    assert row.grade == "normal" and row.label == GRADES.index("normal")


def test_bom_and_padded_header(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    _png(tmp_path, "a.png")
    path.write_bytes("\ufeffimage, patient_id ,histology\na.png,p1,CIN1\n".encode())
    assert read_manifest(path)[0].grade == "CIN1"


def test_check_images_false_skips_file_check(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "image,patient_id,histology\nghost.png,p1,CIN1\n")
    assert read_manifest(path, check_images=False)[0].image_id == "ghost.png"


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(MilCytoError) as info:
        read_manifest(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_missing_manifest_file(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.csv")
    assert "nope.csv" in message


@pytest.mark.parametrize("drop", ["image", "patient_id"])
def test_missing_column(tmp_path: Path, drop: str) -> None:
    columns = [c for c in ("image", "patient_id", "histology") if c != drop]
    values = {"image": "a.png", "patient_id": "p1", "histology": "CIN1"}
    text = ",".join(columns) + "\n" + ",".join(values[c] for c in columns) + "\n"
    path = _manifest(tmp_path, text, ("a.png",))
    message = _error(path)
    assert str(path) in message and repr(drop) in message


def test_no_label_column(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "image,patient_id\na.png,p1\n", ("a.png",))
    assert "label" in _error(path)


def test_chosen_label_column_absent(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "image,patient_id,histology\na.png,p1,CIN1\n", ("a.png",))
    message = _error(path, label_column="cytology")
    assert str(path) in message and "cytology" in message


def test_unknown_label_names_file_line_and_value(tmp_path: Path) -> None:
    text = "image,patient_id,histology\na.png,p1,CIN1\nb.png,p2,CIN7\n"
    path = _manifest(tmp_path, text, ("a.png", "b.png"))
    message = _error(path)
    assert f"{path} line 3" in message
    assert "'CIN7'" in message and "histology" in message


def test_unknown_value_in_non_target_column_is_also_an_error(tmp_path: Path) -> None:
    text = "image,patient_id,histology,cytology\na.png,p1,CIN1,ASCUS??\n"
    path = _manifest(tmp_path, text, ("a.png",))
    message = _error(path)
    assert f"{path} line 2" in message and "ASCUS??" in message


def test_unknown_hpv_value(tmp_path: Path) -> None:
    text = "image,patient_id,histology,hpv\na.png,p1,CIN1,perhaps\n"
    path = _manifest(tmp_path, text, ("a.png",))
    message = _error(path)
    assert f"{path} line 2" in message and "perhaps" in message


def test_missing_image_file(tmp_path: Path) -> None:
    text = "image,patient_id,histology\na.png,p1,CIN1\nmissing.png,p2,normal\n"
    path = _manifest(tmp_path, text, ("a.png",))
    message = _error(path)
    assert f"{path} line 3" in message and "missing.png" in message


@pytest.mark.parametrize("patient", ["", "   "])
def test_empty_patient_id(tmp_path: Path, patient: str) -> None:
    text = f"image,patient_id,histology\na.png,p1,CIN1\nb.png,{patient},CIN1\n"
    path = _manifest(tmp_path, text, ("a.png", "b.png"))
    message = _error(path)
    assert f"{path} line 3" in message and "patient_id" in message


def test_empty_image_cell(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "image,patient_id,histology\n,p1,CIN1\n")
    message = _error(path)
    assert f"{path} line 2" in message and "image" in message


def test_duplicate_image(tmp_path: Path) -> None:
    text = "image,patient_id,histology\na.png,p1,CIN1\nb.png,p2,normal\na.png,p3,CIN2\n"
    path = _manifest(tmp_path, text, ("a.png", "b.png"))
    message = _error(path)
    assert f"{path} line 4" in message and "a.png" in message and "line 2" in message


def test_extra_cells(tmp_path: Path) -> None:
    text = "image,patient_id,histology\na.png,p1,CIN1\nb.png,p2,CIN1,oops\n"
    path = _manifest(tmp_path, text, ("a.png", "b.png"))
    message = _error(path)
    assert f"{path} line 3" in message and "more cells" in message


def test_header_only_manifest(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "image,patient_id,histology\n")
    assert str(path) in _error(path)


def test_line_number_after_blank_line(tmp_path: Path) -> None:
    text = "image,patient_id,histology\na.png,p1,CIN1\n\nb.png,p2,CIN7\n"
    path = _manifest(tmp_path, text, ("a.png", "b.png"))
    assert f"{path} line 4" in _error(path)


def test_non_grade_label_column_is_refused(tmp_path: Path) -> None:
    text = "image,patient_id,histology,hpv\na.png,p1,CIN1,positive\n"
    path = _manifest(tmp_path, text, ("a.png",))
    assert "hpv" in _error(path, label_column="hpv")
