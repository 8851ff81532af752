"""Multi-label patch classifier with class maps at several depths (stage 1 of the patch-label method).

A timm encoder gives features at several depths (``depths``: indices of its feature levels,
shallow to deep; for EfficientNet-Lite0 levels 2, 3, 4 are strides 8, 16, 32, or 8, 16, 16
at ``output_stride=16``). A 1x1 convolution on each depth gives per-pixel class scores, the
*class maps*; their global average is that depth's image logits, trained with a multi-label
BCE per depth (deep supervision, :func:`tissueseg.losses.multilabel_sum`). Because the
pooling is an average of the scores, a class map is the class activation map (CAM) of
Zhou et al. 2016 without a second pass, and every pixel of a present class is pushed up:
the maps are what :mod:`tissueseg.weak.cam` turns into pseudo-masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from . import encoders

ARCH = "classifier"
"""The architecture name (``ModelConfig.arch``) the classifier is built under."""

DEFAULT_DEPTHS: tuple[int, ...] = (2, 3, 4)
"""Encoder feature levels with a class-map head (EfficientNet-Lite0: 40, 112, 320 channels)."""


def gap_logits(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(N, D, K)`` image logits: the global average of each of the ``D`` ``(N, K, h, w)`` class maps."""
    return torch.stack([m.mean(dim=(2, 3)) for m in maps], dim=1)


def local_mean(maps: Sequence[torch.Tensor], window: int, size: tuple[int, int]) -> torch.Tensor:
    """``(N, K, H, W)``: the class maps of an input of ``size`` px averaged over the ``window`` px
    square around every pixel (near the borders: over its part inside), then over the depths."""
    h, w = size
    total = torch.zeros((), device=maps[0].device)
    for m in maps:
        k = max(1, round(window * m.shape[-1] / w)) | 1  # odd: centred on the pixel
        m = F.avg_pool2d(m.float(), k, stride=1, padding=k // 2, count_include_pad=False)
        total = total + F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return total / len(maps)


class PatchClassifier(nn.Module):
    """``forward_maps(x)`` -> class maps per depth (shallow to deep); ``forward(x)`` -> ``(N, K)`` logits;
    ``forward_features(x)`` -> the encoder features the maps are made from (``class_maps`` turns them
    into the maps, so that one encoder pass gives both); ``local_logits(x, window)``
    -> ``(N, K, H, W)`` logits of the ``window`` px around every pixel, ``local_presence``
    their probabilities.

    ``forward``'s logits are the mean over depths of :func:`gap_logits` (what a class gate
    thresholds after a sigmoid).
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, kernel_size=1) for c in encoder.feature_info.channels())
        self.reductions: tuple[int, ...] = tuple(int(r) for r in encoder.feature_info.reduction())
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C_d, H / r_d, W / r_d)`` encoder features of every depth ``d`` (what its class-map head reads)."""
        return self.encoder(x)

    def class_maps(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The class maps of every depth from its :meth:`forward_features`."""
        return [head(f) for head, f in zip(self.heads, features)]

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, K, H / r_d, W / r_d)`` class scores for every depth ``d`` (``r_d`` its reduction)."""
        return self.class_maps(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gap_logits(self.forward_maps(x)).mean(dim=1)

    def local_logits(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """``(N, K, H, W)``: at every pixel, the logits of the ``window`` px square around it.

        :meth:`forward` averages each class map over the whole input; here the average is
        over a ``window`` px neighbourhood (near the borders: over its part inside), as if
        the classifier had seen a ``window`` px patch centred on every pixel, in one pass.
        """
        return local_mean(self.forward_maps(x), window, (x.shape[-2], x.shape[-1]))

    def local_presence(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """``(N, K, H, W)``: the probability that each class is in the ``window`` px around every
        pixel (the sigmoid of :meth:`local_logits`; what the local gate weighs a segmenter by)."""
        return torch.sigmoid(self.local_logits(x, window))


def build_classifier(
    encoder: str,
    num_classes: int,
    *,
    weights: str,
    output_stride: int | None = 16,
    in_channels: int = 3,
    depths: Sequence[int] = DEFAULT_DEPTHS,
) -> PatchClassifier:
    """:class:`PatchClassifier` on timm ``encoder`` with heads at feature levels ``depths``.

    ``weights``: ``"imagenet"`` (shipped offline for ``tf_efficientnet_lite0``, see
    :mod:`.encoders`) or ``"none"``. ``output_stride`` 8, 16 (default: the deepest maps at
    stride 16, as DeepLabv3+ uses) or 32/None (the encoder's native stride).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    depths = tuple(int(d) for d in depths)
    if not depths or list(depths) != sorted(set(depths)):
        raise ValueError(f"depths must be distinct feature levels in increasing order, got {depths}")
    name = encoder.removeprefix("tu-")
    hub = encoders.use_hub(name, weights)
    kwargs: dict = dict(features_only=True, out_indices=depths, in_chans=in_channels, pretrained=hub)
    if output_stride not in (None, 32):
        kwargs["output_stride"] = output_stride
    try:
        body = timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"unknown timm encoder {name!r} ({exc})") from None
    except (AssertionError, IndexError, TypeError) as exc:
        raise ValueError(f"encoder {name!r} cannot give feature levels {depths} at output_stride={output_stride} "
                         f"({exc})") from None
    if weights == "imagenet" and not hub:
        encoders.load_shipped(body, name)
    return PatchClassifier(body, num_classes)
