"""``label-grid``: image labels of small cells made into pseudo-masks, then the cross-entropy.

The manifest must be tiled with ``size == stride`` (the cells, e.g. 32 px); only its
``label_<class>`` columns are read. :class:`~tissueseg.weak.pseudomask.PseudoMasks` makes
one pseudo-mask per region (cached) and serves it in place of the mask files; training
windows of ``data.patch_size`` (default 4 cells) are centred on the cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Context, Supervision


class LabelGrid(Supervision):
    balance_by = "labels"

    def __init__(self, ctx: Context):
        from ..weak.pseudomask import PseudoMasks

        super().__init__(ctx)
        self.cell = int(ctx.train_df["size"].iloc[0])
        stride = int(ctx.params.get("stride", self.cell))
        if stride != self.cell:
            raise ValueError(f"{ctx.cfg.data.manifest}: tiled with stride {stride} != size {self.cell}; "
                             "method label-grid needs the cells of a grid (tile with stride = size, edge pad)")
        self.pseudo = PseudoMasks(ctx.train_df, ctx.scheme, ctx.cache, ctx.cfg.label_grid.smooth,
                                  quiet=ctx.quiet or ctx.rank > 0)
        self.label_source = self.pseudo

    @classmethod
    def default_patch_size(cls, size: int) -> int:
        return 4 * size  # windows of 4 x 4 cells

    def class_counts(self) -> np.ndarray:
        return self.pseudo.pixel_counts(self.ctx.scheme.num_classes)

    def write_previews(self, folder: Path) -> None:
        self.pseudo.write_previews(folder, self.ctx.scheme)
