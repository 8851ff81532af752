"""Data shipped with tissueseg: a texture bank of real H&E crops and one small real BCSS crop.

Both are cut from public data by :mod:`tissueseg.assets.build`; every file's source, slide,
crop box and licence are in the ``provenance.csv`` beside it (see docs/synthetic-data.md).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
TEXTURES = ASSETS / "textures"
"""The built-in texture bank: JPEG crops of single-class real H&E and ``provenance.csv``."""


@dataclass(frozen=True)
class RealRegion:
    """A real H&E crop with its BCSS code mask: files named like BCSS regions (µm/px in the name)."""

    image: Path
    mask: Path
    provenance: Path
    mpp: float
    licence: str
    slide: str


def real_region() -> RealRegion:
    """The packaged real BCSS crop (1024 x 1024 px at 0.25 µm/px of slide TCGA-A1-A0SK, CC0):
    tumour, stroma and necrosis in about equal parts. Nothing is downloaded."""
    folder = ASSETS / "real"
    with open(folder / "provenance.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return RealRegion(folder / row["image"], folder / row["mask"], folder / "provenance.csv", float(row["mpp"]),
                      row["licence"], row["slide"])
