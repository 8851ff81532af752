"""Fully convolutional network for multiple-instance learning (Pathak et al. 2015).

A timm encoder's last feature map, a 1x1 convolution giving one coarse score map per
class (background included as a class of the scheme), bilinear upsampling to the input.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from . import encoders


class FCN(nn.Module):
    """``forward(x)`` -> logits ``(N, K, H, W)``; :meth:`forward_maps` -> coarse ``(N, K, h, w)``."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Conv2d(encoder.feature_info.channels()[-1], num_classes, kernel_size=1)
        self.output_stride = int(encoder.feature_info.reduction()[-1])

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Class score maps at the encoder's resolution (what MIL losses and CAMs use)."""
        return self.classifier(self.encoder(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.forward_maps(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def zero_init_class(self, index: int) -> None:
        """Zero the classifier weights and bias of one class (the paper's background init)."""
        if not 0 <= index < self.classifier.out_channels:
            raise ValueError(f"class index {index} out of range 0..{self.classifier.out_channels - 1}")
        self.classifier.weight[index].zero_()
        self.classifier.bias[index].zero_()


def build_fcn(
    encoder: str,
    num_classes: int,
    *,
    weights: str,
    output_stride: int | None = None,
    in_channels: int = 3,
    background_index: int | None = None,
) -> FCN:
    """FCN on timm ``encoder``. ``output_stride=None``: 8 where the encoder supports
    dilation (EfficientNet, ResNet...), else its native stride (32 for VGG16)."""
    hub = encoders.use_hub(encoder, weights)
    kwargs = dict(features_only=True, out_indices=(-1,), in_chans=in_channels, pretrained=hub)
    try:
        if output_stride is None:
            try:
                body = timm.create_model(encoder, output_stride=8, **kwargs)
            except (AssertionError, TypeError, ValueError):
                body = timm.create_model(encoder, **kwargs)
        else:
            body = timm.create_model(encoder, output_stride=output_stride, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"unknown timm encoder {encoder!r} ({exc})") from None
    except (AssertionError, TypeError) as exc:
        raise ValueError(f"encoder {encoder!r} does not support output_stride={output_stride} ({exc})") from None
    if weights == "imagenet" and not hub:
        encoders.load_shipped(body, encoder)
    model = FCN(body, num_classes)
    if background_index is not None:
        model.zero_init_class(background_index)
    return model
