"""Train mil-cyto on a folder of your own photos: this script makes such a folder first.

It writes a few photos (drawn by the synthetic generator, standing in for your camera's
JPEGs), a ``manifest.csv`` the way you would write one by hand (free-text grades, patient
ids, a cytology column), and then runs the training command on it.

    python examples/own_photos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from mil_cyto.data.synthetic import SynthConfig, generate_dataset

# the way grades are often written in a lab export: any of these spellings is accepted
HISTOLOGY_SPELLING = {"normal": "", "CIN1": "CIN 1", "CIN2+": "CIN3"}


def make_photo_folder(root: Path) -> Path:
    """A folder ``root/my_photos`` with ``photos/*.jpg`` and ``manifest.csv``."""
    drawn = generate_dataset(
        root / "drawn", SynthConfig(n_images=40, seed=7, width=384, height=288), progress=False
    )
    folder = root / "my_photos"
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    with (drawn / "manifest.csv").open() as src:
        rows = list(csv.DictReader(src))
    with (folder / "manifest.csv").open("w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["image", "patient_id", "histology", "cytology"])
        for i, row in enumerate(rows):
            name = f"photos/field_{i:03d}.jpg"
            Image.open(drawn / row["image"]).save(folder / name, quality=92)
            grade = row["histology"]
            writer.writerow(
                [name, f"patient-{row['patient_id']}", HISTOLOGY_SPELLING[grade], row["cytology"]]
            )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where to put the folder and the run")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="mil-cyto-example-"))
    folder = make_photo_folder(root)
    print(f"photos and manifest: {folder}")
    command = [
        sys.executable,
        "-m",
        "mil_cyto.train",
        "--data",
        str(folder),
        "--out",
        str(root / "run"),
        "--epochs",
        str(args.epochs),
        "--quiet",
    ]
    print("running:", " ".join(command))
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
