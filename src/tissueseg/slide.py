"""Reading regions and whole-slide images at a chosen µm/px, and tissue detection.

:func:`open_image` gives one reader interface over three back ends:

- vendor slide formats (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, ...) through OpenSlide;
- other TIFFs (page-chain or SubIFD pyramids, single-level regions, tiled or stripped)
  through tifffile + zarr, read lazily tile by tile; OpenSlide when tifffile cannot;
- PNG/JPEG/BMP regions through PIL (held in memory: regions are bounded).

Coordinates follow OpenSlide: ``read_region(x, y, w, h, level)`` takes ``x, y`` in
level-0 pixels and ``w, h`` in pixels of ``level``. Pixels outside the image are white
(glass); transparency is composited on white.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .io import IMAGE_SUFFIXES, InputError, read_image

MPP_IN_NAME = re.compile(r"_MPP-(\d+(?:\.\d+)?)", re.IGNORECASE)
"""BCSS region names carry their resolution: ``..._MPP-0.2500_...``."""
MAX_MPP = 50.0
"""Resolution tags above this (e.g. the 72 dpi default = 353 µm/px) are not microscope data."""
LEVEL_TOLERANCE = 0.02
"""A level whose µm/px exceeds the target by at most 2% still counts as fine enough."""
THUMB_BLOCK = 4096
CLOSE_UM = 40.0
"""Tissue detection closes glass gaps narrower than twice this (fat cells, mucus, lumina)."""
HOLE_UM2 = 50_000.0
"""Glass enclosed by tissue and smaller than this (0.05 mm²) counts as tissue."""
SPECK_UM2 = 10_000.0
"""Separate pieces smaller than this (0.01 mm²) are dust, not tissue."""


class SlideReader:
    """A uniform read-only view of an image pyramid; subclasses implement ``_read``."""

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB at ``level``; ``x, y`` in level-0 px; outside -> white."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} not in 0..{self.level_count - 1}")
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.path}: empty region {w}x{h}")
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        lx, ly = int(math.floor(x / ds)), int(math.floor(y / ds))
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read(level, x0, y0, x1, y1)
        return out

    def _read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """RGB of ``[y0:y1, x0:x1]`` in ``level`` pixels, inside the level."""
        raise NotImplementedError

    def thumbnail(self, max_size: int) -> np.ndarray:
        """The whole image, longest side ``max_size`` at most, read block by block."""
        w0, h0 = self.dimensions
        factor = max(w0, h0) / max_size if max(w0, h0) > max_size else 1.0
        tw, th = max(1, round(w0 / factor)), max(1, round(h0 / factor))
        level = max(i for i, d in enumerate(self.level_downsamples) if d <= factor * (1 + LEVEL_TOLERANCE) or i == 0)
        lw, lh = self.level_dimensions[level]
        out = np.empty((th, tw, 3), dtype=np.uint8)
        # block edges in thumbnail px, mapped to level px, so every block is resized to its exact box
        step = max(1, int(THUMB_BLOCK * tw / lw))
        xs, ys = list(range(0, tw, step)) + [tw], list(range(0, th, step)) + [th]
        for ty0, ty1 in zip(ys[:-1], ys[1:]):
            ly0, ly1 = round(ty0 * lh / th), max(round(ty1 * lh / th), round(ty0 * lh / th) + 1)
            for tx0, tx1 in zip(xs[:-1], xs[1:]):
                lx0, lx1 = round(tx0 * lw / tw), max(round(tx1 * lw / tw), round(tx0 * lw / tw) + 1)
                ds = self.level_downsamples[level]
                block = self.read_region(round(lx0 * ds), round(ly0 * ds), lx1 - lx0, ly1 - ly0, level)
                out[ty0:ty1, tx0:tx1] = _resize(block, tx1 - tx0, ty1 - ty0)
        return out

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.dimensions}, levels={self.level_count}, mpp={self.mpp})"


class OpenSlideReader(SlideReader):
    """Everything OpenSlide reads (vendor formats, generic tiled TIFF)."""

    def __init__(self, path: Path, slide: Any):
        self.path, self._slide = path, slide
        self.level_dimensions = tuple(tuple(d) for d in slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in slide.level_downsamples)
        mpp = slide.properties.get("openslide.mpp-x")
        self.mpp = _plausible(float(mpp)) if mpp else None

    def _read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        rgba = np.asarray(self._slide.read_region((round(x0 * ds), round(y0 * ds)), level, (x1 - x0, y1 - y0)))
        return _on_white(rgba)

    def close(self) -> None:
        self._slide.close()


class TiffReader(SlideReader):
    """TIFF pyramids and regions through tifffile + zarr (lazy, tile by tile)."""

    def __init__(self, path: Path, tif: Any):
        import zarr

        self.path, self._tif = path, tif
        series = tif.series[0]
        axes = series.axes
        if not ("Y" in axes and "X" in axes) or any(a not in "YXS" for a in axes):
            raise InputError(path, f"unsupported TIFF layout (axes {axes})")
        self._axes = axes
        self._levels = [zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        dims = []
        for lv in series.levels:
            shape = dict(zip(lv.axes, lv.shape))
            dims.append((int(shape["X"]), int(shape["Y"])))
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple((dims[0][0] / w + dims[0][1] / h) / 2 for w, h in dims)
        self.mpp = _tiff_mpp(series.pages[0] if hasattr(series, "pages") else tif.pages[0])

    def _read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        arr = self._levels[level]
        sl = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None) for a in self._axes)
        block = np.asarray(arr[sl])
        if "S" in self._axes and self._axes.index("S") == 0:
            block = np.moveaxis(block, 0, -1)
        return _to_rgb8(block, self.path)

    def close(self) -> None:
        self._tif.close()


class ArrayReader(SlideReader):
    """A region image held in memory (PNG, JPEG, BMP; anything PIL reads)."""

    def __init__(self, path: Path, rgb: np.ndarray, mpp: float | None):
        self.path, self._rgb, self.mpp = path, rgb, mpp
        self.level_dimensions = ((rgb.shape[1], rgb.shape[0]),)
        self.level_downsamples = (1.0,)

    def _read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._rgb[y0:y1, x0:x1]


def open_image(path: str | Path, mpp: float | None = None) -> SlideReader:
    """A reader for a region or slide; ``mpp`` (µm/px at level 0) overrides the file's.

    Without ``mpp`` the resolution comes from a BCSS name (``_MPP-0.2500``), then from the
    file (OpenSlide properties, TIFF resolution tags); ``reader.mpp`` is None when unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    if mpp is not None and not mpp > 0:
        raise InputError(path, f"mpp must be positive, got {mpp}")
    reader = _open(path)
    if mpp is not None:
        reader.mpp = float(mpp)
    elif (m := MPP_IN_NAME.search(path.name)) and float(m.group(1)) > 0:
        reader.mpp = float(m.group(1))
    return reader


