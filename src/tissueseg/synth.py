"""Generated H&E tissue with known masks: regions, BCSS-style datasets and pyramidal slides.

Pixels come from a Beer-Lambert stain model: every tissue class has a texture that sets
haematoxylin and eosin densities (nuclei, fibres, vacuoles, debris), the optical density
``OD = dH * vH + dE * vE + residual`` becomes ``RGB = 255 * exp(-OD)``, and the stain
vectors and intensities vary per image. Every texture is a function of *global* position
in micrometres (hashed jittered-grid point processes, sums of sinusoids), so a slide
rendered tile by tile has no seams and its levels show the same structures.

Layouts (which class where) are argmaxes of smooth random fields, held at low resolution
and interpolated bilinearly at full resolution, or real BCSS masks.
"""

from __future__ import annotations

import functools
import math
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from .batch import run_batch
from .io import InputError, atomic_path, read_mask, write_png

TEXTURE_CODES: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 7, 9)
"""BCSS codes with a texture of their own: outside_roi (glass), tumor, stroma,
lymphocytic_infiltrate, necrosis_or_debris, blood (red cells), exclude (out-of-focus
tissue with pen ink) and fat."""

STAND_INS: dict[int, int] = {
    5: 4,  # glandular_secretions -> necrosis_or_debris (pale, acellular)
    8: 1,  # metaplasia_NOS -> tumor
    10: 3,  # plasma_cells -> lymphocytic_infiltrate
    11: 3,  # other_immune_infiltrate -> lymphocytic_infiltrate
    12: 4,  # mucoid_material -> necrosis_or_debris
    13: 1,  # normal_acinus_or_duct -> tumor (epithelium)
    14: 2,  # lymphatics -> stroma
    15: 2,  # undetermined -> stroma
    16: 2,  # nerve -> stroma
    17: 1,  # skin_adnexa -> tumor (epithelium)
    18: 6,  # blood_vessel -> blood
    19: 1,  # angioinvasion -> tumor
    20: 1,  # dcis -> tumor
    21: 2,  # other -> stroma
}
"""BCSS codes without a texture of their own and the textured code that stands in."""

_STAND_IN_LUT = np.arange(256, dtype=np.uint8)
for _code, _to in STAND_INS.items():
    _STAND_IN_LUT[_code] = _to
_STAND_IN_LUT.setflags(write=False)

TRAIN_SITES = ("A1", "A2", "AR", "BH", "C8", "D8", "E9")
TEST_SITES = ("OL", "LL", "E2", "EW", "GM", "S3")
"""BCSS training sites and the held-out test sites of the ``bcss-sites`` split."""

REGION_MPP = 0.25
_LAYOUT_STEP = 16  # low-res layout fields: one value per 16x16 pixels


