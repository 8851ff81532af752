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
INK = np.array([0.55, 0.25, 0.12])
"""OD vector of blue-green pen ink."""
HAEMOGLOBIN = np.array([0.05, 0.84, 0.53])
"""OD vector of red cells (eosin-stained haemoglobin: bright red, about RGB 230, 40, 80)."""
_HE = np.stack([H_REF / np.linalg.norm(H_REF), E_REF / np.linalg.norm(E_REF)], axis=1).astype(np.float32)  # (3, 2)
_UNMIX = np.linalg.pinv(_HE).astype(np.float32)  # (2, 3)
_OD = (-np.log((np.arange(256) + 1) / 256)).astype(np.float32)  # OD of each 8-bit level


def unmix(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin densities ``(..., 2)`` of uint8 RGB on the BCSS reference vectors
    (least squares), and the residual optical density ``(..., 3)`` they leave."""
    od = _OD[rgb]
    dens = od @ _UNMIX.T
    return dens, od - dens @ _HE.T


def remix(dens: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Float RGB (0..255) of haematoxylin and eosin densities plus a residual optical density."""
    return np.exp(-(dens @ _HE.T + residual)) * np.float32(256) - np.float32(1)


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


def to_rgb(dh: np.ndarray, de: np.ndarray, extra: list[tuple[np.ndarray, np.ndarray]], win: Window, st: Stain
           ) -> np.ndarray:
    """Beer-Lambert composition of haematoxylin, eosin and ``extra`` (density map, OD vector)
    pairs (ink, haemoglobin), slow stain unevenness, optical blur and sensor noise."""
    rng = np.random.default_rng([st.seed, win.x0 & 0xFFFFFFFF, win.y0 & 0xFFFFFFFF, 7])
    uneven = 1 + sin_field(win, st.uneven)
    sigma = 0.15 / win.mpp  # optics: blur is linear, so blur the densities
    maps = [dh * uneven, de * uneven] + [m for m, _ in extra]
    vecs = [st.h, st.e] + [v for _, v in extra]
    if sigma >= 0.3:
        maps = [cv2.GaussianBlur(m, (0, 0), sigma) for m in maps]
    rgb = np.empty((*dh.shape, 3), np.uint8)
    noise = rng.standard_normal((dh.shape[0] + 2, dh.shape[1]), dtype=np.float32) * np.float32(2.5)
    for c in range(3):
        od = np.full(dh.shape, np.float32(st.residual[c]))
        for m, v in zip(maps, vecs):
            od += m * np.float32(v[c])
        val = np.exp(-od) * np.float32(255)
        val += noise[c : c + dh.shape[0]] + np.float32(0.5)
        rgb[..., c] = np.clip(val, 0, 255)
    return rgb
