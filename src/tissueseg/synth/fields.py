"""Random fields that are functions of global position in µm: hashed jittered-grid points,
value noise and sums of plane waves. A window of any canvas at any µm/px asks for its own
pixels and gets the same values as the whole would, so slides render tile by tile without
seams and their pyramid levels show the same structures."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_uniform(ix: np.ndarray, iy: np.ndarray, key: int, n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) per integer cell ``(ix, iy)``: shape ``ix.shape + (n,)``."""
    with np.errstate(over="ignore"):
        h = _mix(ix.astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                 ^ _mix(iy.astype(np.int64).view(np.uint64) + np.uint64(key & 0xFFFFFFFFFFFF)))
        out = [_mix(h + np.uint64(0x632BE59BD9B4E019 * (k + 1) & 0xFFFFFFFFFFFFFFFF)) for k in range(n)]
    return np.stack([(o >> np.uint64(11)).astype(np.float64) / float(1 << 53) for o in out], axis=-1)


def hash_key(seed: int, salt: int) -> int:
    """A 48-bit hashing key for one random family (``salt``) of an image or slide (``seed``)."""
    return (int(seed) * 1_000_003 + salt * 7919) & 0xFFFFFFFFFFFF


@dataclass(frozen=True)
class Window:
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


def sin_field(win: Window, waves: np.ndarray, box: tuple[slice, slice] | None = None) -> np.ndarray:
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


def value_noise(win: Window, cell_um: float, key: int) -> np.ndarray:
    """Smooth noise, about unit std, from hashed values on a global ``cell_um`` grid
    interpolated bicubically: continuous across windows and levels. On pixels larger than
    a cell the grid coarsens to the pixel size and the amplitude drops as averaging would."""
    gain = min(1.0, cell_um / win.mpp)
    cell_um = max(cell_um, win.mpp)
    x_um = (np.arange(win.x0, win.x0 + win.w) + 0.5) * win.mpp / cell_um
    y_um = (np.arange(win.y0, win.y0 + win.h) + 0.5) * win.mpp / cell_um
    ix0, iy0 = math.floor(x_um[0]) - 2, math.floor(y_um[0]) - 2
    gx, gy = np.meshgrid(np.arange(ix0, math.floor(x_um[-1]) + 4), np.arange(iy0, math.floor(y_um[-1]) + 4))
    grid = ((hash_uniform(gx, gy, key, 1)[..., 0] - 0.5) * 3.46 * gain).astype(np.float32)
    map_x = np.tile((x_um - ix0).astype(np.float32), (win.h, 1))
    map_y = np.tile((y_um - iy0).astype(np.float32)[:, None], (1, win.w))
    return cv2.remap(grid, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def random_waves(rng: np.random.Generator, k: int, wavelength: tuple[float, float], amp: float) -> np.ndarray:
    """Random plane waves; amplitudes scaled so the field's gradient is about ``amp``/µm."""
    lam = rng.uniform(*wavelength, size=k)
    theta = rng.uniform(0, 2 * np.pi, size=k)
    w = 2 * np.pi / lam
    a = amp / w / math.sqrt(k)
    return np.stack([a, w * np.cos(theta), w * np.sin(theta), rng.uniform(0, 2 * np.pi, size=k)], axis=1)


def linear_wave(rng: np.random.Generator, k: float) -> np.ndarray:
    """A plane of slope ``k``/µm as a wave row (``a sin(small w . p)`` ~ linear over slides
    up to tens of cm), giving the fibres a dominant direction."""
    theta = rng.uniform(0, np.pi)
    w = 1e-5  # 1/µm: sin stays linear within 0.5 % over 10 cm
    return np.array([[k / w, w * np.cos(theta), w * np.sin(theta), 0.0]])


def wave_grad(waves: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (d/dx, d/dy) of the wave sum at points ``(x, y)`` in µm."""
    c = np.cos(np.outer(x, waves[:, 1]) + np.outer(y, waves[:, 2]) + waves[:, 3])
    return c @ (waves[:, 0] * waves[:, 1]), c @ (waves[:, 0] * waves[:, 2])


def grid_points(win: Window, cell_um: float, key: int, n_extra: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One jittered point per ``cell_um`` cell over the window: local pixel ``x``, ``y`` and
    ``n_extra`` uniforms per point (the same points whatever the window: global hashing)."""
    x_lo, x_hi = win.x0 * win.mpp, (win.x0 + win.w) * win.mpp
    y_lo, y_hi = win.y0 * win.mpp, (win.y0 + win.h) * win.mpp
    ix = np.arange(math.floor(x_lo / cell_um), math.ceil(x_hi / cell_um))
    iy = np.arange(math.floor(y_lo / cell_um), math.ceil(y_hi / cell_um))
    gx, gy = np.meshgrid(ix, iy)
    u = hash_uniform(gx.ravel(), gy.ravel(), key, 2 + n_extra)
    px = (gx.ravel() + u[:, 0]) * cell_um / win.mpp - win.x0 - 0.5
    py = (gy.ravel() + u[:, 1]) * cell_um / win.mpp - win.y0 - 0.5
    inside = (px >= -0.5) & (px < win.w - 0.5) & (py >= -0.5) & (py < win.h - 0.5)
    return px[inside], py[inside], u[inside, 2:]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise (not hashed: fine detail only)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px >= 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma_px)
        n /= max(float(n.std()), 1e-6)
    return n


def bbox(sel: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of the true pixels of ``sel`` (not empty)."""
    rows, cols = np.flatnonzero(sel.any(axis=1)), np.flatnonzero(sel.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)

