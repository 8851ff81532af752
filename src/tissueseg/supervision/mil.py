"""``mil``: an FCN trained from image labels with a multiple-instance loss (the historic baseline).

The loss reads the model's coarse class maps (``forward_maps``) and each patch's
``label_<class>`` columns; no mask is read for training. Class weights count the patches
that hold each class (never the masks' pixels).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import label_columns
from ..losses import LossSum
from .base import Context, Supervision


class MIL(Supervision):
    targets = "labels"
    balance_by = "labels"
    output_is_logits = False

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        label_columns(ctx.train_df, ctx.scheme)  # a clear error when the manifest has no image labels

    def class_counts(self) -> np.ndarray:
        return self.ctx.train_df[label_columns(self.ctx.train_df, self.ctx.scheme)].to_numpy(np.float64).sum(0)

    def output(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return getattr(model, "forward_maps", model)(x)

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> LossSum:
        return self.loss_fn(output.float(), batch["labels"])
