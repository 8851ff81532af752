"""``cam``: image labels of whole patches made into pseudo-masks by a patch classifier's class maps.

Two stages, each an ordinary training run of :func:`tissueseg.train.train` (so each resumes
after Ctrl-C and runs under DDP):

1. :class:`ImageLabels` trains the multi-label patch classifier
   (:mod:`tissueseg.models.classifier`: class maps at several encoder depths, averaged
   globally, BCE per depth) on the whole labelled patches, in ``<run.out>/classifier``.
2. :class:`Cam` makes every region's pseudo-mask from that classifier's class activation
   maps, fused over depths, normalised per class and restricted to each patch's labels (a
   single-label patch is labelled whole; :class:`~tissueseg.weak.cam.CamPseudoMasks`), and
   trains DeepLabv3+ on them with the cross-entropy. Its checkpoints carry flip test-time
   augmentation and the classifier as a local or window gate (``cam.local_gate``,
   ``cam.gate``), which ``predict`` applies. With ``cam.mosaics``, that share of every batch
   is mosaics of tiles of the single-label patches, masks exact (:mod:`tissueseg.weak.mosaic`).

The manifest holds non-overlapping patches (``tile --size 256 --stride 256 --edge pad``)
or a published patch-label dataset (``tile --layout``); only its ``label_<class>``
columns are read for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..checkpoint import Inference
from ..data import label_columns
from ..losses import LossSum, multilabel_sum
from .base import Context, Supervision
from .mil import MIL

if TYPE_CHECKING:
    from ..weak.mosaic import Mosaics

CLASSIFIER_DIR = "classifier"
"""Where, under ``run.out``, stage 1 trains."""


class ImageLabels(MIL):
    """Stage 1: the patch classifier from each patch's image labels, with the multi-label BCE of
    its averaged class maps (no pixel is scored: the latest model is kept)."""

    @property
    def val_df(self):  # the classifier makes no pixel map to score
        return self.ctx.val_df.iloc[:0]

    def loss(self, output: list[torch.Tensor], batch: dict[str, torch.Tensor]) -> LossSum:
        return multilabel_sum(output, batch["labels"])


STAGE1_OPTIONS = ("classifier_steps", "classifier_output_stride", "balanced")
"""The ``cam`` options stage 1 reads; the others (pseudo-masks, prediction) are left at their
defaults in its config, so a trained classifier is found equal whatever they say."""


def classifier_config(ctx: Context):
    """The stage-1 training config: the patch classifier on the same data, encoder and seed,
    whole patches (``data.patch_size`` is stage 2's window), ``cam.classifier_steps`` steps."""
    cfg = ctx.cfg
    return cfg.model_copy(update={
        "cam": type(cfg.cam)(**{name: getattr(cfg.cam, name) for name in STAGE1_OPTIONS}),
        "model": cfg.model.model_copy(update={"arch": "classifier", "output_stride": cfg.cam.classifier_output_stride}),
        "loss": cfg.loss.model_copy(update={"class_weights": "none"}),
        "data": cfg.data.model_copy(update={"patch_size": None, "balanced": cfg.cam.balanced}),
        "run": cfg.run.model_copy(update={"steps": cfg.cam.classifier_steps, "epochs": None,
                                          "out": Path(cfg.run.out) / CLASSIFIER_DIR,
                                          "val_every": cfg.cam.classifier_steps}),
    })


class Cam(Supervision):
    """Stage 2: DeepLabv3+ on the class-map pseudo-masks of the stage-1 classifier."""

    balance_by = "labels"

    def __init__(self, ctx: Context):
        from ..checkpoint import load_predictor
        from ..train import finished, train
        from ..weak.cam import CamOptions, CamPseudoMasks

        super().__init__(ctx)
        label_columns(ctx.train_df, ctx.scheme)
        size, stride = ctx.params.get("size"), ctx.params.get("stride")
        if size is not None and stride is not None and int(stride) != int(size):
            raise ValueError(f"{ctx.cfg.data.manifest}: tiled with stride {stride} != size {size}; method cam "
                             "needs non-overlapping labelled patches (tile with stride = size, edge pad)")
        self.mosaics = self._mosaic_data()  # checked before stage 1 trains
        stage1_cfg = classifier_config(ctx)
        restart = ctx.overwrite and not finished(stage1_cfg)  # a finished stage 1 of this config and data is kept
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # every process has looked before rank 0 clears the folder
        stage1 = train(stage1_cfg, quiet=ctx.quiet, overwrite=restart, supervision=ImageLabels)
        classifier = load_predictor(stage1.last, ctx.device)
        self.classifier, self.classifier_config = classifier.model, classifier.config
        cam = ctx.cfg.cam
        options = CamOptions(tta=cam.tta, refine_radius=cam.refine_radius, context=cam.context,
                             prototypes=cam.prototypes, presence_power=cam.presence_power,
                             local_presence_power=cam.local_presence_power)
        self.pseudo = CamPseudoMasks(ctx.train_df, ctx.scheme, ctx.cache, classifier.model,
                                     (classifier.preprocessing.mean, classifier.preprocessing.std), options,
                                     quiet=ctx.quiet or ctx.rank > 0)
        self.label_source = self.pseudo

    def class_counts(self) -> np.ndarray:
        return self.pseudo.pixel_counts(self.ctx.scheme.num_classes)

    def _mosaic_data(self) -> tuple[Mosaics, float] | None:
        """With ``cam.mosaics``: mosaics of ``cam.mosaic_tile`` px tiles of the single-label patches."""
        from ..train import total_steps
        from ..weak.mosaic import Mosaics, single_label_sources

        cfg = self.ctx.cfg
        if cfg.cam.mosaics == 0:
            return None
        tile = cfg.cam.mosaic_tile or self.patch_size // 2
        try:
            data = Mosaics(single_label_sources(self.ctx.train_df, self.ctx.scheme), self.ctx.cache.image,
                           size=self.patch_size, tile=tile, seed=cfg.run.seed,
                           length=total_steps(cfg, self.ctx.train_df) * cfg.run.batch_size)
        except ValueError as e:
            raise ValueError(f"{cfg.data.manifest}: cam.mosaics: {e} (single-label patches of the training split)") from e
        return data, cfg.cam.mosaics

    def init_model(self, model: torch.nn.Module) -> None:
        """With ``cam.init_encoder``, stage 2's encoder starts from the stage-1 classifier's."""
        if self.ctx.cfg.cam.init_encoder:
            from ..models.encoders import init_encoder

            init_encoder(model, self.classifier)

    def write_previews(self, folder: Path) -> None:
        self.pseudo.write_previews(folder, self.ctx.scheme)

    def inference(self) -> Inference:
        cam = self.ctx.cfg.cam
        if cam.gate is None and cam.local_gate is None:
            return Inference(flip_tta=cam.flip_tta)
        gate = {"model": {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()},
                "config": self.classifier_config}
        if cam.local_gate is not None:
            return Inference(flip_tta=cam.flip_tta, gate=gate, gate_window=cam.local_gate,
                             gate_power=cam.local_gate_power)
        return Inference(flip_tta=cam.flip_tta, gate=gate, gate_threshold=cam.gate)
