"""What every pseudo-mask source shares: per-image masks served as a ``label_source`` of
:class:`~tissueseg.data.PatchDataset`, their class counts and their previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io
from ..colorize import colorize
from ..schemes import ClassScheme
from ..stats import count_codes

PREVIEW_SIDE = 1024
"""Longest side of the pseudo-mask previews."""


class PseudoMaskSource:
    """Pseudo-masks by image path: subclasses set :attr:`paths` and implement ``__call__``
    (the ``(H, W)`` uint8 mask of one image, 255 where nothing is known)."""

    paths: list[str]

    def __call__(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def pixel_counts(self, num_classes: int) -> np.ndarray:
        """Pixels of every class over all pseudo-masks (for class weights)."""
        return sum(count_codes(np.asarray(self(p)))[:num_classes] for p in self.paths)

    def write_previews(self, folder: str | Path, scheme: ClassScheme) -> None:
        """Palette PNGs ``<folder>/<stem>.png`` (longest side at most :data:`PREVIEW_SIDE`), to look at."""
        for path in self.paths:
            mask = self(path)
            step = -(-max(mask.shape) // PREVIEW_SIDE)
            io.write_png(Path(folder) / f"{Path(path).stem}.png",
                         colorize(np.ascontiguousarray(mask[::step, ::step]), scheme))
