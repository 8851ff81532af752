"""Losses: pixel cross-entropy from masks, and multiple-instance (MIL) losses from image labels.

``build_loss(name, ...)`` returns a callable:

- ``"ce"``: ``loss(logits (N, K, H, W), target (N, H, W) long)`` with an ignore index and
  optional class weights.
- MIL losses: ``loss(maps (N, K, h, w), labels (N, K) multi-hot float)`` where ``maps``
  are coarse class score maps (``FCN.forward_maps``) or full-size logits.

  * ``"mil-max"`` (Pathak et al. 2015): for every class present in an image, softmax
    cross-entropy at the location of that class map's maximum, with that class as the
    target; averaged over present classes, then images. No other location gets a gradient.
  * ``"sigmoid-max"``: global max of each map, BCE-with-logits against the labels.
  * ``"lse"``: log-sum-exp pooling ``(1/r) log mean exp(r s)``, then BCE-with-logits.
  * ``"topk"``: mean of the top ``k`` fraction of each map, then BCE-with-logits.

With ``background_index`` the background class counts as present in every image.
``class_weights`` (K,) weight the per-pixel terms of ``ce``, the per-class terms of the
BCE losses and the per-class average of ``mil-max``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossName = Literal["ce", "mil-max", "sigmoid-max", "lse", "topk"]
LOSSES: tuple[str, ...] = ("ce", "mil-max", "sigmoid-max", "lse", "topk")
MIL_LOSSES: tuple[str, ...] = LOSSES[1:]


def cross_entropy(
    logits: Tensor, target: Tensor, *, ignore_index: int = 255, class_weights: Tensor | None = None
) -> Tensor:
    """Mean pixel cross-entropy over non-ignored pixels (weighted mean with class weights).

    A batch whose pixels are all ignored gives 0 (with a graph), not NaN.
    """
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    weight = None if class_weights is None else class_weights.to(logits)
    return F.cross_entropy(logits, target.long(), weight=weight, ignore_index=ignore_index)


def _present(labels: Tensor, background_index: int | None) -> Tensor:
    present = (labels > 0.5).to(torch.float32)
    if background_index is not None:
        present[:, background_index] = 1.0
    return present


def mil_max(maps: Tensor, labels: Tensor, *, background_index: int | None = None,
            class_weights: Tensor | None = None) -> Tensor:
    """Pathak et al. 2015 MIL loss; see the module docstring."""
    n, k = maps.shape[:2]
    flat = maps.flatten(2)  # (N, K, P)
    where = flat.argmax(2)  # (N, K): location of each class map's maximum
    at_max = flat.gather(2, where[:, None, :].expand(n, k, k))  # [n, j, c]: class j's score at c's max
    nll = -torch.log_softmax(at_max, dim=1).diagonal(dim1=1, dim2=2)  # (N, K): -log p(c) at c's max
    weight = _present(labels, background_index).to(maps)
    if class_weights is not None:
        weight = weight * class_weights.to(maps)
    per_image = weight.sum(1)
    has = per_image > 0
    if not has.any():
        return maps.sum() * 0.0
    return ((nll * weight).sum(1)[has] / per_image[has]).mean()


def _bce(pooled: Tensor, labels: Tensor, background_index: int | None, class_weights: Tensor | None) -> Tensor:
    target = _present(labels, background_index).to(pooled)
    weight = None if class_weights is None else class_weights.to(pooled).expand_as(pooled)
    return F.binary_cross_entropy_with_logits(pooled, target, weight=weight)


def max_pool(maps: Tensor) -> Tensor:
    """``(N, K, h, w)`` -> ``(N, K)`` global maximum."""
    return maps.flatten(2).amax(2)


def lse_pool(maps: Tensor, r: float) -> Tensor:
    """``(1/r) * log(mean(exp(r * s)))`` per map, computed stably."""
    flat = maps.flatten(2)
    return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r


def topk_pool(maps: Tensor, k: float) -> Tensor:
    """Mean of the top ``ceil(k * h * w)`` scores of each map (at least one)."""
    flat = maps.flatten(2)
    count = max(1, math.ceil(k * flat.shape[2]))
    return flat.topk(count, dim=2).values.mean(2)


def _pooled_bce(pool: Callable[[Tensor], Tensor], maps: Tensor, labels: Tensor, *,
                background_index: int | None = None, class_weights: Tensor | None = None) -> Tensor:
    return _bce(pool(maps), labels, background_index, class_weights)


def build_loss(
    name: LossName,
    *,
    ignore_index: int = 255,
    class_weights: Tensor | None = None,
    r: float = 5.0,
    k: float = 0.1,
    background_index: int | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss called ``name`` with its settings bound; see the module docstring."""
    if name == "ce":
        return functools.partial(cross_entropy, ignore_index=ignore_index, class_weights=class_weights)
    if name not in MIL_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    if r <= 0:
        raise ValueError(f"lse sharpness r must be > 0, got {r}")
    if not 0 < k <= 1:
        raise ValueError(f"topk fraction k must be in (0, 1], got {k}")
    mil = dict(background_index=background_index, class_weights=class_weights)
    if name == "mil-max":
        return functools.partial(mil_max, **mil)
    pool = {
        "sigmoid-max": max_pool,
        "lse": functools.partial(lse_pool, r=r),
        "topk": functools.partial(topk_pool, k=k),
    }[name]
    return functools.partial(_pooled_bce, pool, **mil)
