"""Prediction outputs: pyramidal palette TIFF, probability TIFF, GeoJSON, class areas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
import zarr
from shapely.geometry import shape

from tissueseg.export import (
    class_areas,
    downsample,
    label_regions,
    pyramid_factors,
    write_areas,
    write_label_tiff,
    write_outputs,
    write_probability_tiff,
)
from tissueseg.schemes import IGNORE, bcss5


def blocks(h: int, w: int) -> np.ndarray:
    labels = np.full((h, w), IGNORE, dtype=np.uint8)
    labels[: h // 2, : w // 2] = 0
    labels[: h // 2, w // 2 :] = 1
    labels[h // 2 :, : w // 3] = 4
    return labels


def test_label_tiff_pyramid_opens_in_openslide(tmp_path: Path) -> None:
    labels = blocks(600, 520)
    store = zarr.create_array(tmp_path / "l.zarr", shape=labels.shape, chunks=(100, 128), dtype="uint8")
    store[:] = labels
    path = write_label_tiff(store, tmp_path / "labels.tiff", scheme=bcss5(), mpp=2.0)
    assert pyramid_factors(600, 520) == [1, 2, 4]
    with tifffile.TiffFile(path) as tif:
        assert [p.shape for p in tif.pages] == [(600, 520), (300, 260), (150, 130)]
        assert tif.pages[0].is_tiled and tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        assert np.array_equal(tif.pages[0].asarray(), labels)
        assert np.array_equal(tif.pages[2].asarray(), labels[::4, ::4])
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_dimensions == ((520, 600), (260, 300), (130, 150))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(2.0)
        rgb = np.asarray(s.read_region((0, 0), 0, (520, 600)))[..., :3]
    colors = bcss5().colors
    assert (rgb[10, 10] == colors[0]).all() and (rgb[10, 500] == colors[1]).all()
    assert (rgb[590, 10] == colors[4]).all() and (rgb[590, 500] == 0).all()  # ignore colour: black
    assert not list(tmp_path.glob(".*part*"))


def test_probability_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 256, (3, 300, 270), dtype=np.uint8)
    path = write_probability_tiff(probs, tmp_path / "p.tiff", mpp=1.0, tile=128)
    assert np.array_equal(tifffile.imread(path), probs)


def test_downsample() -> None:
    arr = np.arange(100 * 30).reshape(100, 30)
    small, f = downsample(arr, 40)
    assert f == 3 and np.array_equal(small, arr[::3, ::3])
    assert downsample(arr, 100)[1] == 1


def test_ring_is_one_polygon_with_one_hole() -> None:
    labels = np.full((60, 80), IGNORE, dtype=np.uint8)
    labels[10:50, 10:50] = 1
    labels[20:40, 20:40] = IGNORE
    labels[5:8, 70:73] = 2  # 9 px: below min_area, dropped
    fc = label_regions(labels, bcss5(), scale=4.0, min_area=16)
    assert len(fc["features"]) == 1
    feat = fc["features"][0]
    props = feat["properties"]
    assert props == {"objectType": "annotation", "classification": {"name": "stroma", "color": [0, 128, 0]},
                     "isLocked": False}
    poly = shape(feat["geometry"])
    assert poly.is_valid and poly.geom_type == "Polygon" and len(poly.interiors) == 1
    # outline through pixel centres: outer 10.5..49.5, hole 19.5..40.5 (the hole's edge pixels), x4
    assert poly.bounds == pytest.approx((42, 42, 198, 198))
    assert poly.interiors[0].bounds == pytest.approx((78, 78, 162, 162))
    # the hole filled with another class is its own region
    labels[20:40, 20:40] = 0
    fc = label_regions(labels, bcss5())
    names = sorted(f["properties"]["classification"]["name"] for f in fc["features"])
    assert names == ["stroma", "tumor"]
    json.dumps(fc)


def test_self_touching_region_stays_valid() -> None:
    labels = np.full((20, 20), IGNORE, dtype=np.uint8)
    labels[2:8, 2:8] = 0
    labels[8:14, 8:14] = 0  # touches the first square at one diagonal pixel corner
    fc = label_regions(labels, bcss5(), min_area=4)
    polys = [shape(f["geometry"]) for f in fc["features"]]
    assert polys and all(p.is_valid for p in polys)
    assert sum(p.area for p in polys) == pytest.approx(2 * 25, rel=0.1)


def test_class_areas_hand_computed(tmp_path: Path) -> None:
    counts = np.zeros(256, dtype=np.int64)
    counts[0], counts[1], counts[IGNORE] = 100, 300, 50
    rows = class_areas(counts, bcss5(), mpp=0.5)
    assert [r["class"] for r in rows] == bcss5().names
    assert rows[0] == {"class": "tumor", "pixels": 100, "area_mm2": pytest.approx(2.5e-5), "proportion": 0.25}
    assert rows[1]["area_mm2"] == pytest.approx(7.5e-5) and rows[1]["proportion"] == 0.75
    assert rows[2]["pixels"] == 0 and rows[2]["proportion"] == 0.0
    write_areas(rows, tmp_path / "a.csv", tmp_path / "a.json")
    table = pd.read_csv(tmp_path / "a.csv")
    assert table["pixels"].tolist() == [100, 300, 0, 0, 0]
    assert json.loads((tmp_path / "a.json").read_text())[1]["pixels"] == 300


def test_write_outputs_region(tmp_path: Path) -> None:
    labels = blocks(60, 80)
    counts = np.bincount(labels.ravel(), minlength=256)
    thumb = np.full((30, 40, 3), 200, dtype=np.uint8)
    out = write_outputs(tmp_path, labels, None, scheme=bcss5(), mpp=1.0, level0_scale=2.0, counts=counts,
                        thumbnail=thumb, tissue=None, region_size=(160, 120))
    assert set(out) == {"labels.tiff", "thumbnail.png", "overlay.png", "tissue.png", "regions.geojson",
                        "areas.csv", "areas.json", "labels.png"}
    from PIL import Image

    png = Image.open(tmp_path / "labels.png")
    assert png.mode == "P" and png.size == (160, 120)
    assert np.array_equal(np.asarray(png)[::2, ::2], labels)
    feats = json.loads((tmp_path / "regions.geojson").read_text())["features"]
    xmax = max(shape(f["geometry"]).bounds[2] for f in feats)
    assert 150 < xmax <= 160  # level-0 coordinates
