"""Composite mode: real class textures laid into a layout (the mosaic idea, in H&E).

A texture bank holds crops of single-class real H&E per BCSS code (the built-in one:
:data:`tissueseg.assets.TEXTURES`, see its ``provenance.csv``). :func:`composite_he` fills the
pixels of every code the bank has with a :func:`quilt` of that code's crops (dead leaves:
randomly rotated, flipped, rescaled and stain-jittered crops with irregular feathered
edges, laid until every pixel is covered) and blends the classes over a few pixels at
their boundaries. Codes the bank lacks (necrosis, glass, blood, ...) keep the procedural
texture of :func:`~tissueseg.synth.textures.render_he`, whose stain model follows the same
real statistics. Crops are placed in region pixels, so composite images are not
position-seamless: slides (:func:`~tissueseg.synth.writers.make_slide`) stay procedural.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from ..io import InputError, read_image
from .fields import bbox
from .stain import remix, unmix
from .textures import CLASS_DENSITY, REGION_MPP, STAND_IN_LUT, render_he

DEFAULT_TEXTURES = "builtin"
"""What ``textures`` means when not given: the built-in bank (it carries over to real tissue
best, see docs/synthetic-data.md)."""
FEATHER_PX = 1.5
"""Gaussian sigma (px) of the blend between neighbouring classes."""
LEAF_EDGE_PX = 12.0
"""Width (px) of a crop's feathered, irregular edge inside the quilt."""
SCALE_JITTER = 0.1
"""Crops are rescaled by exp(U(-s, s)) (sizes of cells differ a little between patients)."""
STAIN_JITTER = (0.08, 0.05)
"""Sigma of the per-image and per-crop gains on the haematoxylin and eosin densities."""
SHARPEN = 1.0
"""Crops are sharpened by an unsharp mask of amount U(0, s) (1 px): slides differ in focus and
compression, and the bank's slides are softer than many (e.g. the evaluation region)."""
BANK_SHARE = 0.5
"""Share of each class's connected areas that get bank textures; the others stay procedural, so
a class is learnt from two renderings (the bank's slides and the measured procedural model)."""
_MIN_SIDE = 32


@dataclass(frozen=True)
class TextureBank:
    """RGB crops (uint8, at :data:`REGION_MPP`) of single-class real H&E per BCSS code."""

    crops: dict[int, tuple[np.ndarray, ...]]
    folder: Path
    means: dict[int, np.ndarray]  # mean haematoxylin and eosin density of each code's crops

    @property
    def codes(self) -> frozenset[int]:
        """The BCSS codes the bank has textures for."""
        return frozenset(self.crops)


def _read_crop(path: Path, mpp: float) -> np.ndarray:
    rgb = read_image(path)
    if mpp != REGION_MPP:  # e.g. NCT-CRC-HE tiles at 0.5 µm/px: upsampled 2x
        f = mpp / REGION_MPP
        size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    if min(rgb.shape[:2]) < _MIN_SIDE:
        raise InputError(path, f"crop of {rgb.shape[1]}x{rgb.shape[0]} px at {REGION_MPP} µm/px: "
                               f"a texture needs at least {_MIN_SIDE} px a side")
    return np.ascontiguousarray(rgb)


@functools.lru_cache(maxsize=4)
def load_bank(folder: str | Path) -> TextureBank:
    """A texture bank folder: image files listed in its ``provenance.csv`` with at least the
    columns ``file``, ``code`` (BCSS code) and ``mpp`` (µm/px of the file)."""
    folder = Path(folder)
    table = folder / "provenance.csv"
    if not table.is_file():
        raise InputError(folder, "not a texture bank: no provenance.csv (columns file, code, mpp)")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"file", "code", "mpp"} - set(rows[0] if rows else {})
    if missing:
        raise InputError(table, f"no column(s) {', '.join(sorted(missing))}")
    crops: dict[int, list[np.ndarray]] = {}
    for row in rows:
        try:
            code, mpp = int(row["code"]), float(row["mpp"])
        except ValueError:
            raise InputError(table, f"row {row['file']}: code must be an integer and mpp a number") from None
        if not 0 <= code <= 21 or mpp <= 0:
            raise InputError(table, f"row {row['file']}: code {code} is not a BCSS code 0..21 or mpp {mpp} <= 0")
        crops.setdefault(code, []).append(_read_crop(folder / row["file"], mpp))
    if not crops:
        raise InputError(table, "lists no texture")
    means = {c: np.concatenate([unmix(x)[0].reshape(-1, 2) for x in v]).mean(axis=0) for c, v in crops.items()}
    return TextureBank({c: tuple(v) for c, v in sorted(crops.items())}, folder, means)


def resolve_textures(textures: str | Path | TextureBank | None) -> TextureBank | None:
    """``"builtin"`` -> the packaged bank, ``"none"`` / None -> procedural only, a folder -> its bank."""
    if textures is None or isinstance(textures, TextureBank):
        return textures
    if str(textures) == "none":
        return None
    if str(textures) == "builtin":
        from ..assets import TEXTURES

        return load_bank(TEXTURES)
    return load_bank(Path(textures).resolve())


