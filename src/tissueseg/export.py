"""Prediction outputs: pyramidal label TIFF, GeoJSON regions, class areas, pictures.

Everything is written from the on-disk label store (zarr, ``(H, W)`` uint8 class indices,
255 = ignore) tile by tile or from a bounded downsampled copy, so memory stays flat in
slide area. Files per input, in ``out/<stem>/``: ``labels.tiff`` (tiled pyramid, palette,
resolution in cm; opens in QuPath and OpenSlide), ``probabilities.tiff`` (optional, one
uint8 page per class), ``thumbnail.png``, ``overlay.png``, ``tissue.png``,
``regions.geojson`` (QuPath annotations along pixel edges, with their area in µm²),
``areas.csv`` / ``areas.json``, and for one-level inputs (regions) ``labels.png`` at the
input's size (its scheme recorded, see :func:`~tissueseg.colorize.write_label_png`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import io
from .colorize import colorize, overlay, write_label_png
from .schemes import ClassScheme

TILE = 256
THUMB_SIZE = 1024
GEOJSON_MAX = 4096
"""Longest side of the label map that polygons are traced on."""


def downsample(labels: Any, max_size: int) -> tuple[np.ndarray, int]:
    """Every ``f``-th pixel of a 2-D (or ``(C, H, W)``) array-like so the longest side is <= max_size."""
    h, w = labels.shape[-2:]
    f = max(1, math.ceil(max(h, w) / max_size))
    return np.asarray(labels[..., ::f, ::f]), f


def _tiles(arr: Any, f: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles (row-major, padded) of ``arr[::f, ::f]`` read block by block."""
    h, w = arr.shape
    lh, lw = math.ceil(h / f), math.ceil(w / f)
    for ty in range(0, lh, tile):
        for tx in range(0, lw, tile):
            block = np.asarray(arr[ty * f : (ty + tile) * f : f, tx * f : (tx + tile) * f : f])
            out = np.zeros((tile, tile), dtype=np.uint8)
            out[: block.shape[0], : block.shape[1]] = block
            yield out


def pyramid_factors(height: int, width: int, tile: int = TILE) -> list[int]:
    """Downsample factors 1, 2, 4, ... until a level fits in one tile."""
    factors = [1]
    while max(math.ceil(height / factors[-1]), math.ceil(width / factors[-1])) > tile:
        factors.append(factors[-1] * 2)
    return factors


def write_label_tiff(labels: Any, path: str | Path, *, scheme: ClassScheme, mpp: float, tile: int = TILE) -> Path:
    """A tiled pyramidal palette TIFF of class indices (levels as a page chain, nearest
    downsampling by 2, deflate), resolution tags in cm, written tile by tile and atomically."""
    import tifffile

    h, w = labels.shape
    cmap = np.asarray(scheme.palette(), dtype=np.uint16).reshape(256, 3).T * 257
    with io.atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=h * w > 2**31) as tif:
        for f in pyramid_factors(h, w, tile):
            tif.write(
                _tiles(labels, f, tile), shape=(math.ceil(h / f), math.ceil(w / f)), dtype=np.uint8,
                tile=(tile, tile), photometric="palette", colormap=cmap, compression="zlib",
                resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)), resolutionunit="CENTIMETER",
                subfiletype=1 if f > 1 else 0, metadata=None,
            )
    return Path(path)


