"""Mosaics: training images stitched from tiles of single-class areas, with exact masks.

PistoSeg (Fang et al., AAAI 2023) trains a segmenter without any activation map: a patch
whose label set holds ONE class is that class everywhere, so square tiles cut from such
patches, laid side by side (random rotations and flips), make an image whose mask is
known exactly. Its ablation (WSSS4LUAD) found small tiles best (32 px of 224).

- :func:`single_label_sources`: the single-label patches of a manifest or folder table, as
  source rectangles ``(image_path, x, y, w, h, class)``;
- :func:`pure_sources`: the ``tile``-sized windows of a label map (e.g. a pseudo-mask of
  :mod:`.cam`) that hold one class only, in the same form (tiles from mixed patches);
- :class:`Mosaics`: mosaics and their masks as uint8 arrays, each a function of
  ``(seed, epoch, index)`` only;
- :class:`WithMosaics` and :class:`MosaicBatches`: a share of every training batch made of
  mosaics (method ``cam`` with ``cam.mosaics``), through the patches' own augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from .. import io
from ..data import Key, PatchDataset, StepSampler, label_columns
from ..schemes import IGNORE, ClassScheme
from .cam import white_pixels

SOURCE_COLUMNS = ["image_path", "x", "y", "w", "h", "class"]
"""A source rectangle of one class in an image."""


def single_label_sources(df: pd.DataFrame, scheme: ClassScheme) -> pd.DataFrame:
    """The patches of ``df`` labelled with exactly one class, clipped to their image.

    ``df``: a tile manifest (``x``, ``y``, ``size``, ``width``, ``height``) or a table of
    whole images (their size is read from the files).
    """
    labels = df[label_columns(df, scheme)].to_numpy(np.uint8) > 0
    one = labels.sum(axis=1) == 1
    rows = df[one]
    cls = labels[one].argmax(axis=1)
    if {"x", "y", "size"} <= set(df.columns):
        x, y, s = (rows[c].to_numpy(np.int64) for c in ("x", "y", "size"))
        x0, y0 = np.maximum(x, 0), np.maximum(y, 0)
        w = np.minimum(x + s, rows["width"].to_numpy(np.int64)) - x0
        h = np.minimum(y + s, rows["height"].to_numpy(np.int64)) - y0
    else:
        sizes = np.array([io.image_size(p) for p in rows["image_path"]], np.int64).reshape(-1, 2)
        x0 = y0 = np.zeros(len(rows), np.int64)
        w, h = sizes[:, 0], sizes[:, 1]
    return pd.DataFrame({"image_path": rows["image_path"].astype(str).to_numpy(), "x": x0, "y": y0, "w": w, "h": h,
                         "class": cls})


def pure_sources(labels: np.ndarray, tile: int, image_path: str, stride: int | None = None) -> pd.DataFrame:
    """The ``tile x tile`` windows of a ``(H, W)`` label map (on a ``stride`` grid) holding one class and no ignore."""
    stride = stride or tile
    h, w = labels.shape
    rows = []
    for y in range(0, h - tile + 1, stride):
        for x in range(0, w - tile + 1, stride):
            win = labels[y : y + tile, x : x + tile]
            c = int(win[0, 0])
            if c != IGNORE and (win == c).all():
                rows.append((image_path, x, y, tile, tile, c))
    return pd.DataFrame(rows, columns=SOURCE_COLUMNS).astype({"x": np.int64, "y": np.int64, "w": np.int64,
                                                              "h": np.int64, "class": np.int64})


def mosaic(sources: pd.DataFrame, images: Callable[[str], np.ndarray], size: int, tile: int,
           rng: np.random.Generator, balance: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One ``(size, size, 3)`` uint8 mosaic and its ``(size, size)`` uint8 mask.

    Every ``tile x tile`` cell (``size`` must be a multiple of ``tile``) is a random window
    of a random source, rotated by a random multiple of 90 degrees and maybe flipped; its
    mask is the source's class. ``balance``: the class of each cell is drawn uniformly
    among the classes that have sources (else sources are drawn uniformly).
    """
    if size % tile:
        raise ValueError(f"mosaic size {size} is not a multiple of the tile {tile}")
    usable = sources[(sources["w"] >= tile) & (sources["h"] >= tile)]
    if usable.empty:
        raise ValueError(f"no source of at least {tile}x{tile} px to make mosaics from")
    by_class = {int(c): g.index.to_numpy() for c, g in usable.groupby("class")}
    classes = sorted(by_class)
    rgb = np.empty((size, size, 3), np.uint8)
    mask = np.empty((size, size), np.uint8)
    for ty in range(0, size, tile):
        for tx in range(0, size, tile):
            if balance:
                pool = by_class[classes[int(rng.integers(len(classes)))]]
                row = usable.loc[pool[int(rng.integers(len(pool)))]]
            else:
                row = usable.iloc[int(rng.integers(len(usable)))]
            x = int(row["x"]) + int(rng.integers(int(row["w"]) - tile + 1))
            y = int(row["y"]) + int(rng.integers(int(row["h"]) - tile + 1))
            cut = np.asarray(images(str(row["image_path"]))[y : y + tile, x : x + tile])
            cut = np.rot90(cut, int(rng.integers(4)))
            if rng.integers(2):
                cut = cut[:, ::-1]
            rgb[ty : ty + tile, tx : tx + tile] = cut
            mask[ty : ty + tile, tx : tx + tile] = int(row["class"])
    return rgb, mask


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A numpy generator that depends only on ``(seed, epoch, index)``."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]))