def _leaf(crop: np.ndarray, rng: np.random.Generator, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A randomly rotated, flipped, rescaled and sharpened crop (float RGB) with its
    haematoxylin and eosin densities times ``gain`` (jittered), and its alpha: 1 inside,
    falling to 0 over an irregular band of about :data:`LEAF_EDGE_PX` at the border."""
    img = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    s = float(np.exp(rng.uniform(-SCALE_JITTER, SCALE_JITTER)))
    size = (max(_MIN_SIDE, round(img.shape[1] * s)), max(_MIN_SIDE, round(img.shape[0] * s)))
    img = cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_CUBIC)
    dens, residual = unmix(img)
    img = remix(dens * (gain * (1 + rng.normal(0, STAIN_JITTER[1], 2))).astype(np.float32), residual)
    img += np.float32(rng.uniform(0, SHARPEN)) * (img - cv2.GaussianBlur(img, (0, 0), 1.0))
    h, w = img.shape[:2]
    edge = np.minimum.outer(np.minimum(np.arange(h), np.arange(h)[::-1]),
                            np.minimum(np.arange(w), np.arange(w)[::-1])).astype(np.float32)
    wobble = cv2.resize(rng.uniform(0, 1, (4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip((edge - LEAF_EDGE_PX * wobble) / LEAF_EDGE_PX, 0, 1)
    return img, alpha


def quilt(crops: Sequence[np.ndarray], shape: tuple[int, int], rng: np.random.Generator,
          gain: np.ndarray | None = None) -> np.ndarray:
    """Fill ``shape`` with dead leaves of ``crops`` (float RGB): leaves on a shuffled, jittered
    grid about 0.6 of a crop apart, then more where anything is still uncovered. ``gain``
    multiplies every crop's haematoxylin and eosin densities (the image's stain)."""
    gain = np.ones(2) if gain is None else np.asarray(gain, np.float64)
    h, w = int(shape[0]), int(shape[1])
    acc = np.zeros((h, w, 3), np.float32)  # premultiplied colour
    cover = np.zeros((h, w), np.float32)
    side = float(np.median([min(c.shape[:2]) for c in crops]))
    step = max(8, int(0.6 * side))
    centres = [(y, x) for y in range(step // 2, h + step // 2, step) for x in range(step // 2, w + step // 2, step)]
    centres = [centres[i] for i in rng.permutation(len(centres))]

    def lay(cy: int, cx: int) -> None:
        img, alpha = _leaf(crops[int(rng.integers(len(crops)))], rng, gain)
        lh, lw = alpha.shape
        y0, x0 = cy - lh // 2, cx - lw // 2
        ys, xs = slice(max(y0, 0), min(y0 + lh, h)), slice(max(x0, 0), min(x0 + lw, w))
        if ys.start >= ys.stop or xs.start >= xs.stop:  # jittered off the canvas
            return
        a = alpha[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        acc[ys, xs] = a[..., None] * img[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] \
            + (1 - a[..., None]) * acc[ys, xs]
        cover[ys, xs] = a + (1 - a) * cover[ys, xs]

    jitter = step // 5
    for cy, cx in centres:
        lay(cy + int(rng.integers(-jitter, jitter + 1)), cx + int(rng.integers(-jitter, jitter + 1)))
    for _ in range(10_000):  # rare gaps (small crops, unlucky jitter)
        gaps = np.argwhere(cover < 0.98)
        if not len(gaps):
            break
        lay(*gaps[int(rng.integers(len(gaps)))])
    return acc / np.maximum(cover, 1e-6)[..., None]


def _bank_areas(sel: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A random ``share`` of the connected areas of ``sel`` (each kept with that probability)."""
    if share >= 1:
        return sel
    labels, n = ndimage.label(sel, structure=np.ones((3, 3)))
    keep = np.concatenate([[False], rng.random(n) < share])
    return keep[labels]


def composite_he(codes: np.ndarray, seed: int, bank: TextureBank, bank_share: float = BANK_SHARE) -> np.ndarray:
    """H&E RGB ``(H, W, 3)`` uint8 for a map of BCSS codes at :data:`REGION_MPP`: the bank's
    textures in a random ``bank_share`` of the connected areas of every code it has (or whose
    stand-in it has), procedural ones elsewhere; seeded."""
    base = render_he(codes, seed).astype(np.float32)
    rgb = base.copy()
    textured = STAND_IN_LUT[np.asarray(codes).astype(np.uint8)]
    rng = np.random.default_rng([int(seed), 0xC0B1])
    image_gain = 1 + rng.normal(0, STAIN_JITTER[0], 2)
    pad = int(np.ceil(4 * FEATHER_PX))
    h, w = textured.shape
    for code in sorted(set(np.unique(textured).tolist()) & bank.codes):
        sel = _bank_areas(textured == code, bank_share, np.random.default_rng([int(seed), 0xA4EA, code]))
        if not sel.any():
            continue
        rows, cols = bbox(sel)
        ys = slice(max(rows.start - pad, 0), min(rows.stop + pad, h))
        xs = slice(max(cols.start - pad, 0), min(cols.stop + pad, w))
        weight = cv2.GaussianBlur(sel[ys, xs].astype(np.float32), (0, 0), FEATHER_PX)[..., None]
        calibrate = CLASS_DENSITY[code] / bank.means[code] if code in CLASS_DENSITY else 1.0
        tex = quilt(bank.crops[code], weight.shape[:2], np.random.default_rng([int(seed), 0xC0B1, code]),
                    image_gain * calibrate)
        rgb[ys, xs] += weight * (tex - base[ys, xs])  # weights of all classes sum to 1
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
