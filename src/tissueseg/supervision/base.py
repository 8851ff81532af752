"""The interface every training method implements (see :mod:`tissueseg.supervision`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch

from ..checkpoint import Inference
from ..data import Targets, balanced_weights, class_pixel_counts
from ..losses import LossSum, build_loss
from ..schemes import IGNORE, ClassScheme

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data import RegionCache
    from ..weak.mosaic import Mosaics


@dataclass
class Context:
    """What a method sees of the run it supervises."""

    cfg: TrainConfig
    train_df: pd.DataFrame
    val_df: pd.DataFrame
    params: dict
    """The manifest's tiling parameters (``manifest.json``)."""
    scheme: ClassScheme
    cache: RegionCache
    out: Path
    device: torch.device
    quiet: bool = False
    rank: int = 0
    overwrite: bool = False
    """The run starts over (a method's own earlier stages too, unless finished on the same config and data)."""


class Supervision:
    """Pixel masks by default; subclasses change what they must.

    ``targets``: what a training sample carries (``"masks"``: a ``mask`` of class indices,
    from ``label_source`` when it is set, else from the mask files; ``"labels"``: the
    image-level ``labels`` only, no mask is ever read).
    """

    targets: ClassVar[Targets] = "masks"
    balance_by: ClassVar[str] = "fractions"
    """Columns that class-balanced sampling weighs patches by: ``fractions`` or ``labels``."""
    output_is_logits: ClassVar[bool] = True
    """Whether :meth:`output` is the model's logits (validation then reuses them)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.label_source: Callable[[str], np.ndarray] | None = None
        self.mosaics: tuple[Mosaics, float] | None = None
        """Mosaics mixed into every training batch and their share of it (None: the manifest's patches only)."""
        self._loss = None

    @classmethod
    def default_patch_size(cls, size: int) -> int:
        """The training window when ``data.patch_size`` is not set, for patches of ``size`` px."""
        return size

    @property
    def patch_size(self) -> int:
        """The training window: ``data.patch_size``, else the default for the manifest's patches."""
        return self.ctx.cfg.data.patch_size or self.default_patch_size(int(self.ctx.train_df["size"].iloc[0]))

    @property
    def val_df(self) -> pd.DataFrame:
        """The patches scored at validation (pixel masks are read for scoring only)."""
        return self.ctx.val_df if "mask_path" in self.ctx.val_df.columns else self.ctx.val_df.iloc[:0]

    def class_counts(self) -> np.ndarray:
        """Pixels per class that ``loss.class_weights`` weighs the classes by."""
        return class_pixel_counts(self.ctx.train_df, self.ctx.scheme)

    def sampling_weights(self) -> np.ndarray:
        """Per-patch weights for ``data.balanced`` sampling."""
        return balanced_weights(self.ctx.train_df, self.ctx.scheme, self.balance_by)

    def init_model(self, model: torch.nn.Module) -> None:
        """Set the starting weights of a newly built model (default: as built)."""

    def write_previews(self, folder: Path) -> None:
        """Pictures of what the model learns from (nothing for masks)."""

    def inference(self) -> Inference:
        """What prediction adds to the trained model (stored in its checkpoints)."""
        return Inference()

    def output(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model output the loss reads."""
        return model(x)

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> LossSum:
        """The loss of one batch as :class:`~tissueseg.losses.LossSum` parts."""
        return self.loss_fn(output.float(), batch["mask"])

    @property
    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], LossSum]:
        """``loss.name`` with its settings and the class weights, built once."""
        if self._loss is None:
            cfg = self.ctx.cfg.loss
            weights = None
            if cfg.class_weights != "none":
                from ..stats import class_weights

                weights = torch.tensor(class_weights(self.class_counts(), cfg.class_weights), dtype=torch.float32)
                weights = weights.to(self.ctx.device)
            scheme = self.ctx.scheme
            background = scheme.names.index(cfg.background) if cfg.background is not None else None
            self._loss = build_loss(cfg.name, ignore_index=IGNORE, class_weights=weights, r=cfg.r, k=cfg.k,
                                    background_index=background, parts=True)
        return self._loss