def write_probability_tiff(probs: Any, path: str | Path, *, mpp: float, tile: int = TILE) -> Path:
    """``(K, H, W)`` uint8 probabilities (x 255) as K tiled greyscale pages, one per class."""
    import tifffile

    k, h, w = probs.shape

    def tiles() -> Iterator[np.ndarray]:
        for c in range(k):
            yield from _tiles(_Plane(probs, c), 1, tile)

    with io.atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=k * h * w > 2**31) as tif:
        tif.write(tiles(), shape=(k, h, w), dtype=np.uint8, tile=(tile, tile), photometric="minisblack",
                  compression="zlib", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER", metadata=None)
    return Path(path)


class _Plane:
    """Class ``c`` of a ``(K, H, W)`` array-like, sliced lazily."""

    def __init__(self, arr: Any, c: int):
        self.arr, self.c, self.shape = arr, c, arr.shape[1:]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return np.asarray(self.arr[(self.c, *key)])


AREA_MEASUREMENT = "Area µm^2"
"""The name QuPath gives an object's area (``properties.measurements``, QuPath >= 0.4)."""


def label_regions(
    labels: np.ndarray,
    scheme: ClassScheme,
    *,
    scale: float = 1.0,
    mpp: float | None = None,
    min_area: float = 16.0,
    tolerance: float = 1.0,
) -> dict:
    """A GeoJSON FeatureCollection with one polygon (holes included) per connected region.

    Outlines follow pixel edges, so a region's polygon covers exactly its pixels and
    neighbouring regions share their border. Regions under ``min_area`` label-map px
    (specks of a class or of ignore) first go to the class around them, so nothing leaves
    a gap. ``tolerance`` (label-map px) simplifies every shared border once for all regions
    (:func:`shapely.coverage_simplify`): neighbours stay without gap or overlap.
    ``scale`` maps label-map px to output coordinates (level-0 slide px). Properties follow
    QuPath: ``objectType``, ``classification {name, color}``, ``isLocked``, and with ``mpp``
    (µm per output unit) ``measurements {"Area µm^2": region px x (mpp x scale)^2}``.
    """
    import shapely

    labels = absorb_specks(labels, min_area)
    polygons, classes = [], []
    for k in np.unique(labels):
        if k < scheme.num_classes:
            traced = _trace_edges(labels == k)
            polygons += traced
            classes += [int(k)] * len(traced)
    exact_areas = shapely.area(polygons)
    if tolerance > 0 and polygons:
        polygons = shapely.coverage_simplify(polygons, tolerance)
    else:
        polygons = shapely.simplify(polygons, 0)  # drops the vertices in the middle of straight edges
    features = []
    for poly, k, area in zip(polygons, classes, exact_areas):
        cls = scheme.classes[k]
        properties: dict[str, Any] = {"objectType": "annotation",
                                      "classification": {"name": cls.name, "color": list(cls.color)},
                                      "isLocked": False}
        if mpp is not None:
            properties["measurements"] = {AREA_MEASUREMENT: float(area) * (mpp * scale) ** 2}
        scaled = shapely.transform(poly, lambda xy: xy * scale)
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(scaled),
                         "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def absorb_specks(labels: np.ndarray, min_area: float) -> np.ndarray:
    """``labels`` with every 8-connected region under ``min_area`` px (any value, ignore
    included) given the value of the nearest pixel outside such regions."""
    small = np.zeros(labels.shape, dtype=np.uint8)
    for value in np.unique(labels):
        _, comp, stats, _ = cv2.connectedComponentsWithStats((labels == value).astype(np.uint8), connectivity=8)
        tiny = stats[:, cv2.CC_STAT_AREA] < min_area
        tiny[0] = False  # component 0 is everything else
        if tiny.any():
            small |= tiny[comp]
    if not small.any() or small.all():
        return labels
    _, nearest = cv2.distanceTransformWithLabels(small, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    value_of = np.zeros(int(nearest.max()) + 1, dtype=labels.dtype)
    keep = small == 0
    value_of[nearest[keep]] = labels[keep]
    out = labels.copy()
    out[~keep] = value_of[nearest[~keep]]
    return out


def _trace_edges(mask: np.ndarray) -> list[Any]:
    """Valid polygons (holes included) whose outlines run along the pixel edges of ``mask``.

    Contours traced on the mask upsampled x2 pass through the centres of the border
    half-pixels; half-pixel ``u`` lies on the edge ``(u + 1) // 2`` of its pixel (even ``u``:
    its left/top edge, odd: its right/bottom), which moves every vertex onto a pixel edge.
    """
    from shapely import make_valid
    from shapely.geometry import Polygon

    padded = np.pad(mask.astype(np.uint8), 1)
    up = cv2.resize(padded, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST_EXACT)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    rings = [_edge_ring(c) for c in contours]
    polygons = []
    for i, (_, _, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        holes, c = [], child
        while c != -1:
            holes.append(rings[c])
            c = hierarchy[c][0]
        poly = Polygon(rings[i], holes)
        if not poly.is_valid:  # 8-connected parts touching at a corner: split there
            fixed = make_valid(poly, method="structure")  # exact here, and 7x faster than "linework"
            polygons += [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
        else:
            polygons.append(poly)
    return polygons


def _edge_ring(contour: np.ndarray) -> np.ndarray:
    """A contour of the x2 upsampled, 1-px padded mask as pixel-edge coordinates of the mask."""
    pts = (contour[:, 0, :] + 1) // 2 - 1
    keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)
    return pts[keep].astype(np.float64) if keep.any() else pts[:1].astype(np.float64)


def class_areas(counts: np.ndarray, scheme: ClassScheme, mpp: float) -> list[dict]:
    """Per class: pixels, area in mm² (pixels x mpp² / 1e6) and proportion of tissue.

    ``counts`` has 256 bins indexed by label value (255 = ignore, not tissue).
    """
    counts = np.asarray(counts, dtype=np.int64)
    per_class = counts[: scheme.num_classes]
    tissue = int(per_class.sum())
    return [
        {"class": name, "pixels": int(n), "area_mm2": float(n) * mpp**2 / 1e6,
         "proportion": float(n) / tissue if tissue else 0.0}
        for name, n in zip(scheme.names, per_class)
    ]


def write_areas(rows: list[dict], csv_path: str | Path, json_path: str | Path) -> None:
    import pandas as pd

    with io.atomic_path(csv_path) as tmp:
        pd.DataFrame(rows, columns=["class", "pixels", "area_mm2", "proportion"]).to_csv(tmp, index=False)
    io.write_json(json_path, rows)


def write_outputs(
    dest: Path,
    labels: Any,
    probs: Any | None,
    *,
    scheme: ClassScheme,
    mpp: float,
    level0_scale: float,
    counts: np.ndarray,
    thumbnail: np.ndarray,
    tissue: np.ndarray | None,
    region_size: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Every output of one prediction (see the module docstring); returns name -> path.

    ``mpp``: µm/px of ``labels``; ``level0_scale``: level-0 px per label px;
    ``thumbnail``: the input's RGB thumbnail; ``tissue``: its tissue mask (None = all).
    """
    out: dict[str, Path] = {}
    out["labels.tiff"] = write_label_tiff(labels, dest / "labels.tiff", scheme=scheme, mpp=mpp)
    if probs is not None:
        out["probabilities.tiff"] = write_probability_tiff(probs, dest / "probabilities.tiff", mpp=mpp)
    small, _ = downsample(labels, THUMB_SIZE)
    out["thumbnail.png"] = io.write_png(dest / "thumbnail.png", colorize(small, scheme))
    rgb = cv2.resize(thumbnail, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    out["overlay.png"] = io.write_png(dest / "overlay.png", overlay(rgb, small, scheme, alpha=0.4))
    mask = np.ones(thumbnail.shape[:2], dtype=bool) if tissue is None else tissue
    out["tissue.png"] = io.write_png(dest / "tissue.png", mask.astype(np.uint8) * 255)
    traced, f = downsample(labels, GEOJSON_MAX)
    regions = label_regions(traced, scheme, scale=f * level0_scale, mpp=mpp / level0_scale)
    out["regions.geojson"] = io.write_text(dest / "regions.geojson", json.dumps(regions, separators=(",", ":")))
    rows = class_areas(counts, scheme, mpp)
    write_areas(rows, dest / "areas.csv", dest / "areas.json")
    out["areas.csv"], out["areas.json"] = dest / "areas.csv", dest / "areas.json"
    if region_size is not None:
        full = cv2.resize(np.asarray(labels[:]), region_size, interpolation=cv2.INTER_NEAREST)
        out["labels.png"] = write_label_png(dest / "labels.png", full, scheme)
    return {k: str(v) for k, v in out.items()}
