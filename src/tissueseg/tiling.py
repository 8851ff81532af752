"""Patch grids over a region and per-patch class fractions, all patches at once.

Pure functions on arrays: :func:`grid` places the windows, :func:`patch_fractions` counts
every class in every window from summed-area tables, :func:`image_labels` turns those
fractions into multi-label image labels (for weak supervision).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .schemes import IGNORE

Edge = Literal["shift", "drop", "pad"]
EDGES: tuple[str, ...] = ("shift", "drop", "pad")


def _starts(length: int, size: int, stride: int, edge: Edge) -> np.ndarray:
    """Window starts along one axis (see :func:`grid`)."""
    if edge == "drop":
        return np.arange(0, length - size + 1, stride)
    if edge == "pad":
        return np.arange(-(-max(length - size, 0) // stride) + 1) * stride
    starts = np.arange(0, max(length - size, 0) + 1, stride)
    if length > size and starts[-1] + size < length:
        starts = np.append(starts, length - size)
    return starts


def check_grid(size: int, stride: int, edge: str) -> None:
    """``ValueError`` unless ``size`` and ``stride`` are positive and ``edge`` is known."""
    if size < 1 or stride < 1:
        raise ValueError(f"size and stride must be positive (got size={size}, stride={stride})")
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {', '.join(EDGES)} (got {edge!r})")


def grid(shape: tuple[int, int], size: int = 256, stride: int = 128, edge: Edge = "shift") -> np.ndarray:
    """``(N, 2)`` int64 top-left corners ``(x, y)`` of the windows over a ``(H, W)`` region.

    Row-major order (``y`` outer, ``x`` inner). ``edge`` decides the border:

    - ``shift``: the last window of each row/column is moved back to end at the border, so
      every pixel is covered with windows inside the region (no duplicates). A side
      shorter than ``size`` gets one window at 0 that runs past the border: the caller pads
      (:func:`patch_fractions` counts the outside as ignore).
    - ``drop``: only full windows inside the region on the stride grid (may leave a strip
      uncovered; a side shorter than ``size`` gives no window).
    - ``pad``: windows on the stride grid until one reaches the border; the last one may run
      past it (the caller pads).
    """
    check_grid(size, stride, edge)
    height, width = shape
    if height < 1 or width < 1:
        raise ValueError(f"empty region shape {shape}")
    ys, xs = _starts(height, size, stride, edge), _starts(width, size, stride, edge)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.int64)


def patch_fractions(labels: np.ndarray, corners: np.ndarray, size: int, num_classes: int) -> np.ndarray:
    """``(N, K+1)`` float32: the fraction of each class, then of ignore, in every window.

    ``labels`` is a ``(H, W)`` label map (class indices ``0..K-1``, :data:`IGNORE` for
    don't-care); ``corners`` the ``(N, 2)`` ``(x, y)`` from :func:`grid`. Pixels of a window
    that lie outside the region count as ignore, so every row sums to 1.

    Computed for the whole grid at once, in one pass over the pixels: the window borders cut
    the region into cells; one ``np.bincount`` per band of rows counts every class in every
    cell, and a summed-area table (``np.cumsum`` over the cells) gives each window's counts
    from its four corners. Memory: one band of pixels and the cell table.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label map, got shape {labels.shape}")
    corners = np.asarray(corners, dtype=np.int64).reshape(-1, 2)
    height, width = labels.shape
    x0, x1 = np.clip(corners[:, 0], 0, width), np.clip(corners[:, 0] + size, 0, width)
    y0, y1 = np.clip(corners[:, 1], 0, height), np.clip(corners[:, 1] + size, 0, height)
    rows = np.union1d(np.concatenate([y0, y1]), [0, height])
    cols = np.union1d(np.concatenate([x0, x1]), [0, width])
    cell_of_x = np.repeat(np.arange(len(cols) - 1, dtype=np.int32), np.diff(cols))[None, :] * 256
    table = np.zeros((len(rows), len(cols), num_classes), dtype=np.int64)  # counts in [0, row) x [0, col)
    for i, (top, bottom) in enumerate(zip(rows[:-1], rows[1:])):
        cells = np.bincount((cell_of_x + labels[top:bottom]).ravel(), minlength=(len(cols) - 1) * 256)
        cells = cells.reshape(-1, 256)
        bad = np.flatnonzero(cells[:, num_classes:IGNORE].any(axis=0))
        if bad.size:
            raise ValueError(f"label values {(bad + num_classes).tolist()} are not classes "
                             f"0..{num_classes - 1} nor ignore")
        table[i + 1, 1:] = cells[:, :num_classes]
    table = table.cumsum(axis=0).cumsum(axis=1)
    r0, r1 = np.searchsorted(rows, y0), np.searchsorted(rows, y1)
    c0, c1 = np.searchsorted(cols, x0), np.searchsorted(cols, x1)
    counts = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    ignore = size * size - counts.sum(axis=1, keepdims=True)
    return (np.concatenate([counts, ignore], axis=1) / float(size * size)).astype(np.float32)


def image_labels(fractions: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """``(N, K)`` bool: class present when it covers ``>= threshold`` of the in-ROI pixels.

    ``fractions`` comes from :func:`patch_fractions` (ignore in the last column). The
    fraction is taken of the patch's ROI (non-ignore) pixels, not of all its pixels, so a
    patch half outside the ROI is labelled like its tissue; a patch with no ROI pixel has
    no label.
    """
    classes = fractions[:, :-1].astype(np.float64)
    roi = classes.sum(axis=1, keepdims=True)
    return (roi > 0) & (classes >= threshold * roi) & (classes > 0)
