"""``full``: training from the manifest's pixel masks with the cross-entropy."""

from __future__ import annotations

from .base import Context, Supervision


class Masks(Supervision):
    """The mask of every patch (``mask_path``), class indices after the scheme, 255 ignored."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        if "mask_path" not in ctx.train_df.columns:
            raise ValueError(f"{ctx.cfg.data.manifest}: method full needs pixel masks (a mask_path column); "
                             "for image labels only choose a weak method")
