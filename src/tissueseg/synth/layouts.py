"""Layouts (which class where): argmaxes of smooth random fields held at low resolution and
interpolated bilinearly at full resolution (regions and slides), or crops of real BCSS masks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

from .textures import STAND_IN_LUT

LAYOUT_STEP = 16
"""Low-res layout fields hold one value per 16 x 16 pixels."""

def codes_from_fields(fields: np.ndarray, labels: np.ndarray, step: float, x0: int, y0: int, w: int, h: int
                       ) -> np.ndarray:
    """Codes of a window: argmax of the low-res ``fields`` ``(Ly, Lx, K)`` interpolated
    bilinearly, low-res sample ``i`` sitting at pixel ``(i + 0.5) * step - 0.5``. Pixels
    get the same code whatever window asks for them (tiles agree with the whole)."""
    mx = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) / step - 0.5
    my = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) / step - 0.5
    lx0 = max(int(np.floor(mx[0])) - 1, 0)
    ly0 = max(int(np.floor(my[0])) - 1, 0)
    lx1 = min(int(np.ceil(mx[-1])) + 2, fields.shape[1])
    ly1 = min(int(np.ceil(my[-1])) + 2, fields.shape[0])
    map_x = np.tile((mx - lx0).astype(np.float32), (h, 1))
    map_y = np.tile((my - ly0).astype(np.float32)[:, None], (1, w))
    best = idx = None
    for k in range(fields.shape[2]):
        band = np.ascontiguousarray(fields[ly0:ly1, lx0:lx1, k])
        v = cv2.remap(band, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if best is None:
            best, idx = v, np.zeros((h, w), np.uint8)
        else:
            win = v > best
            best = np.where(win, v, best)
            idx[win] = k
    return labels[idx]


def _roi_field(low: tuple[int, int], rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """Large where outside the ROI: a wavy cut across a corner or along a side."""
    ly, lx = low
    yy, xx = np.mgrid[0:ly, 0:lx].astype(np.float32)
    corner = rng.integers(4)
    u = (xx / max(lx - 1, 1)) if corner % 2 == 0 else 1 - xx / max(lx - 1, 1)
    v = (yy / max(ly - 1, 1)) if corner < 2 else 1 - yy / max(ly - 1, 1)
    a = rng.uniform(0.0, 1.0)  # 0: along a side, 1: diagonal cut of a corner
    ramp = (a * u + v) / (1 + a)
    thr = rng.uniform(0.1, 0.2)
    return thr - ramp + 0.03 * noise


def layout_fields(low: tuple[int, int], codes: Sequence[int], rng: np.random.Generator, sigma: float
                   ) -> np.ndarray:
    k = len(codes)
    noise = rng.standard_normal((k, *low)).astype(np.float32)
    fields = np.stack([ndimage.gaussian_filter(n, sigma, mode="wrap") for n in noise], axis=-1)
    fields /= fields.reshape(-1, k).std(axis=0) + 1e-6
    return fields + rng.normal(0, 0.15, k).astype(np.float32)


def ensure_present(fields: np.ndarray, allowed: np.ndarray, rng: np.random.Generator, sigma: float,
                    want: Sequence[int]) -> None:
    """Raise the field of every index in ``want`` that never wins, at a random allowed spot."""
    ly, lx = fields.shape[:2]
    yy, xx = np.mgrid[0:ly, 0:lx]
    for _ in range(8):
        win = np.argmax(fields, axis=-1)
        missing = [i for i in want if not ((win == i) & allowed).any()]
        if not missing:
            return
        cand = np.argwhere(allowed)
        for i in missing:
            cy, cx = cand[rng.integers(len(cand))]
            fields[..., i] += 4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (1.5 * sigma) ** 2))


def random_layout(shape: tuple[int, int], seed: int, codes: Sequence[int] = (1, 2, 3, 4, 9), scale: float = 1.0,
                  roi: bool = True) -> np.ndarray:
    """A random ``(H, W)`` uint8 code map: smooth blobs a few hundred pixels across (at
    ``scale`` 1 and 0.25 µm/px), every code in ``codes`` present; with ``roi`` a wavy
    border or corner region of outside_roi (0) like a BCSS ROI polygon."""
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    codes = [int(c) for c in codes]
    if not codes or len(set(codes)) != len(codes) or min(codes) < 0 or max(codes) > 21:
        raise ValueError(f"codes must be distinct BCSS codes 0..21, got {codes}")
    rng = np.random.default_rng([int(seed), 0x1A40])
    low = (math.ceil(h / LAYOUT_STEP) + 1, math.ceil(w / LAYOUT_STEP) + 1)
    sigma = max(90.0 * scale / LAYOUT_STEP, 0.5)
    fields = layout_fields(low, codes, rng, sigma)
    labels = np.array(codes, np.uint8)
    allowed = np.ones(low, bool)
    outside = None
    if roi and 0 not in codes:
        noise = ndimage.gaussian_filter(rng.standard_normal(low).astype(np.float32), 2 * sigma, mode="wrap")
        rf = _roi_field(low, rng, noise / (noise.std() + 1e-6))
        allowed = rf < -0.05
        if allowed.any():
            outside = codes_from_fields(np.stack([rf, np.zeros_like(rf)], axis=-1), np.array([1, 0], np.uint8),
                                         LAYOUT_STEP, 0, 0, w, h).astype(bool)
        else:
            allowed[:] = True
    ensure_present(fields, allowed, rng, sigma, range(len(codes)))
    out = codes_from_fields(fields, labels, LAYOUT_STEP, 0, 0, w, h)
    for _ in range(4):  # bilinear interpolation can still lose a tiny blob: grow it
        kept = out if outside is None else np.where(outside, 255, out)
        missing = [i for i, c in enumerate(codes) if not (kept == c).any()]
        if not missing:
            break
        for i in missing:
            fields[..., i] += 0.5 * (fields[..., i] > fields.max(axis=-1) - 1)
        out = codes_from_fields(fields, labels, LAYOUT_STEP, 0, 0, w, h)
    if outside is not None:
        out[outside] = 0
    return out


def layout_from_mask(mask: np.ndarray, shape: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
    """A real BCSS code mask as a layout: a seeded random crop of ``shape`` (or the whole
    mask), codes without a texture mapped to their :data:`STAND_INS`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D codes, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 21):
        raise ValueError(f"mask holds values {mask.min()}..{mask.max()}, not BCSS codes 0..21")
    if shape is not None:
        ch, cw = int(shape[0]), int(shape[1])
        if ch > mask.shape[0] or cw > mask.shape[1]:
            raise ValueError(f"crop {ch}x{cw} is larger than the mask {mask.shape[0]}x{mask.shape[1]}")
        rng = np.random.default_rng([int(seed), 0xC207])
        y = int(rng.integers(mask.shape[0] - ch + 1))
        x = int(rng.integers(mask.shape[1] - cw + 1))
        mask = mask[y : y + ch, x : x + cw]
    return STAND_IN_LUT[mask.astype(np.uint8)]



