"""Procedural class textures: for every textured BCSS code, haematoxylin and eosin density
maps (nuclei, collagen fibres, adipocyte walls, red cells, debris) as functions of global
position in µm, rendered to RGB by the stain model."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .fields import Window, bbox, grid_points, hash_key, sin_field, smooth_noise, value_noise, wave_grad
from .stain import FIBRE_PERIOD_UM, HAEMOGLOBIN, INK, Stain, draw_stain, to_rgb

REGION_MPP = 0.25
"""µm/px of generated regions (BCSS's resolution)."""

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

STAND_IN_LUT = np.arange(256, dtype=np.uint8)
for _code, _to in STAND_INS.items():
    STAND_IN_LUT[_code] = _to
STAND_IN_LUT.setflags(write=False)


@dataclass(frozen=True)
class _Blobs:
    """A family of blob-shaped objects (nuclei, red cells, debris) on a jittered grid.

    Families with the same ``salt`` and ``cell_um`` share their centres (nucleoli sit in
    their nuclei)."""

    salt: int
    cell_um: float  # grid spacing: one candidate per cell
    keep: float  # fraction of candidates drawn
    radius_um: tuple[float, float]
    aspect: tuple[float, float]  # minor / major axis
    irregular: float  # radial wobble (pleomorphism)
    density: tuple[float, float]  # stain density range
    oriented: bool = False  # major axis along the stroma fibres
    rim: float = 0.0  # relative extra density of the outline (nuclear membrane)
    pallor: float = 0.0  # relative loss of density in the centre (vesicular chromatin, red cells)
    cluster: float = 0.0  # how much a slow field (40 µm) raises and lowers ``keep`` from place to place


# Sizes, densities and counts follow the real BCSS statistics in docs/synthetic-data.md.
NUCLEI: dict[int, tuple[_Blobs, ...]] = {
    1: (_Blobs(1, 10.0, 1.0, (3.6, 5.6), (0.6, 0.95), 0.14, (1.0, 1.4), rim=0.4, pallor=0.1),
        _Blobs(1, 10.0, 0.6, (0.6, 1.0), (0.8, 1.0), 0.1, (1.7, 2.1))),  # nucleoli
    2: (_Blobs(2, 14.0, 0.6, (3.0, 5.5), (0.25, 0.45), 0.08, (0.9, 1.3), oriented=True),),
    3: (_Blobs(3, 6.8, 0.9, (1.9, 2.7), (0.8, 1.0), 0.06, (1.9, 2.5)),),
    4: (_Blobs(4, 9.0, 0.5, (1.6, 2.6), (0.75, 1.0), 0.1, (1.7, 2.4), cluster=0.5),  # pyknotic nuclei
        _Blobs(18, 6.0, 0.25, (0.5, 1.2), (0.4, 1.0), 0.35, (1.0, 1.8)),  # karyorrhectic fragments
        _Blobs(19, 16.0, 0.25, (2.6, 3.6), (0.7, 1.0), 0.2, (0.7, 1.1))),  # dying cells' smudged nuclei
    6: (_Blobs(6, 8.0, 0.12, (2.5, 3.2), (0.8, 1.0), 0.05, (1.2, 1.6)),),  # a few leukocytes
    7: (_Blobs(7, 14.0, 0.5, (3.0, 5.0), (0.5, 0.9), 0.1, (0.5, 0.8)),),
}
"""Haematoxylin blobs of each textured code (nuclei and nuclear debris)."""
EOSIN_BLOBS: dict[int, tuple[_Blobs, ...]] = {
    4: (_Blobs(17, 5.5, 0.95, (2.4, 3.4), (0.7, 1.0), 0.15, (0.6, 0.95), rim=0.25),),  # ghost cells
}
"""Eosin blobs of each textured code (anucleate ghost cells)."""
RED_CELLS: dict[int, tuple[_Blobs, ...]] = {
    4: (_Blobs(20, 14.0, 0.12, (2.6, 3.4), (0.75, 1.0), 0.05, (0.9, 1.3), pallor=0.2),),  # extravasated
    6: (_Blobs(16, 6.2, 0.85, (3.2, 3.9), (0.75, 1.0), 0.04, (1.0, 1.4), pallor=0.3),),
}
"""Haemoglobin blobs of each textured code (red cells)."""
CLASS_DENSITY: dict[int, np.ndarray] = {code: np.array(v) for code, v in {
    1: (0.61, 0.52), 2: (0.23, 0.51), 3: (0.84, 0.50), 4: (0.29, 0.52), 9: (0.19, 0.14)}.items()}
"""Mean haematoxylin and eosin density of each class in real BCSS regions (BCSS reference
vectors; tumour, stroma, necrosis and fat measured on region TCGA-A1-A0SK, lymphocytes on
TCGA-A1-A0SP and TCGA-EW-A1PB: docs/synthetic-data.md). Bank textures are scaled to them."""
FAT_CELL_UM = 70.0
CLUSTER_UM = 40.0  # cell of the noise that makes some blob families patchy
NECROSIS_HOLE_UM = 9.0  # cell of the noise whose peaks are holes in necrosis
MARGIN_UM = 12.0  # blobs reach at most this far from their centres (plus blur)

# per-class texture coefficients: background H and E densities, then how much the slow
# mottle and the fine grain modulate H and E (relative), and the pen-ink density
_TEXTURE = {  # code: (bh, be, mottle_h, grain_h, mottle_e, grain_e, ink)
    0: (0.0, 0.006, 0.0, 0.0, 0.0, 0.8, 0.0),
    1: (0.5, 0.85, 0.15, 0.3, 0.25, 0.15, 0.0),
    2: (0.15, 0.45, 0.1, 0.2, 0.25, 0.2, 0.0),
    3: (0.12, 0.45, 0.1, 0.2, 0.1, 0.3, 0.0),
    4: (0.12, 0.2, 0.6, 0.3, 0.5, 0.3, 0.0),
    6: (0.0, 0.3, 0.0, 0.0, 0.1, 0.2, 0.0),
    7: (0.3, 0.45, 0.3, 0.0, 0.3, 0.0, 0.6),
    9: (0.0, 0.02, 0.0, 0.0, 0.0, 0.3, 0.0),
}
_TEXTURE_LUT = np.zeros((7, 256), np.float32)  # one contiguous look-up table per coefficient
for _code, _row in _TEXTURE.items():
    _TEXTURE_LUT[:, _code] = _row
_TEXTURE_LUT.setflags(write=False)
_FIBRE_GAIN = 0.5  # eosin density of a collagen fibre at its crest


def _draw_blobs(canvas: np.ndarray, codes: np.ndarray, code: int, b: _Blobs, win: Window, st: Stain) -> None:
    """Draw the blobs of class ``code`` (centres on pixels of that class) into ``canvas``
    (uint8, densities x 100), max-blended, with the family's darker rim and paler centre.

    Blobs under a pixel (coarse pyramid levels) are drawn as their mean density instead.
    """
    rim, pallor = b.rim, b.pallor
    r_mean = (b.radius_um[0] + b.radius_um[1]) / 2
    if r_mean / win.mpp < 1.0:
        cover = min(1.0, b.keep * np.pi * r_mean**2 * sum(b.aspect) / 2 / b.cell_um**2)
        value = np.uint8(round(100 * cover * sum(b.density) / 2 * (1 - 0.75 * pallor)))
        np.maximum(canvas, np.where(codes == code, value, np.uint8(0)), out=canvas)
        return
    px, py, u = grid_points(win, b.cell_um, hash_key(st.seed, b.salt), 6)
    if px.size == 0:
        return
    cx = np.clip(np.rint(px).astype(int), 0, win.w - 1)
    cy = np.clip(np.rint(py).astype(int), 0, win.h - 1)
    keep = b.keep
    if b.cluster:
        keep = b.keep + b.cluster * value_noise(win, CLUSTER_UM, hash_key(st.seed, b.salt + 100))[cy, cx]
    ok = (codes[cy, cx] == code) & (u[:, 0] < keep)
    if not ok.any():
        return
    px, py, u = px[ok], py[ok], u[ok]
    r = (b.radius_um[0] + (b.radius_um[1] - b.radius_um[0]) * u[:, 1]) / win.mpp
    asp = b.aspect[0] + (b.aspect[1] - b.aspect[0]) * u[:, 2]
    if b.oriented:
        gx, gy = wave_grad(st.fibres, (px + win.x0 + 0.5) * win.mpp, (py + win.y0 + 0.5) * win.mpp)
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
    pts = np.rint(polys * 16).astype(np.int32)
    inner = np.rint((polys - np.stack([px, py], -1)[:, None]) * 0.5 * 16 + np.stack([px, py], -1)[:, None] * 16
                    ).astype(np.int32)
    thick = max(1, int(round(0.5 / win.mpp)))
    for i in np.argsort(level, kind="stable"):  # one polygon per call: overlaps must not cancel (even-odd fill)
        value = min(255, int(round(level[i] / 6 * 100)))
        cv2.fillPoly(canvas, [pts[i]], value, cv2.LINE_AA, shift=4)
        if rim:
            cv2.polylines(canvas, [pts[i]], True, min(255, int(value * (1 + rim))), thick, cv2.LINE_AA, shift=4)
        if pallor:
            cv2.fillPoly(canvas, [inner[i]], int(value * (1 - pallor)), cv2.LINE_AA, shift=4)


def _fat(win: Window, st: Stain) -> np.ndarray:
    """Adipocyte walls over the window: the ridges of a Voronoi tessellation of hashed
    jittered-grid points (global, so tiles join), drawn as anti-aliased lines; 0..1."""
    from scipy.spatial import Voronoi

    if FAT_CELL_UM / win.mpp < 4:  # cells of a few pixels: the walls' mean cover
        return np.full((win.h, win.w), 2 * 1.2 / FAT_CELL_UM, np.float32)
    pad = 3 * FAT_CELL_UM / win.mpp
    outer = Window(int(win.x0 - pad), int(win.y0 - pad), int(win.w + 2 * pad), int(win.h + 2 * pad), win.mpp)
    px, py, _ = grid_points(outer, FAT_CELL_UM, hash_key(st.seed, 9), 0)
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


def _densities(codes: np.ndarray, win: Window, st: Stain
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Haematoxylin and eosin density maps of a window of textured codes, and the maps and
    OD vectors of other chromophores there (pen ink, haemoglobin)."""
    h, w = codes.shape
    rng = np.random.default_rng([st.seed, win.x0 & 0xFFFFFFFF, win.y0 & 0xFFFFFFFF, int(win.mpp * 1e6)])
    present = set(np.unique(codes).tolist())
    px1 = 1.0 / win.mpp  # pixels per µm
    mottle = value_noise(win, 5.0, hash_key(st.seed, 31))
    grain = smooth_noise(rng, (h, w), 0.35 * px1) * np.float32(min(1.0, px1))  # averages out when coarse
    t = [cv2.LUT(codes, lut) for lut in _TEXTURE_LUT]
    dh = t[0] * np.clip(1 + t[2] * mottle + t[3] * grain, 0.1, None)
    de = t[1] * np.clip(1 + t[4] * mottle + t[5] * grain, 0.1, None)
    extra = [(t[6] * np.clip(1 + 0.4 * mottle, 0.3, None), INK)] if 7 in present else []
    if 2 in present:  # collagen: bundles of wavy fibres along the level lines of a smooth field
        box = bbox(codes == 2)
        psi = sin_field(win, st.fibres, box)
        fib = np.zeros_like(psi)
        for a, f, phase in st.bundles:  # irregular spacing and strength across the fibres
            if FIBRE_PERIOD_UM / f / win.mpp < 3:  # finer than the pixels: its mean
                fib += a * 35 / 128
            else:
                fib += a * (0.5 + 0.5 * np.sin(psi * f + phase)) ** 4
        fib *= np.clip(0.65 + 0.45 * mottle[box], 0.1, 1.2) * np.clip(0.85 + 0.3 * grain[box], 0.3, 1.5)
        de[box] += _FIBRE_GAIN * fib * (codes[box] == 2)
    if 9 in present:  # adipocyte walls
        de += 0.5 * _fat(win, st) * (codes == 9) * np.clip(1 + 0.3 * grain, 0.3, None)
    # nuclei and other blobs, drawn on uint8 canvases (densities x 100)
    canvas_h = np.zeros((h, w), np.uint8)
    canvas_e = np.zeros((h, w), np.uint8)
    canvas_r = np.zeros((h, w), np.uint8)
    for families, canvas in ((NUCLEI, canvas_h), (EOSIN_BLOBS, canvas_e), (RED_CELLS, canvas_r)):
        for code in present & families.keys():
            for b in families[code]:
                _draw_blobs(canvas, codes, code, b, win, st)
    de = np.maximum(de, canvas_e.astype(np.float32) / 100)
    if 4 in present:  # granular ghost cells
        de *= np.where(codes == 4, np.clip(1 + 0.3 * grain, 0.3, None), 1)
    if canvas_r.any():
        red = canvas_r.astype(np.float32) / 100
        de *= 1 - np.clip(red, 0, 1)
        extra.append((red, HAEMOGLOBIN))
    nuc = canvas_h.astype(np.float32) / 100
    if 1 in present:  # vesicular chromatin in tumour nuclei
        nuc *= np.where(codes == 1, np.clip(0.7 + 0.5 * grain, 0.3, None), 1)
    de *= 1 - 0.4 * np.clip(nuc, 0, 1)  # nuclei push cytoplasm aside
    dh = np.maximum(dh, nuc)
    if 4 in present:  # necrosis: cells lost, holes of bare glass
        holes = np.clip(2.5 * (value_noise(win, NECROSIS_HOLE_UM, hash_key(st.seed, 41)) - 0.9), 0, 0.92)
        keep = np.where(codes == 4, 1 - holes, 1).astype(np.float32)
        dh, de = dh * keep, de * keep
        extra = [(m * keep, v) for m, v in extra]
    if 7 in present:  # out of focus
        sel = codes == 7
        dh = np.where(sel, cv2.GaussianBlur(dh, (0, 0), 2.5 * px1), dh)
        de = np.where(sel, cv2.GaussianBlur(de, (0, 0), 2.5 * px1), de)
    return dh, de, extra


def render_window(codes: np.ndarray, win: Window, st: Stain) -> np.ndarray:
    """RGB of a window of BCSS codes (stand-ins applied) with stain ``st``."""
    codes = STAND_IN_LUT[codes]
    dh, de, extra = _densities(codes, win, st)
    return to_rgb(dh, de, extra, win, st)


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
    return render_window(codes, Window(0, 0, codes.shape[1], codes.shape[0], mpp), draw_stain(seed))

