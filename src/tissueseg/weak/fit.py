"""A small training loop and crop sampler shared by the weak pipeline and bench/quality.py.

Every method (full or weak) runs through the same :func:`fit` with the same optimiser,
schedule and batches, so that the only difference between methods is the supervision.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .labelgrid import crop_bits

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def to_input(rgb: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, H, W)`` (channels_last)."""
    x = torch.as_tensor(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


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
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            img, t = np.rot90(img, k), np.rot90(t, k)
            if flip:
                img, t = img[:, ::-1], t[:, ::-1]
            imgs.append(img)
            tgts.append(t)
        yield np.stack(imgs), np.stack(tgts)


def fit(
    model: torch.nn.Module,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    loss_fn: LossFn,
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
