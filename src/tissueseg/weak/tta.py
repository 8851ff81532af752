"""A classifier's input and its test-time augmentations, shared by the class maps and the prototypes.

:func:`to_input` makes a batch of uint8 patches the network's normalised input; :data:`TTAS`
names the augmentations (none, the 4 flips, the 8 of the dihedral group) as
``(quarter turns, flipped dims)``; :func:`augment` applies one to a batch of images or maps
and :func:`restore` brings a map made from the augmented input back onto the original
pixels, so that maps of every augmentation can be averaged; :func:`summed` does that for any
function of the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

Normalize = tuple[Sequence[float], Sequence[float]]
"""``(mean, std)`` per channel of the network's input, in [0, 1] units."""

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
"""Flip test-time augmentation: the identity and the three flips."""

Tta = Literal["none", "flip", "d4"]
TTAS: dict[str, tuple[tuple[int, tuple[int, ...]], ...]] = {
    "none": ((0, ()),),
    "flip": tuple((0, f) for f in FLIPS),
    "d4": tuple((k, f) for k in (0, 1) for f in FLIPS),
}
"""Test-time augmentations as ``(quarter turns, flipped dims)``: none, the 4 flips, the 8 of the dihedral group."""


def to_input(images: np.ndarray, normalize: Normalize) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, H, W)``."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # e.g. a cached region: torch warns on read-only memory
        images = images.copy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(normalize[0], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(normalize[1], dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def augment(x: torch.Tensor, turns: int, dims: tuple[int, ...]) -> torch.Tensor:
    """``x`` (``(..., H, W)``) turned ``turns`` quarter turns, then flipped along ``dims``."""
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return x.flip(dims) if dims else x


def restore(x: torch.Tensor, turns: int, dims: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`augment`: a map of the augmented input back on the original pixels."""
    x = x.flip(dims) if dims else x
    return torch.rot90(x, -turns, dims=(-2, -1)) if turns else x


def summed(fn: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, tta: Tta) -> list[torch.Tensor]:
    """``fn``'s maps of every augmentation ``tta`` (:data:`TTAS`) of ``x``, each restored onto ``x``'s pixels, summed.

    ``fn(x)`` returns maps whose last two dims cover the input (at any resolution).
    """
    total: list[torch.Tensor] | None = None
    for turns, dims in TTAS[tta]:
        maps = [restore(m, turns, dims) for m in fn(augment(x, turns, dims))]
        total = maps if total is None else [a + b for a, b in zip(total, maps)]
    return total
