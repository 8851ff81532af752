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
    labels[5:8, 70:73] = 2  # 9 px on glass: below min_area, goes to the glass around it
    fc = label_regions(labels, bcss5(), scale=4.0, mpp=0.5, min_area=16)
    assert len(fc["features"]) == 1
    feat = fc["features"][0]
    props = feat["properties"]
    assert props == {"objectType": "annotation", "classification": {"name": "stroma", "color": [0, 128, 0]},
                     "isLocked": False, "measurements": {"Area µm^2": (40 * 40 - 20 * 20) * (0.5 * 4) ** 2}}
    poly = shape(feat["geometry"])
    assert poly.is_valid and poly.geom_type == "Polygon" and len(poly.interiors) == 1
    # outline along the pixel edges: outer 10..50, hole 20..40, x4
    assert poly.bounds == (40, 40, 200, 200) and poly.interiors[0].bounds == (80, 80, 160, 160)
    assert poly.area == (40 * 40 - 20 * 20) * 16
    # the hole filled with another class is its own region
    labels[20:40, 20:40] = 0
    fc = label_regions(labels, bcss5())
    names = sorted(f["properties"]["classification"]["name"] for f in fc["features"])
    assert names == ["stroma", "tumor"] and "measurements" not in fc["features"][0]["properties"]
    json.dumps(fc)


def test_self_touching_region_stays_valid() -> None:
    labels = np.full((20, 20), IGNORE, dtype=np.uint8)
    labels[2:8, 2:8] = 0
    labels[8:14, 8:14] = 0  # touches the first square at one diagonal pixel corner
    fc = label_regions(labels, bcss5(), min_area=4)
    polys = [shape(f["geometry"]) for f in fc["features"]]
    assert polys and all(p.is_valid for p in polys)
    assert sum(p.area for p in polys) == 2 * 36


def smooth_labels(h: int, w: int, classes: int, seed: int, ignore: float = 0.0) -> np.ndarray:
    """Blobs of ``classes`` classes (and a share ``ignore`` of scattered ignore pixels)."""
    import cv2

    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.normal(size=(h, w)), (0, 0), 2.0)
    labels = np.digitize(field, np.quantile(field, np.linspace(0, 1, classes + 1)[1:-1])).astype(np.uint8)
    labels[rng.random((h, w)) < ignore] = IGNORE
    return labels


def pixel_squares(mask: np.ndarray, scale: float):
    from shapely import box, union_all

    ys, xs = np.nonzero(mask)
    return union_all(box(xs * scale, ys * scale, (xs + 1) * scale, (ys + 1) * scale))


def edges_between(labels: np.ndarray, a: int, b: int) -> int:
    """Pixel edges with class ``a`` on one side and ``b`` on the other."""
    pairs = [(labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])]
    return int(sum(((p == a) & (q == b)).sum() + ((p == b) & (q == a)).sum() for p, q in pairs))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regions_cover_the_pixels_exactly_and_neighbours_share_their_border(seed: int) -> None:
    from shapely import union_all

    scale, mpp = 3.0, 0.25
    labels = smooth_labels(41, 57, 4, seed, ignore=0.04)  # scattered ignore pixels: many holes
    fc = label_regions(labels, bcss5(), scale=scale, mpp=mpp, min_area=0, tolerance=0)
    polys = [shape(f["geometry"]) for f in fc["features"]]
    assert all(p.is_valid for p in polys)
    union = union_all(polys)
    assert union.area == pytest.approx((labels != IGNORE).sum() * scale**2, abs=1e-6)
    assert sum(p.area for p in polys) == pytest.approx(union.area, abs=1e-6)  # no overlap
    by_class = {}
    for f, p in zip(fc["features"], polys):
        k = bcss5().names.index(f["properties"]["classification"]["name"])
        by_class.setdefault(k, []).append(p)
        assert f["properties"]["measurements"]["Area µm^2"] == pytest.approx(p.area / scale**2 * (mpp * scale) ** 2)
    for k, parts in by_class.items():
        assert union_all(parts).symmetric_difference(pixel_squares(labels == k, scale)).area == pytest.approx(0, abs=1e-6)
    for a in by_class:
        for b in by_class:
            if a < b:
                shared = union_all(by_class[a]).boundary.intersection(union_all(by_class[b]).boundary).length
                assert shared == pytest.approx(edges_between(labels, a, b) * scale, abs=1e-6)


def test_area_measurement_is_pixels_times_the_pixel_area() -> None:
    labels = np.full((30, 40), IGNORE, dtype=np.uint8)
    labels[3:13, 5:12] = 0  # 70 px
    labels[20:29, 2:39] = 2  # 333 px
    labels[22:25, 10:13] = IGNORE  # a hole of 9 px
    fc = label_regions(labels, bcss5(), scale=8.0, mpp=0.5, min_area=0, tolerance=2)
    areas = {f["properties"]["classification"]["name"]: f["properties"]["measurements"]["Area µm^2"]
             for f in fc["features"]}
    assert areas == {"tumor": 70 * (0.5 * 8) ** 2, "inflammatory": (333 - 9) * (0.5 * 8) ** 2}


@pytest.mark.parametrize("tolerance", [1.0, 2.5])
def test_simplification_opens_no_gap_and_no_overlap_between_neighbours(tolerance: float) -> None:
    from shapely import union_all

    labels = smooth_labels(64, 80, 5, seed=3)  # every pixel labelled: the regions tile the rectangle
    exact = label_regions(labels, bcss5(), min_area=4, tolerance=0)["features"]
    fc = label_regions(labels, bcss5(), min_area=4, tolerance=tolerance)
    polys = [shape(f["geometry"]) for f in fc["features"]]
    assert len(polys) == len(exact) and all(p.is_valid for p in polys)
    assert sum(len(p.exterior.coords) for p in polys) < sum(len(shape(f["geometry"]).exterior.coords) for f in exact)
    union = union_all(polys)
    assert union.geom_type == "Polygon" and not union.interiors  # no gap between neighbours
    assert sum(p.area for p in polys) == pytest.approx(union.area, abs=1e-6)  # no overlap


def test_specks_go_to_the_region_around_them() -> None:
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[:, 10:] = 1
    labels[4:6, 4:6] = 2  # 4 px inside tumor
    labels[14, 9:11] = 3  # 2 px astride the tumor/stroma border
    labels[0, 0] = IGNORE  # 1 px of ignore in a corner
    fc = label_regions(labels, bcss5(), min_area=5, tolerance=0)
    polys = {f["properties"]["classification"]["name"]: shape(f["geometry"]) for f in fc["features"]}
    assert sorted(polys) == ["stroma", "tumor"]
    assert polys["tumor"].area + polys["stroma"].area == 400 and not polys["tumor"].interiors
    assert polys["tumor"].intersection(polys["stroma"]).area == 0


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
    assert xmax == 80 * 2.0  # level-0 coordinates (level0_scale 2): the right edge of the label map
    # 1 µm/px labels: a feature's area in µm² is its label px
    assert sum(f["properties"]["measurements"]["Area µm^2"] for f in feats) == (labels != IGNORE).sum()