# ----------------------------------------------------------------------------- hashing


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash_uniform(ix: np.ndarray, iy: np.ndarray, key: int, n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) per integer cell ``(ix, iy)``: shape ``ix.shape + (n,)``."""
    with np.errstate(over="ignore"):
        h = _mix(ix.astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                 ^ _mix(iy.astype(np.int64).view(np.uint64) + np.uint64(key & 0xFFFFFFFFFFFF)))
        out = [_mix(h + np.uint64(0x632BE59BD9B4E019 * (k + 1) & 0xFFFFFFFFFFFFFFFF)) for k in range(n)]
    return np.stack([(o >> np.uint64(11)).astype(np.float64) / float(1 << 53) for o in out], axis=-1)


def _key(seed: int, salt: int) -> int:
    return (int(seed) * 1_000_003 + salt * 7919) & 0xFFFFFFFFFFFF


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Window:
    """Pixels ``[x0, x0 + w) x [y0, y0 + h)`` of a canvas whose pixels are ``mpp`` µm."""

    x0: int
    y0: int
    w: int
    h: int
    mpp: float

    def xs(self) -> np.ndarray:
        return ((np.arange(self.w) + self.x0 + 0.5) * self.mpp).astype(np.float32)

    def ys(self) -> np.ndarray:
        return ((np.arange(self.h) + self.y0 + 0.5) * self.mpp).astype(np.float32)


def _sin_field(win: _Window, waves: np.ndarray, box: tuple[slice, slice] | None = None) -> np.ndarray:
    """``sum_k a_k sin(wx_k x + wy_k y + phi_k)`` over the window (x, y in µm), computed
    separably as one small matrix product. ``waves`` rows are ``(a, wx, wy, phi)``."""
    xs, ys = win.xs().astype(np.float64), win.ys().astype(np.float64)
    if box is not None:
        ys, xs = ys[box[0]], xs[box[1]]
    a, wx, wy, phi = waves.T
    ax, by = np.outer(xs, wx), np.outer(ys, wy) + phi
    left = np.concatenate([a * np.cos(by), a * np.sin(by)], axis=1).astype(np.float32)
    right = np.concatenate([np.sin(ax), np.cos(ax)], axis=1).T.astype(np.float32)
    return left @ right


def _value_noise(win: _Window, cell_um: float, key: int) -> np.ndarray:
    """Smooth noise, about unit std, from hashed values on a global ``cell_um`` grid
    interpolated bicubically: continuous across windows and levels. On pixels larger than
    a cell the grid coarsens to the pixel size and the amplitude drops as averaging would."""
    gain = min(1.0, cell_um / win.mpp)
    cell_um = max(cell_um, win.mpp)
    x_um = (np.arange(win.x0, win.x0 + win.w) + 0.5) * win.mpp / cell_um
    y_um = (np.arange(win.y0, win.y0 + win.h) + 0.5) * win.mpp / cell_um
    ix0, iy0 = math.floor(x_um[0]) - 2, math.floor(y_um[0]) - 2
    gx, gy = np.meshgrid(np.arange(ix0, math.floor(x_um[-1]) + 4), np.arange(iy0, math.floor(y_um[-1]) + 4))
    grid = ((_hash_uniform(gx, gy, key, 1)[..., 0] - 0.5) * 3.46 * gain).astype(np.float32)
    map_x = np.tile((x_um - ix0).astype(np.float32), (win.h, 1))
    map_y = np.tile((y_um - iy0).astype(np.float32)[:, None], (1, win.w))
    return cv2.remap(grid, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def _waves(rng: np.random.Generator, k: int, wavelength: tuple[float, float], amp: float) -> np.ndarray:
    """Random plane waves; amplitudes scaled so the field's gradient is about ``amp``/µm."""
    lam = rng.uniform(*wavelength, size=k)
    theta = rng.uniform(0, 2 * np.pi, size=k)
    w = 2 * np.pi / lam
    a = amp / w / math.sqrt(k)
    return np.stack([a, w * np.cos(theta), w * np.sin(theta), rng.uniform(0, 2 * np.pi, size=k)], axis=1)


def _linear_wave(rng: np.random.Generator, k: float) -> np.ndarray:
    """A plane of slope ``k``/µm as a wave row (``a sin(small w . p)`` ~ linear over slides
    up to tens of cm), giving the fibres a dominant direction."""
    theta = rng.uniform(0, np.pi)
    w = 1e-5  # 1/µm: sin stays linear within 0.5 % over 10 cm
    return np.array([[k / w, w * np.cos(theta), w * np.sin(theta), 0.0]])


