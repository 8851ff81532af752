"""Torch datasets over a patch manifest: crops of memory-mapped regions.

Each region image and mask is decoded once into ``.npy`` files (:class:`RegionCache`);
patches are crops of the memory maps, so no patch files are needed and DataLoader workers
share the page cache. :class:`PatchDataset` serves samples with a pixel mask or with
image labels only (the mask is never read); :class:`StepSampler` makes the data order a
function of ``(seed, step)`` so an interrupted run resumes on the same sequence, and
shards each global batch over DDP processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from . import io
from .augment import Augment
from .schemes import IGNORE, ClassScheme

Targets = Literal["masks", "labels"]
"""What a training sample carries: a pixel ``mask`` (with the image labels when the table has
them), or the image-level ``labels`` only."""
Key = int | tuple[int, int]
"""A dataset key: a row position, or ``(row position, epoch)`` (the epoch seeds augmentation)."""


class RegionCache:
    """Region images and scheme-applied label maps decoded once to memory-mappable ``.npy``.

    Entries are keyed by the source path, its modification time and size (and the scheme
    for label maps), written atomically (safe with concurrent DataLoader workers) and
    opened with ``np.load(mmap_mode="r")`` afterwards.
    """

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self._open: dict[Path, np.ndarray] = {}

    def image(self, path: str | Path) -> np.ndarray:
        """``(H, W, 3)`` uint8 memory map of an RGB region."""
        return self.get(Path(path), "img", io.read_image)

    def labels(self, path: str | Path, scheme: ClassScheme) -> np.ndarray:
        """``(H, W)`` uint8 memory map of a mask after ``scheme`` (:data:`IGNORE` = don't care)."""
        path = Path(path)

        def decode(p: Path) -> np.ndarray:
            try:
                return scheme.apply(io.read_mask(p))
            except ValueError as exc:
                raise io.InputError(p, str(exc)) from None

        tag = f"lab-{scheme.name}-" + hashlib.sha1(scheme.lut.tobytes()).hexdigest()[:8]
        return self.get(path, tag, decode)

    def get(self, path: Path, tag: str, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        """The memory map of ``decode(path)``, computed once per (file state, ``tag``).

        ``tag`` names the derived array (its first ``-``-separated word goes in the file
        name) and must change whenever ``decode`` would give another result.
        """
        try:
            st = path.stat()
        except OSError:
            raise io.InputError(path, "no such file") from None
        src = str(path.resolve())
        key = hashlib.sha1(f"{src}|{st.st_mtime_ns}|{st.st_size}|{tag}".encode()).hexdigest()[:16]
        file = self.dir / f"{path.stem}.{tag.split('-')[0]}.{key}.npy"
        if file in self._open:
            return self._open[file]
        if not file.is_file():
            arr = decode(path)
            with io.atomic_path(file) as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr))
        arr = np.load(file, mmap_mode="r")
        self._open[file] = arr
        return arr

    def __getstate__(self) -> dict:  # memory maps are reopened in each worker
        return {"dir": self.dir, "_open": {}}


def label_columns(df: pd.DataFrame, scheme: ClassScheme) -> list[str]:
    """The ``label_<class>`` columns of ``df`` in scheme order (ValueError if any is missing)."""
    cols = [f"label_{n}" for n in scheme.names]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"table has no image-label columns {missing} for scheme {scheme.name!r}")
    return cols


