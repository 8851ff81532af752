"""Models: DeepLabv3+ (the segmenter), the FCN (MIL baselines) and a multi-label patch classifier.

``build_model(ModelConfig(...), num_classes)`` gives a module whose ``forward`` maps a
normalised ``(N, C, H, W)`` float batch to logits: ``(N, K, H, W)`` at input size for the
segmenters, ``(N, K)`` image logits for the classifier (whose ``forward_maps`` gives its
class maps, see :mod:`.classifier`); :func:`normalization` gives the mean/std (for input
in [0, 1]) its encoder expects.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from . import encoders
from .classifier import PatchClassifier, build_classifier
from .deeplab import build_deeplab
from .fcn import FCN, build_fcn

__all__ = ["FCN", "ModelConfig", "PatchClassifier", "build_model", "input_multiple", "normalization"]


class ModelConfig(BaseModel):
    """Which network to build.

    ``output_stride=None`` means the architecture's default: 16 for DeepLabv3+ (ASPP
    rates 6, 12, 18) and the patch classifier, 8 for the FCN where the encoder can dilate
    (else its native 32).
    ``freeze_bn`` is read by training only (see ``docs/distributed.md``).
    """

    model_config = ConfigDict(extra="forbid")

    arch: Literal["deeplabv3plus", "fcn", "classifier"] = "deeplabv3plus"
    encoder: str = "tf_efficientnet_lite0"
    weights: Literal["imagenet", "none"] = "imagenet"
    output_stride: Literal[8, 16, 32] | None = None
    in_channels: int = Field(3, ge=1)
    freeze_bn: bool = Field(False, description="training keeps BatchNorm layers in eval mode (running statistics)")


def build_model(cfg: ModelConfig, num_classes: int, *, background_index: int | None = None) -> torch.nn.Module:
    """The network of ``cfg`` with ``num_classes`` outputs.

    ``background_index`` (FCN only) zero-initialises that class's classifier, as in
    Pathak et al. 2015. Raises ``ValueError`` for unusable settings (and when ImageNet
    weights are asked for but cannot be had offline).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    encoder = cfg.encoder.removeprefix("tu-")
    if cfg.arch == "deeplabv3plus":
        if background_index is not None:
            raise ValueError("background_index applies to the FCN only")
        return build_deeplab(
            encoder, num_classes, weights=cfg.weights, output_stride=cfg.output_stride or 16,
            in_channels=cfg.in_channels,
        )
    if cfg.arch == "classifier":
        if background_index is not None:
            raise ValueError("background_index applies to the FCN only")
        return build_classifier(encoder, num_classes, weights=cfg.weights, output_stride=cfg.output_stride or 16,
                                in_channels=cfg.in_channels)
    return build_fcn(
        encoder, num_classes, weights=cfg.weights, output_stride=cfg.output_stride,
        in_channels=cfg.in_channels, background_index=background_index,
    )


def normalization(cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per input channel for pixels in [0, 1], as the encoder's weights expect."""
    mean, std = encoders.mean_std(cfg.encoder.removeprefix("tu-"))
    if cfg.in_channels != len(mean):
        mean = (sum(mean) / len(mean),) * cfg.in_channels
        std = (sum(std) / len(std),) * cfg.in_channels
    return mean, std


def input_multiple(cfg: ModelConfig) -> int:
    """What the input's height and width must be a multiple of (DeepLabv3+: its output stride)."""
    return (cfg.output_stride or 16) if cfg.arch == "deeplabv3plus" else 1