def image_mpp(path: str | Path) -> float | None:
    """The µm/px of an image's level 0 from its name (``_MPP-0.2500``), then its metadata
    (OpenSlide properties, TIFF resolution tags, PNG/JPEG dpi); None when nothing says it."""
    path = Path(path)
    if (m := MPP_IN_NAME.search(path.name)) and float(m.group(1)) > 0:
        return float(m.group(1))
    if path.suffix.lower() in IMAGE_SUFFIXES and path.suffix.lower() not in (".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(path) as img:
                dpi = img.info.get("dpi")
        except (OSError, SyntaxError, ValueError):
            raise InputError(path, "cannot read image header") from None
        return _plausible(25400.0 / float(dpi[0])) if dpi and float(dpi[0]) > 0 else None
    with open_image(path) as reader:
        return reader.mpp


def _open(path: Path) -> SlideReader:
    import openslide

    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES and suffix not in (".tif", ".tiff"):
        return ArrayReader(path, read_image(path), None)
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor not in (None, "generic-tiff"):
        return _openslide(path)
    if suffix in (".tif", ".tiff") or vendor == "generic-tiff":
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, OSError, ValueError):
            tif = None
        if tif is not None:
            try:
                return TiffReader(path, tif)
            except InputError:
                tif.close()
                if vendor is None:
                    raise
            except (ValueError, KeyError, IndexError, NotImplementedError):
                tif.close()
        if vendor == "generic-tiff":
            return _openslide(path)
    try:
        return ArrayReader(path, read_image(path), None)
    except InputError:
        raise InputError(path, "not a readable image or slide (PIL, tifffile and OpenSlide refuse it)") from None


def _openslide(path: Path) -> OpenSlideReader:
    import openslide

    try:
        return OpenSlideReader(path, openslide.OpenSlide(str(path)))
    except openslide.OpenSlideError as exc:
        raise InputError(path, f"cannot open slide ({exc})") from None


def require_mpp(reader: SlideReader) -> float:
    """``reader.mpp`` or the one-line error every command shows for slides without it."""
    if reader.mpp is None:
        raise InputError(reader.path, "no resolution metadata; pass --mpp")
    return reader.mpp


def plan_read(reader: SlideReader, target_mpp: float) -> tuple[int, float]:
    """``(level, scale)``: the coarsest level still at least as fine as ``target_mpp``.

    ``scale`` multiplies that level's pixels into target pixels (< 1 shrinks, > 1 enlarges
    when the target is finer than level 0).
    """
    if not target_mpp > 0:
        raise ValueError(f"target µm/px must be positive, got {target_mpp}")
    want = target_mpp / require_mpp(reader)
    level = max(i for i, d in enumerate(reader.level_downsamples) if i == 0 or d <= want * (1 + LEVEL_TOLERANCE))
    return level, reader.level_downsamples[level] / want


def target_size(reader: SlideReader, target_mpp: float) -> tuple[int, int]:
    """``(width, height)`` of the whole image at ``target_mpp``."""
    want = target_mpp / require_mpp(reader)
    w0, h0 = reader.dimensions
    return max(1, round(w0 / want)), max(1, round(h0 / want))


