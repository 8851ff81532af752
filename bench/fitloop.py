"""The training loop, crop sampler and label-set losses that bench/quality.py compares methods with.

Every method (full or weak) runs through the same :func:`fit` with the same optimiser,
schedule and batches, so that the only difference between methods is the supervision.
The library trains with :func:`tissueseg.train.train`; this loop exists so that the bench
can give every method exactly the same budget, including methods the library does not
ship: the label-set losses (the previous default weak method) and MIL on crop labels.

Label sets are bit-coded (bit ``k`` = class ``k``) in one integer map so that flips and
rotations keep them aligned with the image; ``0`` = no label (ignored).

- :func:`labelset_loss`: every pixel belongs to one of its cell's classes. The partial-label
  cross-entropy ``-log sum_{k in L} p_k`` (the "constrain" term of Kolesnikov & Lampert
  2016, SEC, applied per cell): for a cell with one class it is the ordinary
  cross-entropy, for a mixed cell it only pushes down the absent classes.
- :func:`presence_loss`: every class of a cell occupies some of its pixels. The mean
  log-probability of the top ``k`` fraction of the cell's pixels for each present class
  (global weighted rank pooling, the "expand" term of SEC).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tissueseg.weak import tta
from tissueseg.weak.mosaic import Mosaics

MAX_CLASSES = 62
"""Bit-coded label sets fit an int64 map: at most this many classes."""


def encode(grid_labels: np.ndarray) -> np.ndarray:
    """``(..., K)`` multi-hot to bit-coded int64 ``(...)`` (bit ``k`` = class ``k``)."""
    k = grid_labels.shape[-1]
    if k > MAX_CLASSES:
        raise ValueError(f"label grids hold at most {MAX_CLASSES} classes, got {k}")
    return (grid_labels.astype(np.int64) << np.arange(k, dtype=np.int64)).sum(axis=-1)


def crop_bits(bits: np.ndarray, cell: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The ``(h, w)`` pixel map of label sets of a crop at ``(x, y)`` (0 past the region)."""
    gh, gw = bits.shape
    ys = np.arange(y, y + h) // cell
    xs = np.arange(x, x + w) // cell
    out = bits[np.clip(ys, 0, gh - 1)][:, np.clip(xs, 0, gw - 1)]
    out[(ys < 0) | (ys >= gh)] = 0
    out[:, (xs < 0) | (xs >= gw)] = 0
    return out


