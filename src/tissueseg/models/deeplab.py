"""DeepLabv3+ (Chen et al. 2018) from segmentation_models_pytorch with a timm encoder."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch

from . import encoders

ASPP_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}
"""ASPP dilation rates of the paper for each encoder output stride."""


def build_deeplab(
    encoder: str, num_classes: int, *, weights: str, output_stride: int, in_channels: int = 3
) -> torch.nn.Module:
    """DeepLabv3+ on timm ``encoder``; logits at input size.

    The decoder uses the paper's ASPP rates for the output stride (6, 12, 18 at 16;
    12, 24, 36 at 8); smp's default is the OS-8 set whatever the stride.
    """
    if output_stride not in ASPP_RATES:
        raise ValueError(f"DeepLabv3+ output_stride must be 8 or 16, got {output_stride}")
    hub = encoders.use_hub(encoder, weights)
    model = smp.DeepLabV3Plus(
        encoder_name=f"tu-{encoder}",
        encoder_weights="imagenet" if hub else None,
        encoder_output_stride=output_stride,
        decoder_atrous_rates=ASPP_RATES[output_stride],
        in_channels=in_channels,
        classes=num_classes,
    )
    if weights == "imagenet" and not hub:
        encoders.load_shipped(model.encoder.model, encoder)
    return model
