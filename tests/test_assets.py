"""Packaged data: the texture bank and the demo's real BCSS crop, with their provenance."""

import csv
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

from tissueseg import assets
from tissueseg.io import read_image, read_mask
from tissueseg.slide import MPP_IN_NAME

from .conftest import _shared

ROOT = Path(__file__).resolve().parents[1]
EVAL_SLIDE = "TCGA-A1-A0SK"  # bench/transfer.py scores here: never a texture source
LICENCES = {"CC0-1.0", "CC-BY-4.0"}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_texture_provenance_lists_every_file_with_source_and_licence():
    rows = _rows(assets.TEXTURES / "provenance.csv")
    listed = {r["file"] for r in rows}
    assert listed == {p.name for p in assets.TEXTURES.glob("*.jpg")}
    for r in rows:
        assert r["licence"] in LICENCES and r["source_file"] and r["dataset"]
        x0, y0, x1, y1 = (int(v) for v in r["crop_box"].split())
        assert x1 > x0 and y1 > y0
        assert EVAL_SLIDE not in r["source_file"] and r["slide"] != EVAL_SLIDE
        assert (r["licence"] == "CC-BY-4.0") == r["source_file"].startswith("nct_crc_he")  # attribution kept
        h, w = read_image(assets.TEXTURES / r["file"]).shape[:2]
        assert (w, h) == (x1 - x0, y1 - y0)
    assert {int(r["code"]) for r in rows} == {1, 2, 3, 9}


def test_real_region_is_a_labelled_bcss_crop():
    real = assets.real_region()
    assert real.image.is_file() and real.mask.is_file()
    assert real.licence == "CC0-1.0" and real.slide == EVAL_SLIDE and real.mpp == 0.25
    assert float(MPP_IN_NAME.search(real.image.name).group(1)) == real.mpp  # predict reads µm/px from the name
    assert real.image.stem == real.mask.stem
    rgb, mask = read_image(real.image), read_mask(real.mask)
    assert rgb.shape == (1024, 1024, 3) and mask.shape == (1024, 1024)
    assert set(np.unique(mask)) <= {1, 2, 3, 4, 9}
    for code in (1, 2, 4):  # tumour, stroma and necrosis all present
        assert (mask == code).mean() > 0.2


def test_package_data_is_small_and_declared_in_pyproject():
    files = [p for p in assets.ASSETS.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png", ".csv")]
    assert sum(p.stat().st_size for p in files) < 5 * 2**20
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["tissueseg.assets"]
    for p in files:
        rel = p.relative_to(assets.ASSETS).as_posix()
        assert any(fnmatch(rel, pat) for pat in patterns), f"{rel} would not be installed"


def test_real_crop_is_the_real_region_at_its_box():
    region = _shared("bcss/region-a0sk")
    stem = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"
    row = _rows(assets.real_region().provenance)[0]
    x0, y0, x1, y1 = (int(v) for v in row["crop_box"].split())
    real = assets.real_region()
    assert np.array_equal(read_mask(real.mask), read_mask(region / "masks" / f"{stem}.png")[y0:y1, x0:x1])
    src = read_image(region / "rgbs_colorNormalized" / f"{stem}.png")[y0:y1, x0:x1].astype(float)
    assert np.abs(read_image(real.image).astype(float) - src).mean() < 3  # JPEG at quality 90


@pytest.mark.parametrize("row", _rows(assets.TEXTURES / "provenance.csv")[::9], ids=lambda r: r["file"])
def test_texture_crops_are_their_sources_at_their_boxes(row):
    data = _shared(".")
    x0, y0, x1, y1 = (int(v) for v in row["crop_box"].split())
    src = read_image(data / row["source_file"])[y0:y1, x0:x1].astype(float)
    assert np.abs(read_image(assets.TEXTURES / row["file"]).astype(float) - src).mean() < 4  # JPEG at quality 92
