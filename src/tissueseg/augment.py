"""Training augmentation: flips, 90-degree rotations, H&E stain jitter or colour jitter.

Every random choice comes from a generator seeded by ``(seed, epoch, index)``, so a sample
is augmented the same way whatever the number of DataLoader workers or processes, and a
resumed run sees exactly the augmentations of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A torch generator that depends only on ``(seed, epoch, index)``."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class Augment:
    """Random geometric and colour changes; geometry is applied to image and mask alike.

    ``stain_jitter`` is the sigma of the H&E optical-density jitter (:func:`stain.stain_jitter`);
    ``color_jitter`` the strength of brightness/contrast/saturation changes (used when no
    stain jitter is set). 0 turns either off.
    """

    flips: bool = True
    rot90: bool = True
    stain_jitter: float = 0.0
    color_jitter: float = 0.0
    seed: int = 0

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None, *, epoch: int = 0, index: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a float ``(3, H, W)`` image in [0, 1] and its ``(H, W)`` mask (or None)."""
        g = sample_generator(self.seed, epoch, index)
        draws = torch.rand(6, generator=g).tolist()  # fixed number of draws: choices stay independent
        if self.flips:
            if draws[0] < 0.5:
                image, mask = _flip(image, mask, -1)
            if draws[1] < 0.5:
                image, mask = _flip(image, mask, -2)
        if self.rot90:
            k = int(draws[2] * 4)
            if k:
                image = torch.rot90(image, k, dims=(-2, -1))
                mask = None if mask is None else torch.rot90(mask, k, dims=(-2, -1))
        if self.stain_jitter > 0:
            from .stain import stain_jitter

            image = stain_jitter(image, self.stain_jitter, g)
        elif self.color_jitter > 0:
            s = self.color_jitter
            image = TF.adjust_brightness(image, 1 + s * (2 * draws[3] - 1))
            image = TF.adjust_contrast(image, 1 + s * (2 * draws[4] - 1))
            image = TF.adjust_saturation(image, 1 + s * (2 * draws[5] - 1))
        return image.clamp_(0, 1), mask


def _flip(image: torch.Tensor, mask: torch.Tensor | None, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    return image.flip(dim), None if mask is None else mask.flip(dim)