def slide_fields(shape: tuple[int, int], seed: int, codes: Sequence[int], step: int) -> tuple[np.ndarray, np.ndarray]:
    """Low-res layout fields of a slide: a few irregular tissue blobs on glass (code 0)."""
    rng = np.random.default_rng([int(seed), 0x511D])
    low = (math.ceil(shape[0] / step) + 1, math.ceil(shape[1] / step) + 1)
    sigma = 90.0 / step
    fields = layout_fields(low, codes, rng, sigma)
    yy, xx = np.mgrid[0 : low[0], 0 : low[1]].astype(np.float32)
    tissue = np.zeros(low, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.25, 0.75) * low[0], rng.uniform(0.25, 0.75) * low[1]
        ry, rx = rng.uniform(0.12, 0.25) * low[0], rng.uniform(0.12, 0.25) * low[1]
        tissue = np.maximum(tissue, np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)))
    wobble = ndimage.gaussian_filter(rng.standard_normal(low).astype(np.float32), max(0.03 * max(low), 2.0),
                                     mode="wrap")
    tissue += 0.12 * wobble / (wobble.std() + 1e-6)
    glass = 30 * (0.35 - tissue)
    fields = np.concatenate([fields, glass[..., None]], axis=-1)
    ensure_present(fields, glass < -2, rng, sigma, range(len(codes)))
    return fields, np.append(np.array(codes, np.uint8), np.uint8(0))

