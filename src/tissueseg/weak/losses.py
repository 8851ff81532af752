"""Losses that train a pixel classifier from the label sets of a label grid.

- :func:`labelset_loss`: every pixel belongs to one of its cell's classes. The partial-label
  cross-entropy ``-log sum_{k in L} p_k`` (the "constrain" term of Kolesnikov & Lampert
  2016, SEC, applied per cell): for a cell with one class it is the ordinary
  cross-entropy, for a mixed cell it only pushes down the absent classes.
- :func:`presence_loss`: every class of a cell occupies some of its pixels. The mean
  log-probability of the top ``k`` fraction of the cell's pixels for each present class
  (global weighted rank pooling, the "expand" term of SEC), so small classes are not
  swallowed by their neighbours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .labelgrid import decode


def labelset_loss(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sum_{k in L(i)} softmax(logits)_k(i)`` over pixels ``i`` with a label set.

    ``logits`` ``(N, K, H, W)``; ``bits`` ``(N, H, W)`` bit-coded label sets (0 = ignored).
    """
    allowed = decode(bits, logits.shape[1])
    logp = F.log_softmax(logits.float(), dim=1)
    ll = torch.logsumexp(logp.masked_fill(~allowed, float("-inf")), dim=1)
    valid = bits > 0
    return -ll[valid].mean() if bool(valid.any()) else logits.sum() * 0.0


def presence_loss(logits: torch.Tensor, bits: torch.Tensor, cell: int, k: float = 0.1) -> torch.Tensor:
    """Mean over (cell, present class) of ``-mean(top-k fraction of log p_class in the cell)``.

    The crop must be aligned on the grid: ``H`` and ``W`` multiples of ``cell``.
    """
    n, K, h, w = logits.shape
    if h % cell or w % cell:
        raise ValueError(f"crop {h}x{w} is not a multiple of the {cell}-pixel cell")
    gh, gw = h // cell, w // cell
    logp = F.log_softmax(logits.float(), dim=1)
    cells = logp.view(n, K, gh, cell, gw, cell).permute(0, 1, 2, 4, 3, 5).reshape(n, K, gh, gw, cell * cell)
    top = max(1, round(k * cell * cell))
    pooled = cells.topk(top, dim=-1).values.mean(dim=-1)
    present = decode(bits[:, ::cell, ::cell], K)
    return -pooled[present].mean() if bool(present.any()) else logits.sum() * 0.0