def decode(bits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Bit-coded ``(N, H, W)`` label sets to a bool ``(N, K, H, W)`` "allowed" mask."""
    shifts = torch.arange(num_classes, device=bits.device).view(1, -1, 1, 1)
    return ((bits.unsqueeze(1) >> shifts) & 1).bool()


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


def grid_loss(cell: int, presence: float = 0.5, k: float = 0.1) -> Callable:
    """``loss(model, x, bits)``: :func:`labelset_loss` + ``presence`` x :func:`presence_loss`."""

    def loss(model: torch.nn.Module, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        value = labelset_loss(logits, bits)
        if presence > 0:
            value = value + presence * presence_loss(logits, bits, cell, k)
        return value

    return loss


def to_input(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, H, W)`` (:func:`tissueseg.weak.tta.to_input`, channels_last)."""
    return tta.to_input(rgb, (mean, std)).contiguous(memory_format=torch.channels_last)


def crops(
    regions: Sequence[tuple[np.ndarray, np.ndarray]],
    size: int,
    batch: int,
    seed: int,
    align: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches ``(rgb (N, size, size, 3), target (N, size, size))`` of random crops.

    ``regions`` are ``(rgb, target)`` pairs: a pixel target map of the region's shape, or a
    grid with one value per ``align x align`` cell (a bit-coded label grid, expanded to
    pixels per crop). Crops start on multiples of ``align`` and get a random flip and
    90-degree rotation, image and target alike. Deterministic with ``seed``.
    """
    rng = np.random.default_rng(seed)
    weights = np.array([r.shape[0] * r.shape[1] for r, _ in regions], dtype=np.float64)
    while True:
        imgs, tgts = [], []
        for _ in range(batch):
            rgb, tgt = regions[rng.choice(len(regions), p=weights / weights.sum())]
            y = int(rng.integers(0, (rgb.shape[0] - size) // align + 1)) * align
            x = int(rng.integers(0, (rgb.shape[1] - size) // align + 1)) * align
            img = rgb[y : y + size, x : x + size]
            if tgt.shape == rgb.shape[:2]:
                t = tgt[y : y + size, x : x + size]
            else:
                t = crop_bits(tgt, align, x, y, size, size)
            img, t = _rot_flip(rng, img, t)
            imgs.append(img)
            tgts.append(t)
        yield np.stack(imgs), np.stack(tgts)


def _rot_flip(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = [np.rot90(a, k) for a in arrays]
    return [a[:, ::-1] for a in out] if flip else out


def _balanced(labels: np.ndarray) -> np.ndarray:
    """Draw probabilities of patches with multi-hot ``labels`` ``(M, K)``: ``sum_c label_c / (patches labelled c)``,
    normalised, so that every class gets about the same share of draws."""
    labels = labels.astype(np.float64)
    counts = labels.sum(axis=0)
    p = (labels[:, counts > 0] / counts[counts > 0]).sum(axis=1)
    return p / p.sum()


def _start(rng: np.random.Generator, start: int, patch: int, size: int, extent: int) -> int:
    """A random start of a ``size`` window inside ``[start, start + patch)`` clipped to ``[0, extent)``."""
    lo, hi = max(start, 0), min(start + patch, extent) - size
    return int(rng.integers(lo, hi + 1)) if hi >= lo else min(max(hi, 0), extent - size)


def patch_crops(
    regions: Sequence[tuple[np.ndarray, np.ndarray]],
    corners: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    patch: int,
    size: int,
    batch: int,
    seed: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches of random ``size`` px crops of labelled ``patch`` px patches drawn class-balanced.

    ``corners[r]`` ``(N, 2)`` and multi-hot ``labels[r]`` ``(N, K)`` are region ``r``'s patches;
    a patch is drawn with weight ``sum_c label_c / (patches labelled c)`` (as ``data.balanced``
    samples a manifest by its labels), then a crop inside it (clipped to the region) gets a
    random flip and 90-degree rotation, image and target alike. Deterministic with ``seed``.
    """
    rng = np.random.default_rng(seed)
    where = [(r, int(x), int(y)) for r, xy in enumerate(corners) for x, y in xy]
    p = _balanced(np.concatenate(labels))
    while True:
        imgs, tgts = [], []
        for i in rng.choice(len(where), size=batch, p=p):
            r, x0, y0 = where[i]
            rgb, tgt = regions[r]
            x = _start(rng, x0, patch, size, rgb.shape[1])
            y = _start(rng, y0, patch, size, rgb.shape[0])
            img, t = _rot_flip(rng, rgb[y : y + size, x : x + size], tgt[y : y + size, x : x + size])
            imgs.append(img)
            tgts.append(t)
        yield np.stack(imgs), np.stack(tgts)


def patch_batches(
    patches: np.ndarray, labels: np.ndarray, batch: int, seed: int, balanced: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches ``(rgb (N, P, P, 3), labels (N, K) float32)`` of whole labelled patches.

    ``patches`` ``(M, P, P, 3)`` uint8 with multi-hot ``labels`` ``(M, K)``; every patch gets a
    random flip and 90-degree rotation (its labels do not change). ``balanced``: patches drawn
    with weight ``sum_c label_c / (patches labelled c)``, so that every class gets about the same
    share of draws (as ``data.balanced_weights`` in weak mode); else uniformly. Deterministic with ``seed``.
    """
    rng = np.random.default_rng(seed)
    p = _balanced(labels) if balanced else None
    while True:
        idx = rng.choice(len(patches), size=batch, p=p) if balanced else rng.integers(len(patches), size=batch)
        yield np.stack([_rot_flip(rng, patches[i])[0] for i in idx]), labels[idx].astype(np.float32)


def mosaic_batches(dataset: Mosaics, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches ``(rgb, mask)`` of a :class:`~tissueseg.weak.mosaic.Mosaics`, keys 0, 1, 2, ..."""
    i = 0
    while True:
        pairs = [dataset.arrays(j % len(dataset), j // len(dataset)) for j in range(i, i + batch)]
        i += batch
        yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def concat_batches(*streams: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One batch of every stream, concatenated (e.g. crops of real regions and mosaics)."""
    while True:
        parts = [next(s) for s in streams]
        yield np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fit(
    model: torch.nn.Module,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    normalize: tuple[Sequence[float], Sequence[float]],
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    quiet: bool = False,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps (poly LR, power 0.9); the loss per step.

    ``loss_fn(model, x, target)`` gets the normalised batch and the target as a tensor.
    """
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / steps) ** 0.9)
    history: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=quiet or None, file=sys.stderr, leave=False)
    for _ in bar:
        rgb, target = next(batches)
        loss = loss_fn(model, to_input(rgb, *normalize), torch.from_numpy(np.ascontiguousarray(target)))
        if not torch.isfinite(loss):
            raise ValueError(f"{desc}: loss is not finite at step {len(history)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)
    model.eval()
    return history


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module, rgb: np.ndarray, normalize: tuple[Sequence[float], Sequence[float]], tta: bool = True
) -> torch.Tensor:
    """Softmax ``(K, H, W)`` of a whole ``(H, W, 3)`` region; ``tta`` averages the 4 flips."""
    model.eval()
    x = to_input(rgb[None], *normalize)
    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    out = 0.0
    for dims in flips:
        xi = x.flip(dims) if dims else x
        p = torch.softmax(model(xi), dim=1)
        out = out + (p.flip(dims) if dims else p)
    return (out / len(flips))[0]