class PatchDataset(Dataset):
    """Samples of a manifest (or a whole-image table such as ``weaklabels.read_weak_folder``).

    Rows with ``x``, ``y``, ``size`` are crops of their region; rows without them are whole
    images. ``patch_size`` (default: the manifest's) re-centres a window of that size on the
    row's window, moved inside the region where it fits; pixels outside the region are
    white with an ignored mask. A sample is a
    dict: ``image`` float ``(3, H, W)`` normalised, ``mask`` long ``(H, W)`` (``targets="masks"``),
    ``labels`` float ``(K,)`` multi-hot from the ``label_<class>`` columns (``targets="labels"``,
    and with masks when the table has them), ``index`` (the row position). With
    ``targets="labels"`` no mask is ever read. ``label_source`` gives a region's ``(H, W)`` class-index map by
    image path in place of its ``mask_path`` (e.g. :class:`~tissueseg.weak.pseudomask.PseudoMasks`).
    """

    def __init__(
        self,
        manifest_df: pd.DataFrame,
        scheme: ClassScheme,
        cache: RegionCache,
        targets: Targets = "masks",
        patch_size: int | None = None,
        augment: Augment | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        stain_normalizer: Callable[[np.ndarray], np.ndarray] | None = None,
        label_source: Callable[[str], np.ndarray] | None = None,
    ):
        if targets not in ("masks", "labels"):
            raise ValueError(f"targets must be 'masks' or 'labels', got {targets!r}")
        df = manifest_df.reset_index(drop=True)
        if targets == "masks" and label_source is None and "mask_path" not in df.columns:
            raise ValueError("pixel masks need a mask_path column (or a label_source)")
        self.df, self.scheme, self.cache, self.targets = df, scheme, cache, targets
        self.label_source = label_source
        self.augment, self.stain_normalizer = augment, stain_normalizer
        self.mean = torch.tensor(normalize[0], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(normalize[1], dtype=torch.float32).view(3, 1, 1)
        self.whole = not {"x", "y", "size"} <= set(df.columns)
        if not self.whole and patch_size is None and df["size"].nunique() > 1:
            raise ValueError("manifest mixes patch sizes: give patch_size")
        self.xys = None if self.whole else df[["x", "y", "size"]].to_numpy(np.int64)
        self.patch_size = patch_size
        has_labels = all(f"label_{n}" in df.columns for n in scheme.names)
        self.labels = None
        if targets == "labels" or has_labels:
            self.labels = torch.from_numpy(df[label_columns(df, scheme)].to_numpy(np.float32, copy=True))
        self.image_paths = df["image_path"].astype(str).tolist()
        self.mask_paths = (df["mask_path"].astype(str).tolist() if targets == "masks" and label_source is None
                           else None)

    def __len__(self) -> int:
        return len(self.df)

    def window(self, i: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` of row ``i`` in a region of ``shape`` ``(H, W)``."""
        if self.whole:
            x, y, w, h = 0, 0, shape[1], shape[0]
        else:
            x, y, w = (int(v) for v in self.xys[i])
            h = w
        if self.patch_size is not None and (w, h) != (self.patch_size, self.patch_size):
            x, y = x + (w - self.patch_size) // 2, y + (h - self.patch_size) // 2
            w = h = self.patch_size
            if shape[1] >= w and shape[0] >= h:  # moved inside the region rather than padded
                x, y = min(max(x, 0), shape[1] - w), min(max(y, 0), shape[0] - h)
        return x, y, w, h

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor | int]:
        i, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        i = int(i)
        region = self.cache.image(self.image_paths[i])
        x, y, w, h = self.window(i, region.shape[:2])
        mask = None
        if self.targets == "masks":
            if self.label_source is not None:
                source, labels = self.image_paths[i], self.label_source(self.image_paths[i])
            else:
                source, labels = self.mask_paths[i], self.cache.labels(self.mask_paths[i], self.scheme)
            if labels.shape != region.shape[:2]:
                raise io.InputError(source, f"mask {labels.shape} and image {region.shape[:2]} differ")
            mask = crop(labels, x, y, w, h, fill=IGNORE)
        return self.sample(crop(region, x, y, w, h, fill=255), mask, epoch, i,
                           None if self.labels is None else self.labels[i])

    def sample(self, rgb: np.ndarray, mask: np.ndarray | None, epoch: int, index: int,
               labels: torch.Tensor | None = None) -> dict[str, torch.Tensor | int]:
        """The sample of uint8 pixels ``rgb`` ``(H, W, 3)`` and class indices ``mask`` ``(H, W)``: stain-normalised,
        augmented (drawn from ``epoch`` and ``index``) and normalised as every sample of this dataset."""
        if self.stain_normalizer is not None:
            rgb = self.stain_normalizer(rgb)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
        target = None if mask is None else torch.from_numpy(np.asarray(mask).astype(np.int64))
        if self.augment is not None:
            image, target = self.augment(image, target, epoch=epoch, index=index)
        sample: dict[str, torch.Tensor | int] = {"image": (image - self.mean) / self.std, "index": index}
        if target is not None:
            sample["mask"] = target.contiguous()
        if labels is not None:
            sample["labels"] = labels
        return sample


def crop(arr: np.ndarray, x: int, y: int, w: int, h: int, fill: int) -> np.ndarray:
    """``arr[y:y+h, x:x+w]`` as a new array; parts outside ``arr`` are ``fill``."""
    H, W = arr.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if (x0, y0, x1, y1) == (x, y, x + w, y + h):
        return np.array(arr[y:y1, x:x1])
    out = np.full((h, w, *arr.shape[2:]), fill, dtype=arr.dtype)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[y0:y1, x0:x1]
    return out


def class_pixel_counts(df: pd.DataFrame, scheme: ClassScheme) -> np.ndarray:
    """Per-class labelled pixels of the manifest's patches (from the ``frac_<class>`` columns)."""
    cols = [f"frac_{n}" for n in scheme.names]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"manifest has no class-fraction columns {missing}")
    return (df[cols].to_numpy(np.float64) * (df["size"].to_numpy(np.float64) ** 2)[:, None]).sum(axis=0)


def balanced_weights(df: pd.DataFrame, scheme: ClassScheme, by: Literal["fractions", "labels"]) -> np.ndarray:
    """Per-patch sampling weights that give every class about the same share of draws.

    A patch weighs ``sum_c a_c / A_c`` where ``a_c`` is its fraction of class ``c``
    (``by="fractions"``, from the masks) or its image label (``by="labels"``) and ``A_c``
    the total over all patches.
    """
    cols = label_columns(df, scheme) if by == "labels" else [f"frac_{n}" for n in scheme.names]
    a = df[cols].to_numpy(np.float64)
    totals = a.sum(axis=0)
    w = (a[:, totals > 0] / totals[totals > 0]).sum(axis=1)
    if not (w > 0).any():
        raise ValueError("no patch holds any class: cannot balance the sampling")
    return w / w.sum()


class StepSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(row, epoch)`` keys for steps ``start..stop-1``, a function of the seed only.

    The sample stream is a sequence of epochs of ``n`` draws each: a seeded permutation of
    the rows, or ``n`` seeded draws with replacement by ``weights``. Step ``s`` takes stream
    positions ``s*B .. s*B+B-1`` (``B`` the global batch) and process ``rank`` of ``world``
    takes every ``world``-th of them, so the global batch is the same for any number of
    processes and a resumed run continues the same sequence.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, stop: int,
        weights: np.ndarray | None = None, rank: int = 0, world: int = 1,
    ):
        if n <= 0:
            raise ValueError("no samples to draw from")
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not a multiple of the {world} processes")
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.rank, self.world = rank, world
        self._epoch: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The rows drawn in ``epoch``."""
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = (
                torch.randperm(self.n, generator=g)
                if self.weights is None
                else torch.multinomial(self.weights, self.n, replacement=True, generator=g)
            )
            self._epoch = (epoch, order)
        return self._epoch[1]

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            keys = []
            for pos in range(step * self.batch_size + self.rank, (step + 1) * self.batch_size, self.world):
                epoch, offset = divmod(pos, self.n)
                keys.append((int(self.epoch_order(epoch)[offset]), epoch))
            yield keys