class Mosaics:
    """``length`` mosaics of ``sources``, each a function of ``(seed, epoch, index)`` only.

    :meth:`arrays` gives mosaic ``index`` of ``epoch`` as uint8 arrays; what makes them a
    training sample (stain normalisation, augmentation, the network's normalisation) is the
    patches' own pipeline (:class:`WithMosaics`). ``images(path)`` gives an image array (e.g.
    ``RegionCache.image``). ``white``: grey level above which mask pixels are
    :data:`IGNORE` (glass, for schemes without a background class; None: off).
    """

    def __init__(self, sources: pd.DataFrame, images: Callable[[str], np.ndarray], *, size: int = 128,
                 tile: int = 32, length: int = 1000, seed: int = 0, balance: bool = True, white: int | None = None):
        missing = set(SOURCE_COLUMNS) - set(sources.columns)
        if missing:
            raise ValueError(f"mosaic sources lack columns {sorted(missing)}")
        if not ((sources["w"] >= tile) & (sources["h"] >= tile)).any():
            raise ValueError(f"no source of at least {tile}x{tile} px to make mosaics from")
        if size % tile:
            raise ValueError(f"mosaic size {size} is not a multiple of the tile {tile}")
        self.sources = sources.reset_index(drop=True)
        self.images, self.size, self.tile, self.length = images, size, tile, length
        self.seed, self.balance, self.white = seed, balance, white

    def __len__(self) -> int:
        return self.length

    def arrays(self, index: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 mosaic ``(size, size, 3)`` and mask ``(size, size)`` of a key."""
        rng = sample_rng(self.seed, epoch, index)
        rgb, mask = mosaic(self.sources, self.images, self.size, self.tile, rng, self.balance)
        if self.white is not None:
            mask[white_pixels(rgb, self.white)] = IGNORE
        return rgb, mask


class WithMosaics(Dataset):
    """The samples of ``patches`` (keys below ``len(patches)``) and mosaics (keys from there on).

    A mosaic key ``(len(patches) + j, epoch)`` is mosaic ``j`` of ``mosaics`` (a function of
    the mosaics' seed and ``j``), stain-normalised, augmented and normalised by
    :meth:`PatchDataset.sample <tissueseg.data.PatchDataset.sample>` like every patch; its
    ``labels`` (when the patches carry them) are the classes it shows.
    """

    def __init__(self, patches: PatchDataset, mosaics: Mosaics):
        self.patches, self.mosaics = patches, mosaics

    def __len__(self) -> int:
        return len(self.patches) + len(self.mosaics)

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor | int]:
        i, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        j = int(i) - len(self.patches)
        if j < 0:
            return self.patches[key]
        rgb, mask = self.mosaics.arrays(j)
        labels = None
        if self.patches.labels is not None:
            labels = torch.zeros(self.patches.labels.shape[1])
            labels[np.unique(mask[mask != IGNORE]).astype(np.int64)] = 1.0
        return self.patches.sample(rgb, mask, int(epoch), int(i), labels)


class MosaicBatches(Sampler[list[tuple[int, int]]]):
    """The batches of a :class:`~tissueseg.data.StepSampler` with the last ``share`` of every global
    batch made of mosaic keys of :class:`WithMosaics` (``offset`` = the number of patches).

    The global batch's last ``round(share * batch)`` stream positions are mosaics; a mosaic
    is numbered by its stream position, so the batches are a function of the seed and the
    step only, for any number of processes and after a resume.
    """

    def __init__(self, steps: StepSampler, share: float, offset: int):
        if not 0 <= share < 1:
            raise ValueError(f"mosaic share {share} is not in [0, 1)")
        self.steps, self.offset = steps, offset
        self.mosaics = round(share * steps.batch_size)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s, first = self.steps, self.steps.batch_size - self.mosaics
        for step, keys in zip(range(s.start, s.stop), s):
            positions = range(step * s.batch_size + s.rank, (step + 1) * s.batch_size, s.world)
            yield [(self.offset + pos, 0) if pos - step * s.batch_size >= first else key
                   for pos, key in zip(positions, keys)]
