"""The Beer-Lambert stain model: per-image stain vectors, intensities and unevenness, and the
composition of haematoxylin / eosin / ink density maps into RGB."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .fields import Window, linear_wave, random_waves, sin_field

FIBRE_PERIOD_UM = 9.0
"""Spacing of collagen fibres (the stroma texture's main wavelength)."""


@dataclass(frozen=True)
class Stain:
    """Per-image stain: unit OD vectors, intensities, residual, slow unevenness waves."""

    h: np.ndarray
    e: np.ndarray
    residual: np.ndarray
    fibres: np.ndarray
    bundles: np.ndarray
    uneven: np.ndarray
    seed: int


H_REF = np.array([0.612, 0.690, 0.386])
E_REF = np.array([0.190, 0.890, 0.420])
"""Haematoxylin and eosin OD vectors of BCSS's colour-normalised regions (Macenko on
slides TCGA-A1-A0SP and TCGA-EW-A1PB; see docs/synthetic-data.md)."""
GLASS_OD = np.array([0.028, 0.075, 0.044])
"""OD of bare glass in BCSS regions (RGB about 248, 236, 244: slightly pink)."""
INK = np.array([0.55, 0.25, 0.12])  # blue-green pen ink OD


def draw_stain(seed: int) -> Stain:
    """The stain of one image (or slide): seeded variations around the reference vectors."""
    rng = np.random.default_rng([int(seed), 0x5A17])

    def vec(ref: np.ndarray, spread: float) -> np.ndarray:
        v = np.clip(ref + rng.normal(0, spread, 3), 0.05, None)
        return v / np.linalg.norm(v)

    return Stain(
        h=vec(H_REF, 0.03) * rng.uniform(0.85, 1.15),
        e=vec(E_REF, 0.03) * rng.uniform(0.85, 1.15),
        residual=GLASS_OD * rng.uniform(0.6, 1.4, 3),
        fibres=np.concatenate([linear_wave(rng, 2 * np.pi / FIBRE_PERIOD_UM),
                               random_waves(rng, 5, (150.0, 700.0), np.pi / FIBRE_PERIOD_UM)]),
        bundles=np.stack([rng.uniform(0.3, 0.7, 4), rng.uniform(0.5, 2.2, 4), rng.uniform(0, 6.3, 4)], axis=1),
        uneven=random_waves(rng, 3, (400.0, 1500.0), 0.002),
        seed=int(seed),
    )


def to_rgb(dh: np.ndarray, de: np.ndarray, ink: np.ndarray, win: Window, st: Stain) -> np.ndarray:
    """Beer-Lambert composition, slow stain unevenness, optical blur and sensor noise."""
    rng = np.random.default_rng([st.seed, win.x0 & 0xFFFFFFFF, win.y0 & 0xFFFFFFFF, 7])
    uneven = 1 + sin_field(win, st.uneven)
    sigma = 0.4 / win.mpp  # optics: blur is linear, so blur the densities
    maps = [dh * uneven, de * uneven] + ([ink] if ink.any() else [])
    if sigma >= 0.3:
        maps = [cv2.GaussianBlur(m, (0, 0), sigma) for m in maps]
    vecs = [st.h, st.e, INK]
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

