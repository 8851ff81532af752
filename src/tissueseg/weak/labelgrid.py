"""Label grids: the image-level labels of small patches, arranged as a map over a region.

A weak manifest tiled with ``size == stride == cell`` holds, for every ``cell x cell``
patch, the set of classes present (``label_<class>``) and nothing else. Laid out on the
patch grid those sets form a coarse ``(gh, gw, K)`` multi-hot label grid (all zero = no
label, e.g. outside the ROI), from which :mod:`.pseudomask` makes pixel masks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import label_columns
from ..schemes import ClassScheme
from ..tiling import grid, image_labels, patch_fractions


def cell_labels(labels: np.ndarray, cell: int, num_classes: int, threshold: float = 0.05) -> np.ndarray:
    """``(gh, gw, K)`` uint8 labels of the ``cell x cell`` patches over a label map.

    The same labels as a manifest tiled with ``size = stride = cell`` (``edge="pad"``)
    and ``label_threshold = threshold``: a class is present when it covers at least that
    fraction of the patch's ROI pixels. Used to make weak labels from known masks.
    """
    corners = grid(labels.shape, cell, cell, edge="pad")
    present = image_labels(patch_fractions(labels, corners, cell, num_classes), threshold)
    gh, gw = -(-labels.shape[0] // cell), -(-labels.shape[1] // cell)
    return present.reshape(gh, gw, num_classes).astype(np.uint8)


def grids_from_manifest(df: pd.DataFrame, scheme: ClassScheme) -> dict[str, np.ndarray]:
    """Label grids per region (keyed by ``image_path``) from a manifest with ``size == stride``.

    Cells without a manifest row (dropped for low ROI) have no label. Raises
    ``ValueError`` when the rows are not on one ``size x size`` grid.
    """
    cols = label_columns(df, scheme)
    if df["size"].nunique() != 1:
        raise ValueError("label grid: manifest mixes patch sizes")
    cell = int(df["size"].iloc[0])
    if ((df["x"] % cell) != 0).any() or ((df["y"] % cell) != 0).any():
        raise ValueError(f"label grid: patches are not on a {cell}-pixel grid (tile with stride = size, edge pad)")
    grids: dict[str, np.ndarray] = {}
    for path, rows in df.groupby("image_path", sort=False):
        h, w = int(rows["height"].iloc[0]), int(rows["width"].iloc[0])
        g = np.zeros((-(-h // cell), -(-w // cell), scheme.num_classes), np.uint8)
        g[(rows["y"] // cell).to_numpy(), (rows["x"] // cell).to_numpy()] = rows[cols].to_numpy(np.uint8)
        grids[str(path)] = g
    return grids