def read_at(reader: SlideReader, x: int, y: int, w: int, h: int, target_mpp: float) -> np.ndarray:
    """A ``(h, w, 3)`` window at ``target_mpp``; ``x, y, w, h`` in target pixels.

    Read from the level :func:`plan_read` picks and resized (INTER_AREA down, INTER_LINEAR
    up). When the level-to-target factor is 1 or its inverse an integer, windows on the
    target grid map onto whole level pixels and neighbouring windows agree exactly;
    otherwise their source boxes are rounded outwards to whole pixels (< 1 px shift).
    """
    level, scale = plan_read(reader, target_mpp)
    ds = reader.level_downsamples[level]
    if abs(scale - 1.0) < 1e-9:
        return reader.read_region(round(x * ds), round(y * ds), w, h, level)
    lx0, ly0 = math.floor(x / scale + 1e-9), math.floor(y / scale + 1e-9)
    lx1, ly1 = math.ceil((x + w) / scale - 1e-9), math.ceil((y + h) / scale - 1e-9)
    block = reader.read_region(round(lx0 * ds), round(ly0 * ds), max(lx1 - lx0, 1), max(ly1 - ly0, 1), level)
    return _resize(block, w, h)


def tissue_mask(thumbnail_rgb: np.ndarray, mpp: float, *, min_saturation: int = 12,
                max_threshold: int = 30) -> np.ndarray:
    """Tissue (True) vs glass on a thumbnail of ``mpp`` µm/px: saturation, Otsu, morphology in µm.

    Pixels more saturated than the Otsu threshold, clipped to ``[min_saturation,
    max_threshold]`` (glass alone gives no tissue; an all-tissue image is not split in
    half), are stained. Pale tissue between stained structures counts too: gaps narrower
    than ``2 * CLOSE_UM`` are closed (fat cells, mucus, lumina, tears) and enclosed glass
    smaller than ``HOLE_UM2`` is filled; separate pieces smaller than ``SPECK_UM2`` (dust)
    are dropped. Sizes are in micrometres, so the result does not depend on the
    thumbnail's size.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3 or thumbnail_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 thumbnail, got {thumbnail_rgb.dtype} {thumbnail_rgb.shape}")
    if not mpp > 0:
        raise ValueError(f"thumbnail µm/px must be positive, got {mpp}")
    sat = cv2.cvtColor(thumbnail_rgb, cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.GaussianBlur(sat, (3, 3), 0)
    otsu = threshold_otsu(sat) if sat.min() != sat.max() else 0
    mask = _close(sat > int(np.clip(otsu, min_saturation, max_threshold)), CLOSE_UM / mpp)
    mask = _fill_holes(mask, HOLE_UM2 / mpp**2)
    return remove_small_objects(mask, max_size=round(SPECK_UM2 / mpp**2))


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing by a disc of ``radius`` px (exact Euclidean distances, any radius
    at the same cost); the image border does not erode."""
    def within(a: np.ndarray) -> np.ndarray:  # pixels at most `radius` from a True pixel of `a`
        return cv2.distanceTransform((~a).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= radius

    return ~within(~within(mask))


def _fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """``mask`` with its holes smaller than ``max_area`` px filled; glass touching the
    image border is not a hole."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    x, y, w, h, area = stats.T  # label 0 is the mask itself: filling it changes nothing
    height, width = mask.shape
    hole = (x > 0) & (y > 0) & (x + w < width) & (y + h < height) & (area < max_area)
    return mask | hole[labels]


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    interp = cv2.INTER_AREA if w <= img.shape[1] and h <= img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (premultiplied or not, as OpenSlide gives) composited on white."""
    rgb, alpha = rgba[..., :3].astype(np.uint16), rgba[..., 3:4].astype(np.uint16)
    if (alpha == 255).all():
        return np.ascontiguousarray(rgba[..., :3])
    return (rgb * alpha // 255 + (255 - alpha)).astype(np.uint8)


def _to_rgb8(block: np.ndarray, path: Path) -> np.ndarray:
    if block.dtype != np.uint8:
        if block.dtype == np.uint16:
            block = (block // 257).astype(np.uint8)
        else:
            raise InputError(path, f"unsupported TIFF sample type {block.dtype}")
    if block.ndim == 2:
        return np.repeat(block[..., None], 3, axis=2)
    if block.shape[2] == 4:
        alpha = block[..., 3:4].astype(np.uint16)
        return (block[..., :3].astype(np.uint16) * alpha // 255 + (255 - alpha)).astype(np.uint8)
    if block.shape[2] == 1:
        return np.repeat(block, 3, axis=2)
    return np.ascontiguousarray(block[..., :3])


def _tiff_mpp(page: Any) -> float | None:
    tags = page.tags
    xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if not num or not den:
        return None
    per_unit = num / den
    um = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    return _plausible(um / per_unit) if um else None


def _plausible(mpp: float) -> float | None:
    return mpp if 0 < mpp <= MAX_MPP else None
