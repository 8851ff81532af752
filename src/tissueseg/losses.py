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

The patch classifier (:mod:`tissueseg.models.classifier`) trains with :func:`multilabel_sum`:
``loss(maps, labels)`` where ``maps`` is the list of class maps of its depths; each map's
global average is that depth's logits, with a BCE-with-logits against the labels per
depth (deep supervision), averaged over depths with ``weights``.

Every loss is a mean ``total / count`` (labelled pixels for ``ce``, images for
``mil-max``, image-class pairs for the BCE losses). ``build_loss(..., parts=True)``
returns the :class:`LossSum` instead, so that training over several processes can divide
each process's ``total`` by the ``count`` of the whole global batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LossName = Literal["ce", "mil-max", "sigmoid-max", "lse", "topk"]
LOSSES: tuple[str, ...] = ("ce", "mil-max", "sigmoid-max", "lse", "topk")
MIL_LOSSES: tuple[str, ...] = LOSSES[1:]


class LossSum(NamedTuple):
    """A loss before its mean: summed terms, what the mean divides by, and the mean itself
    (``total / count`` up to rounding; 0 with a graph when nothing counts)."""

    total: Tensor
    count: Tensor
    mean: Tensor


def _loss_sum(total: Tensor, count: Tensor, mean: Tensor | None = None) -> LossSum:
    if mean is None:
        mean = total / torch.where(count > 0, count, torch.ones_like(count))
    return LossSum(total, count, mean)


def cross_entropy_sum(
    logits: Tensor, target: Tensor, *, ignore_index: int = 255, class_weights: Tensor | None = None
) -> LossSum:
    """Summed pixel cross-entropy and the (class-weighted) number of non-ignored pixels."""
    target = target.long()
    weight = None if class_weights is None else class_weights.to(logits)
    logp = F.log_softmax(logits, dim=1)  # as F.cross_entropy does, so the mean is bit for bit the same
    total = F.nll_loss(logp, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    count = valid.sum().to(total) if weight is None else (weight[torch.where(valid, target, 0)] * valid).sum()
    if not valid.any():
        return _loss_sum(total, count, logits.sum() * 0.0)
    return _loss_sum(total, count, F.nll_loss(logp, target, weight=weight, ignore_index=ignore_index))


def cross_entropy(
    logits: Tensor, target: Tensor, *, ignore_index: int = 255, class_weights: Tensor | None = None
) -> Tensor:
    """Mean pixel cross-entropy over non-ignored pixels (weighted mean with class weights).

    A batch whose pixels are all ignored gives 0 (with a graph), not NaN.
    """
    return cross_entropy_sum(logits, target, ignore_index=ignore_index, class_weights=class_weights).mean


def _present(labels: Tensor, background_index: int | None) -> Tensor:
    present = (labels > 0.5).to(torch.float32)
    if background_index is not None:
        present[:, background_index] = 1.0
    return present


def mil_max_sum(maps: Tensor, labels: Tensor, *, background_index: int | None = None,
                class_weights: Tensor | None = None) -> LossSum:
    """Pathak et al. 2015 MIL loss summed over images, and the number of images with a present class."""
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
    per_image_loss = (nll * weight).sum(1) / torch.where(has, per_image, torch.ones_like(per_image))
    mean = per_image_loss[has].mean() if has.any() else maps.sum() * 0.0
    return _loss_sum(per_image_loss.sum(), has.sum().to(maps), mean)


def mil_max(maps: Tensor, labels: Tensor, *, background_index: int | None = None,
            class_weights: Tensor | None = None) -> Tensor:
    """Pathak et al. 2015 MIL loss; see the module docstring."""
    return mil_max_sum(maps, labels, background_index=background_index, class_weights=class_weights).mean


def _bce(pooled: Tensor, labels: Tensor, background_index: int | None, class_weights: Tensor | None) -> LossSum:
    target = _present(labels, background_index).to(pooled)
    weight = None if class_weights is None else class_weights.to(pooled).expand_as(pooled)
    total = F.binary_cross_entropy_with_logits(pooled, target, weight=weight, reduction="sum")
    mean = F.binary_cross_entropy_with_logits(pooled, target, weight=weight)
    return _loss_sum(total, torch.tensor(float(pooled.numel()), device=pooled.device), mean)


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
                background_index: int | None = None, class_weights: Tensor | None = None) -> LossSum:
    return _bce(pool(maps), labels, background_index, class_weights)


def _mean(parts: Callable[..., LossSum], *args: object, **kwargs: object) -> Tensor:
    return parts(*args, **kwargs).mean


def multilabel_sum(maps: Sequence[Tensor], labels: Tensor, *, weights: Sequence[float] | None = None,
                   class_weights: Tensor | None = None) -> LossSum:
    """Multi-label BCE of the globally AVERAGED class maps of every depth, summed, and the image-class pairs.

    ``maps``: ``D`` tensors ``(N, K, h_d, w_d)``; ``labels``: ``(N, K)`` multi-hot.
    ``weights`` (``D``, default equal) are normalised to sum to 1, so the mean is on the
    scale of one BCE whatever the number of depths; ``count`` is ``N * K``.
    """
    if not maps:
        raise ValueError("multilabel loss: no class maps")
    weights = [1.0] * len(maps) if weights is None else [float(w) for w in weights]
    if len(weights) != len(maps) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"multilabel loss: {len(maps)} maps need as many non-negative weights, got {weights}")
    parts = [_bce(m.float().mean(dim=(2, 3)), labels, None, class_weights) for m in maps]
    total = sum(w / sum(weights) * p.total for w, p in zip(weights, parts))
    mean = sum(w / sum(weights) * p.mean for w, p in zip(weights, parts))
    return _loss_sum(total, parts[0].count, mean)


def multilabel(maps: Sequence[Tensor], labels: Tensor, *, weights: Sequence[float] | None = None,
               class_weights: Tensor | None = None) -> Tensor:
    """Mean of :func:`multilabel_sum`."""
    return multilabel_sum(maps, labels, weights=weights, class_weights=class_weights).mean


def build_loss(
    name: LossName,
    *,
    ignore_index: int = 255,
    class_weights: Tensor | None = None,
    r: float = 5.0,
    k: float = 0.1,
    background_index: int | None = None,
    parts: bool = False,
) -> Callable[[Tensor, Tensor], Tensor] | Callable[[Tensor, Tensor], LossSum]:
    """The loss called ``name`` with its settings bound; see the module docstring.

    ``parts=True``: the callable returns the :class:`LossSum` (``total``, ``count``, ``mean``), not the mean.
    """
    if name == "ce":
        fn: Callable[..., LossSum] = functools.partial(cross_entropy_sum, ignore_index=ignore_index,
                                                       class_weights=class_weights)
    elif name not in MIL_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    elif r <= 0:
        raise ValueError(f"lse sharpness r must be > 0, got {r}")
    elif not 0 < k <= 1:
        raise ValueError(f"topk fraction k must be in (0, 1], got {k}")
    else:
        mil = dict(background_index=background_index, class_weights=class_weights)
        if name == "mil-max":
            fn = functools.partial(mil_max_sum, **mil)
        else:
            pool = {
                "sigmoid-max": max_pool,
                "lse": functools.partial(lse_pool, r=r),
                "topk": functools.partial(topk_pool, k=k),
            }[name]
            fn = functools.partial(_pooled_bce, pool, **mil)
    return fn if parts else functools.partial(_mean, fn)