def _wave_grad(waves: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.cos(np.outer(x, waves[:, 1]) + np.outer(y, waves[:, 2]) + waves[:, 3])
    return c @ (waves[:, 0] * waves[:, 1]), c @ (waves[:, 0] * waves[:, 2])


def _grid_points(win: _Window, cell_um: float, key: int, n_extra: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One jittered point per ``cell_um`` cell over the window: local pixel ``x``, ``y`` and
    ``n_extra`` uniforms per point (the same points whatever the window: global hashing)."""
    x_lo, x_hi = win.x0 * win.mpp, (win.x0 + win.w) * win.mpp
    y_lo, y_hi = win.y0 * win.mpp, (win.y0 + win.h) * win.mpp
    ix = np.arange(math.floor(x_lo / cell_um), math.ceil(x_hi / cell_um))
    iy = np.arange(math.floor(y_lo / cell_um), math.ceil(y_hi / cell_um))
    gx, gy = np.meshgrid(ix, iy)
    u = _hash_uniform(gx.ravel(), gy.ravel(), key, 2 + n_extra)
    px = (gx.ravel() + u[:, 0]) * cell_um / win.mpp - win.x0 - 0.5
    py = (gy.ravel() + u[:, 1]) * cell_um / win.mpp - win.y0 - 0.5
    inside = (px >= -0.5) & (px < win.w - 0.5) & (py >= -0.5) & (py < win.h - 0.5)
    return px[inside], py[inside], u[inside, 2:]


# ----------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Blobs:
    """A family of blob-shaped objects (nuclei, red cells, debris) on a jittered grid."""

    salt: int
    cell_um: float  # grid spacing: one candidate per cell
    keep: float  # fraction of candidates drawn
    radius_um: tuple[float, float]
    aspect: tuple[float, float]  # minor / major axis
    irregular: float  # radial wobble (pleomorphism)
    density: tuple[float, float]  # stain density range
    oriented: bool = False  # major axis along the stroma fibres


NUCLEI = {
    1: _Blobs(1, 9.0, 1.0, (3.6, 6.0), (0.55, 0.95), 0.16, (0.7, 1.3)),
    2: _Blobs(2, 20.0, 0.55, (5.0, 8.5), (0.18, 0.32), 0.05, (0.9, 1.3), oriented=True),
    3: _Blobs(3, 6.6, 0.92, (2.4, 3.3), (0.8, 1.0), 0.06, (1.3, 1.8)),
    4: _Blobs(4, 5.0, 0.3, (0.5, 1.5), (0.4, 1.0), 0.35, (0.45, 0.9)),
    6: _Blobs(6, 8.0, 0.12, (2.5, 3.2), (0.8, 1.0), 0.05, (1.2, 1.6)),  # a few leukocytes
    7: _Blobs(7, 14.0, 0.5, (3.0, 5.0), (0.5, 0.9), 0.1, (0.5, 0.8)),
}
RED_CELLS = _Blobs(16, 6.2, 0.85, (3.2, 3.9), (0.75, 1.0), 0.04, (1.0, 1.4))
FAT_CELL_UM = 70.0
_FIBRE_PERIOD_UM = 9.0
_MARGIN_UM = 12.0  # blobs reach at most this far from their centres (plus blur)

# per-class texture coefficients: background H and E densities, then how much the slow
# mottle and the fine grain modulate H and E (relative), and the pen-ink density
_TEXTURE = {  # code: (bh, be, mottle_h, grain_h, mottle_e, grain_e, ink)
    0: (0.0, 0.006, 0.0, 0.0, 0.0, 0.8, 0.0),
    1: (0.16, 0.32, 0.1, 0.3, 0.25, 0.12, 0.0),
    2: (0.09, 0.14, 0.0, 0.2, 0.2, 0.2, 0.0),
    3: (0.08, 0.22, 0.1, 0.2, 0.1, 0.3, 0.0),
    4: (0.025, 0.28, 0.6, 0.3, 0.35, 0.3, 0.0),
    6: (0.0, 0.45, 0.0, 0.0, 0.1, 0.2, 0.0),
    7: (0.3, 0.45, 0.3, 0.0, 0.3, 0.0, 0.6),
    9: (0.0, 0.02, 0.0, 0.0, 0.0, 0.3, 0.0),
}
_TEXTURE_LUT = np.zeros((7, 256), np.float32)  # one contiguous look-up table per coefficient
for _code, _row in _TEXTURE.items():
    _TEXTURE_LUT[:, _code] = _row
_TEXTURE_LUT.setflags(write=False)


@dataclass(frozen=True)
class _Stain:
    """Per-image stain: unit OD vectors, intensities, residual, slow unevenness waves."""

    h: np.ndarray
    e: np.ndarray
    residual: np.ndarray
    fibres: np.ndarray
    bundles: np.ndarray
    uneven: np.ndarray
    seed: int


_H_REF = np.array([0.5626, 0.7201, 0.4062])
_E_REF = np.array([0.2159, 0.8012, 0.5581])
_INK = np.array([0.55, 0.25, 0.12])  # blue-green pen ink OD


def _stain(seed: int) -> _Stain:
    rng = np.random.default_rng([int(seed), 0x5A17])

    def vec(ref: np.ndarray, spread: float) -> np.ndarray:
        v = np.clip(ref + rng.normal(0, spread, 3), 0.05, None)
        return v / np.linalg.norm(v)

    return _Stain(
        h=vec(_H_REF, 0.06) * rng.uniform(0.8, 1.2),
        e=vec(_E_REF, 0.08) * rng.uniform(0.75, 1.25),
        residual=rng.uniform(0.015, 0.05, 3),
        fibres=np.concatenate([_linear_wave(rng, 2 * np.pi / _FIBRE_PERIOD_UM),
                               _waves(rng, 5, (150.0, 700.0), np.pi / _FIBRE_PERIOD_UM)]),
        bundles=np.stack([rng.uniform(0.3, 0.7, 4), rng.uniform(0.5, 2.2, 4), rng.uniform(0, 6.3, 4)], axis=1),
        uneven=_waves(rng, 3, (400.0, 1500.0), 0.002),
        seed=int(seed),
    )


def _bbox(sel: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(sel.any(axis=1)), np.flatnonzero(sel.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _draw_blobs(canvas: np.ndarray, codes: np.ndarray, code: int, b: _Blobs, win: _Window, st: _Stain,
                rim: float = 0.0, pallor: float = 0.0) -> None:
    """Draw the blobs of class ``code`` (centres on pixels of that class) into ``canvas``
    (uint8, densities x 100), max-blended; optional darker rim and paler centre.

    Blobs under a pixel (coarse pyramid levels) are drawn as their mean density instead.
    """
    r_mean = (b.radius_um[0] + b.radius_um[1]) / 2
    if r_mean / win.mpp < 1.0:
        cover = min(1.0, b.keep * np.pi * r_mean**2 * sum(b.aspect) / 2 / b.cell_um**2)
        value = np.uint8(round(100 * cover * sum(b.density) / 2 * (1 - 0.75 * pallor)))
        np.maximum(canvas, np.where(codes == code, value, np.uint8(0)), out=canvas)
        return
    px, py, u = _grid_points(win, b.cell_um, _key(st.seed, b.salt), 6)
    if px.size == 0:
        return
    cx = np.clip(np.rint(px).astype(int), 0, win.w - 1)
    cy = np.clip(np.rint(py).astype(int), 0, win.h - 1)
    ok = (codes[cy, cx] == code) & (u[:, 0] < b.keep)
    if not ok.any():
        return
    px, py, u = px[ok], py[ok], u[ok]
    r = (b.radius_um[0] + (b.radius_um[1] - b.radius_um[0]) * u[:, 1]) / win.mpp
    asp = b.aspect[0] + (b.aspect[1] - b.aspect[0]) * u[:, 2]
    if b.oriented:
        gx, gy = _wave_grad(st.fibres, (px + win.x0 + 0.5) * win.mpp, (py + win.y0 + 0.5) * win.mpp)
        ang = np.arctan2(gy, gx) + np.pi / 2  # along the fibres
    else:
        ang = u[:, 3] * np.pi
    dens = b.density[0] + (b.density[1] - b.density[0]) * u[:, 4]
    m = 14
    t = np.linspace(0, 2 * np.pi, m, endpoint=False)
    ph = u[:, 5:6] * 2 * np.pi
    wob = 1 + b.irregular * (np.cos(2 * t + ph) * 0.7 + np.sin(3 * t + 2 * ph) * 0.5)
    ex, ey = r[:, None] * np.cos(t) * wob, r[:, None] * asp[:, None] * np.sin(t) * wob
    ca, sa = np.cos(ang)[:, None], np.sin(ang)[:, None]
    polys = np.stack([px[:, None] + ca * ex - sa * ey, py[:, None] + sa * ex + ca * ey], axis=-1)
    level = np.clip(np.rint(dens * 6), 1, 15).astype(int)  # densities in steps of 1/6
    for lv in np.unique(level):
        sel = level == lv
        pts = list(np.rint(polys[sel] * 16).astype(np.int32))
        value = min(255, int(round(lv / 6 * 100)))
        cv2.fillPoly(canvas, pts, value, cv2.LINE_AA, shift=4)
        if rim:
            thick = max(1, int(round(0.5 / win.mpp)))
            cv2.polylines(canvas, pts, True, min(255, int(value * (1 + rim))), thick, cv2.LINE_AA, shift=4)
    if pallor:
        inner = np.stack([px[:, None] + (ca * ex - sa * ey) * 0.5, py[:, None] + (sa * ex + ca * ey) * 0.5], -1)
        cv2.fillPoly(canvas, list(np.rint(inner * 16).astype(np.int32)),
                     int(100 * b.density[0] * (1 - pallor)), cv2.LINE_AA, shift=4)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise (not hashed: fine detail only)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px >= 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma_px)
        n /= max(float(n.std()), 1e-6)
    return n


def _fat(win: _Window, st: _Stain) -> np.ndarray:
    """Adipocyte walls over the window: the ridges of a Voronoi tessellation of hashed
    jittered-grid points (global, so tiles join), drawn as anti-aliased lines; 0..1."""
    from scipy.spatial import Voronoi

    if FAT_CELL_UM / win.mpp < 4:  # cells of a few pixels: the walls' mean cover
        return np.full((win.h, win.w), 2 * 1.2 / FAT_CELL_UM, np.float32)
    pad = 3 * FAT_CELL_UM / win.mpp
    outer = _Window(int(win.x0 - pad), int(win.y0 - pad), int(win.w + 2 * pad), int(win.h + 2 * pad), win.mpp)
    px, py, _ = _grid_points(outer, FAT_CELL_UM, _key(st.seed, 9), 0)
    canvas = np.zeros((win.h, win.w), np.uint8)
    if px.size < 4:
        return canvas.astype(np.float32)
    pts = np.stack([px + outer.x0 - win.x0, py + outer.y0 - win.y0], axis=1)
    vor = Voronoi(pts)
    ridges = np.asarray(vor.ridge_vertices)
    ridges = ridges[(ridges >= 0).all(axis=1)]
    segs = vor.vertices[ridges]  # (n, 2, 2)
    near = (segs[..., 0].max(1) > -pad) & (segs[..., 0].min(1) < win.w + pad) \
        & (segs[..., 1].max(1) > -pad) & (segs[..., 1].min(1) < win.h + pad)
    segs = np.rint(segs[near] * 16).astype(np.int32)
    thick = max(1, int(round(1.2 / win.mpp)))
    cv2.polylines(canvas, list(segs), False, int(255 * min(1.0, 1.2 / win.mpp)), thick, cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255


def _densities(codes: np.ndarray, win: _Window, st: _Stain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin, eosin and ink density maps of a window of textured codes."""
    h, w = codes.shape
    rng = np.random.default_rng([st.seed, win.x0 & 0xFFFFFFFF, win.y0 & 0xFFFFFFFF, int(win.mpp * 1e6)])
    present = set(np.unique(codes).tolist())
    px1 = 1.0 / win.mpp  # pixels per µm
    mottle = _value_noise(win, 5.0, _key(st.seed, 31))
    grain = _smooth_noise(rng, (h, w), 0.6 * px1) * np.float32(min(1.0, px1))  # averages out when coarse
    t = [cv2.LUT(codes, lut) for lut in _TEXTURE_LUT]
    dh = t[0] * np.clip(1 + t[2] * mottle + t[3] * grain, 0.1, None)
    de = t[1] * np.clip(1 + t[4] * mottle + t[5] * grain, 0.1, None)
    ink = t[6] * np.clip(1 + 0.4 * mottle, 0.3, None) if 7 in present else np.zeros((h, w), np.float32)
    if 2 in present:  # collagen: bundles of wavy fibres along the level lines of a smooth field
        box = _bbox(codes == 2)
        psi = _sin_field(win, st.fibres, box)
        fib = np.zeros_like(psi)
        for a, f, phase in st.bundles:  # irregular spacing and strength across the fibres
            if _FIBRE_PERIOD_UM / f / win.mpp < 3:  # finer than the pixels: its mean
                fib += a * 35 / 128
            else:
                fib += a * (0.5 + 0.5 * np.sin(psi * f + phase)) ** 4
        fib *= np.clip(0.65 + 0.45 * mottle[box], 0.1, 1.2) * np.clip(0.85 + 0.3 * grain[box], 0.3, 1.5)
        de[box] += 0.75 * fib * (codes[box] == 2)
    if 9 in present:  # adipocyte walls
        de += 0.5 * _fat(win, st) * (codes == 9) * np.clip(1 + 0.3 * grain, 0.3, None)
    # nuclei and other blobs, drawn on uint8 canvases (densities x 100)
    canvas_h = np.zeros((h, w), np.uint8)
    canvas_e = np.zeros((h, w), np.uint8)
    for code, b in NUCLEI.items():
        if code in present:
            _draw_blobs(canvas_h, codes, code, b, win, st, rim=0.25 if code == 1 else 0.0)
    if 6 in present:
        _draw_blobs(canvas_e, codes, 6, RED_CELLS, win, st, pallor=0.3)
        de = np.maximum(de, canvas_e.astype(np.float32) / 100)
    nuc = canvas_h.astype(np.float32) / 100
    if 1 in present:  # vesicular chromatin in tumour nuclei
        nuc *= np.where(codes == 1, np.clip(0.8 + 0.35 * grain, 0.3, None), 1)
    de *= 1 - 0.4 * np.clip(nuc, 0, 1)  # nuclei push cytoplasm aside
    dh = np.maximum(dh, nuc)
    if 7 in present:  # out of focus
        sel = codes == 7
        dh = np.where(sel, cv2.GaussianBlur(dh, (0, 0), 2.5 * px1), dh)
        de = np.where(sel, cv2.GaussianBlur(de, (0, 0), 2.5 * px1), de)
    return dh, de, ink


def _to_rgb(dh: np.ndarray, de: np.ndarray, ink: np.ndarray, win: _Window, st: _Stain) -> np.ndarray:
    """Beer-Lambert composition, slow stain unevenness, optical blur and sensor noise."""
    rng = np.random.default_rng([st.seed, win.x0 & 0xFFFFFFFF, win.y0 & 0xFFFFFFFF, 7])
    uneven = 1 + _sin_field(win, st.uneven)
    sigma = 0.3 / win.mpp  # optics: blur is linear, so blur the densities
    maps = [dh * uneven, de * uneven] + ([ink] if ink.any() else [])
    if sigma >= 0.3:
        maps = [cv2.GaussianBlur(m, (0, 0), sigma) for m in maps]
    vecs = [st.h, st.e, _INK]
    rgb = np.empty((*dh.shape, 3), np.uint8)
    noise = rng.standard_normal((dh.shape[0] + 2, dh.shape[1]), dtype=np.float32) * np.float32(1.8)
    for c in range(3):
        od = maps[0] * np.float32(st.h[c]) + maps[1] * np.float32(st.e[c]) + np.float32(st.residual[c])
        if len(maps) == 3:
            od += maps[2] * np.float32(vecs[2][c])
        val = np.exp(-od) * np.float32(255)
        val += noise[c : c + dh.shape[0]] + np.float32(0.5)
        rgb[..., c] = np.clip(val, 0, 255)
    return rgb


def _render_window(codes: np.ndarray, win: _Window, st: _Stain) -> np.ndarray:
    codes = _STAND_IN_LUT[codes]
    dh, de, ink = _densities(codes, win, st)
    return _to_rgb(dh, de, ink, win, st)


def render_he(codes: np.ndarray, seed: int, mpp: float = REGION_MPP) -> np.ndarray:
    """H&E-like RGB ``(H, W, 3)`` uint8 for a map of BCSS codes at ``mpp`` µm/px.

    Codes without a texture of their own are drawn as their :data:`STAND_INS`; codes
    that are not BCSS codes raise ``ValueError``. Stain vectors, intensities and every
    texture are seeded.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D map, got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > 21):
        raise ValueError(f"codes must be BCSS codes 0..21, got {codes.min()}..{codes.max()}")
    codes = codes.astype(np.uint8)
    return _render_window(codes, _Window(0, 0, codes.shape[1], codes.shape[0], mpp), _stain(seed))


# ----------------------------------------------------------------------------- layouts


def _codes_from_fields(fields: np.ndarray, labels: np.ndarray, step: float, x0: int, y0: int, w: int, h: int
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


def _layout_fields(low: tuple[int, int], codes: Sequence[int], rng: np.random.Generator, sigma: float
                   ) -> np.ndarray:
    k = len(codes)
    noise = rng.standard_normal((k, *low)).astype(np.float32)
    fields = np.stack([ndimage.gaussian_filter(n, sigma, mode="wrap") for n in noise], axis=-1)
    fields /= fields.reshape(-1, k).std(axis=0) + 1e-6
    return fields + rng.normal(0, 0.15, k).astype(np.float32)


def _ensure_present(fields: np.ndarray, allowed: np.ndarray, rng: np.random.Generator, sigma: float,
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
    low = (math.ceil(h / _LAYOUT_STEP) + 1, math.ceil(w / _LAYOUT_STEP) + 1)
    sigma = max(90.0 * scale / _LAYOUT_STEP, 0.5)
    fields = _layout_fields(low, codes, rng, sigma)
    labels = np.array(codes, np.uint8)
    allowed = np.ones(low, bool)
    outside = None
    if roi and 0 not in codes:
        noise = ndimage.gaussian_filter(rng.standard_normal(low).astype(np.float32), 2 * sigma, mode="wrap")
        rf = _roi_field(low, rng, noise / (noise.std() + 1e-6))
        allowed = rf < -0.05
        if allowed.any():
            outside = _codes_from_fields(np.stack([rf, np.zeros_like(rf)], axis=-1), np.array([1, 0], np.uint8),
                                         _LAYOUT_STEP, 0, 0, w, h).astype(bool)
        else:
            allowed[:] = True
    _ensure_present(fields, allowed, rng, sigma, range(len(codes)))
    out = _codes_from_fields(fields, labels, _LAYOUT_STEP, 0, 0, w, h)
    for _ in range(4):  # bilinear interpolation can still lose a tiny blob: grow it
        kept = out if outside is None else np.where(outside, 255, out)
        missing = [i for i, c in enumerate(codes) if not (kept == c).any()]
        if not missing:
            break
        for i in missing:
            fields[..., i] += 0.5 * (fields[..., i] > fields.max(axis=-1) - 1)
        out = _codes_from_fields(fields, labels, _LAYOUT_STEP, 0, 0, w, h)
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
    return _STAND_IN_LUT[mask.astype(np.uint8)]


def make_region(shape: tuple[int, int], seed: int, layout: np.ndarray | None = None,
                codes: Sequence[int] = (1, 2, 3, 4, 9)) -> tuple[np.ndarray, np.ndarray]:
    """A generated H&E region and its code mask: ``(rgb (H, W, 3), codes (H, W))``.

    Without ``layout`` a :func:`random_layout` of ``codes`` is drawn; a given layout must
    have ``shape`` and is rendered as it is (codes with stand-ins keep their code).
    """
    if layout is None:
        layout = random_layout(shape, seed, codes)
    layout = np.asarray(layout)
    if tuple(layout.shape) != (int(shape[0]), int(shape[1])):
        raise ValueError(f"layout shape {layout.shape} does not match shape {tuple(shape)}")
    return render_he(layout, seed), layout.astype(np.uint8)


# ----------------------------------------------------------------------------- datasets


def region_name(seed: int, index: int) -> str:
    """BCSS-style region name; every third region (from the third) is on a held-out test site."""
    rng = random.Random(f"tissueseg-synth-{seed}-{index}")
    if index % 3 == 2:
        site = TEST_SITES[(index // 3) % len(TEST_SITES)]
    else:
        site = TRAIN_SITES[(index - index // 3) % len(TRAIN_SITES)]
    patient = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(4))
    return f"TCGA-{site}-{patient}-DX1_xmin{rng.randrange(10_000, 120_000)}_ymin{rng.randrange(10_000, 90_000)}_MPP-0.2500"


def _region_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _write_region(index: int, out: Path, size: tuple[int, int], seed: int, layouts: tuple[Path, ...],
                  overwrite: bool) -> tuple[Path, Path]:
    name = region_name(seed, index)
    rgb_path = out / "rgbs_colorNormalized" / f"{name}.png"
    mask_path = out / "masks" / f"{name}.png"
    if not overwrite and rgb_path.exists() and mask_path.exists():
        return rgb_path, mask_path
    rseed = _region_seed(seed, index)
    if layouts:
        real = read_mask(layouts[index % len(layouts)])
        crop = (min(size[0], real.shape[0]), min(size[1], real.shape[1]))
        try:
            layout = layout_from_mask(real, crop, rseed)
        except ValueError as exc:
            raise InputError(layouts[index % len(layouts)], str(exc)) from None
        rgb, mask = make_region(crop, rseed, layout)
    else:
        rgb, mask = make_region(size, rseed)
    write_png(rgb_path, rgb)
    write_png(mask_path, mask)
    return rgb_path, mask_path


def make_dataset(out: Path, n: int = 8, size: int | tuple[int, int] = 1024, seed: int = 0,
                 layouts: Sequence[Path] | None = None, overwrite: bool = False, workers: int = 1,
                 quiet: bool = False) -> list[tuple[Path, Path]]:
    """Write ``n`` generated regions in the BCSS layout (``out/rgbs_colorNormalized/*.png``,
    ``out/masks/*.png`` with codes) and return the ``(rgb, mask)`` paths.

    ``size`` is ``H`` (square) or ``(H, W)``. With ``layouts`` (real mask files) the
    layouts are seeded crops of those masks, cycled (the whole mask when smaller).
    Finished pairs are kept on a rerun unless ``overwrite``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if min(hw) < 16:
        raise ValueError(f"size must be at least 16 px, got {hw}")
    layout_files = tuple(Path(p) for p in (layouts or ()))
    for p in layout_files:
        if not p.is_file():
            raise InputError(p, "no such mask file")
    out = Path(out)
    fn = functools.partial(_write_region, out=out, size=hw, seed=seed, layouts=layout_files, overwrite=overwrite)
    result = run_batch(fn, list(range(n)), workers=workers, desc="synth regions", quiet=quiet)
    if result.skipped:
        raise InputError(out, "; ".join(reason for _, reason in result.skipped))
    return result.ok


# ----------------------------------------------------------------------------- slides


def _slide_fields(shape: tuple[int, int], seed: int, codes: Sequence[int], step: int) -> tuple[np.ndarray, np.ndarray]:
    """Low-res layout fields of a slide: a few irregular tissue blobs on glass (code 0)."""
    rng = np.random.default_rng([int(seed), 0x511D])
    low = (math.ceil(shape[0] / step) + 1, math.ceil(shape[1] / step) + 1)
    sigma = 90.0 / step
    fields = _layout_fields(low, codes, rng, sigma)
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
    _ensure_present(fields, glass < -2, rng, sigma, range(len(codes)))
    return fields, np.append(np.array(codes, np.uint8), np.uint8(0))


def _pyramid(shape: tuple[int, int]) -> list[tuple[int, int]]:
    levels = [(int(shape[0]), int(shape[1]))]
    while max(levels[-1]) > 1024:
        levels.append(tuple(math.ceil(v / 2) for v in levels[-1]))
    return levels


def make_slide(path: Path, shape: tuple[int, int], seed: int, mpp: float = 0.5, tile: int = 512,
               codes: Sequence[int] = (1, 2, 3, 4, 9), mask_downsample: int = 16, quiet: bool = True
               ) -> np.ndarray:
    """Write a generated pyramidal tiled TIFF (JPEG tiles, levels as a page chain, µm/px in
    the resolution tags) and return its codes mask at ``1/mask_downsample`` (also written
    as ``<stem>_mask.png``).

    Memory stays bounded: each level is rendered tile by tile straight from the low-res
    layout (textures are functions of position in µm, so levels agree and tiles join).
    ``shape`` is ``(H, W)`` of level 0.
    """
    import tifffile

    path = Path(path)
    h, w = int(shape[0]), int(shape[1])
    if h < 64 or w < 64:
        raise ValueError(f"slide shape must be at least 64x64, got {shape}")
    if tile % 16 or tile < 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if mpp <= 0 or mask_downsample < 1:
        raise ValueError("mpp and mask_downsample must be positive")
    fields, labels = _slide_fields((h, w), seed, [int(c) for c in codes], _LAYOUT_STEP)
    st = _stain(seed)
    levels = _pyramid((h, w))
    ds = int(mask_downsample)
    mask = np.zeros((math.ceil(h / ds), math.ceil(w / ds)), np.uint8)
    mask_y = np.minimum(np.arange(mask.shape[0]) * ds + ds // 2, h - 1)  # block centres (edge-clamped)
    mask_x = np.minimum(np.arange(mask.shape[1]) * ds + ds // 2, w - 1)
    n_tiles = sum(math.ceil(lh / tile) * math.ceil(lw / tile) for lh, lw in levels)
    bar = tqdm(total=n_tiles, desc=f"synth slide {path.name}", disable=quiet or None, file=sys.stderr, unit="tile")

    def tiles(k: int) -> Iterator[np.ndarray]:
        lh, lw = levels[k]
        f = 2**k
        lmpp = mpp * f
        margin = math.ceil(_MARGIN_UM / lmpp)
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                x0, y0 = max(tx - margin, 0), max(ty - margin, 0)
                x1, y1 = min(tx + tile + margin, lw), min(ty + tile + margin, lh)
                codes_win = _codes_from_fields(fields, labels, _LAYOUT_STEP / f, x0, y0, x1 - x0, y1 - y0)
                rgb = _render_window(codes_win, _Window(x0, y0, x1 - x0, y1 - y0, lmpp), st)
                core = rgb[ty - y0 : ty - y0 + tile, tx - x0 : tx - x0 + tile]
                if k == 0:  # ground truth: the code at the centre of every ds x ds block
                    gy = np.flatnonzero((mask_y >= ty) & (mask_y < ty + tile))
                    gx = np.flatnonzero((mask_x >= tx) & (mask_x < tx + tile))
                    mask[np.ix_(gy, gx)] = codes_win[np.ix_(mask_y[gy] - y0, mask_x[gx] - x0)]
                out = np.full((tile, tile, 3), 255, np.uint8)
                out[: core.shape[0], : core.shape[1]] = core
                bar.update()
                yield out

    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=h * w * 3 > 2**31) as tif:
            for k, (lh, lw) in enumerate(levels):
                res = 1e4 / (mpp * 2**k)
                tif.write(tiles(k), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                          compression="jpeg", compressionargs={"level": 90}, resolution=(res, res),
                          resolutionunit="CENTIMETER", subfiletype=1 if k else 0, metadata=None)
    finally:
        bar.close()
    write_png(path.with_name(f"{path.stem}_mask.png"), mask)
    return mask
