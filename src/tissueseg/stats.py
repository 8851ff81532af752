"""Pixel counts, class proportions and class weights, per image and over a dataset.

Counting is a 256-bin histogram of the raw uint8 codes, folded into classes by the scheme
(:meth:`~tissueseg.schemes.ClassScheme.fold_counts`): no per-pixel Python, no label map.
Proportions leave ignored pixels out of the denominator; counts report them separately.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd

from . import io
from .batch import run_batch
from .schemes import ClassScheme

WeightMethod = Literal["inverse", "median", "none"]
OUTPUT_FILES = ("stats.json", "per_image.csv", "classes.csv", "proportions.png")
_CHUNK = 1 << 24  # float32 histogram bins are exact up to 2**24 counts


def count_codes(mask: np.ndarray) -> np.ndarray:
    """``(256,)`` int64 pixel count of each raw code in a uint8 mask.

    Uses OpenCV's histogram (about 5x faster than ``np.bincount``, which first copies
    the mask to int64) over chunks of at most 2**24 pixels, so the float32 bins stay exact.
    """
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 codes, got {mask.dtype}")
    flat = np.ascontiguousarray(mask).reshape(-1)
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK].reshape(1, -1)
        counts += cv2.calcHist([chunk], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return counts


def count_classes(mask: np.ndarray, scheme: ClassScheme) -> tuple[np.ndarray, int]:
    """``(per-class pixel counts (K,) int64, ignored pixel count)`` of a raw-code mask.

    Raises ``ValueError`` naming the codes when the mask holds codes outside the scheme.
    """
    return scheme.fold_counts(count_codes(mask))


def class_weights(counts: np.ndarray, method: WeightMethod, present_in: np.ndarray | None = None) -> np.ndarray:
    """Per-class loss weights from per-class pixel counts; classes with no pixels get 0.

    - ``inverse``: ``w_c = 1 / f_c`` with ``f_c = n_c / sum(n)``, scaled so the weights of
      the classes with pixels average 1.
    - ``median`` (median frequency balancing, Eigen & Fergus 2015): ``f_c = n_c / P_c``
      where ``P_c`` (``present_in[c]``) is the number of labelled pixels of the images that
      contain class ``c``, and ``w_c = median(f) / f_c`` (median over classes with pixels).
      Without ``present_in`` every image is taken to hold every class (``P_c = sum(n)``).
    - ``none``: all ones.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative pixel counts")
    if method == "none":
        return np.ones_like(counts)
    has = counts > 0
    weights = np.zeros_like(counts)
    if not has.any():
        return weights
    if method == "inverse":
        weights[has] = counts.sum() / counts[has]
        return weights / weights[has].mean()
    if method == "median":
        denom = np.full_like(counts, counts.sum()) if present_in is None else np.asarray(present_in, np.float64)
        if denom.shape != counts.shape or (denom[has] < counts[has]).any():
            raise ValueError("present_in must give, per class, at least as many pixels as the class has")
        freq = counts[has] / denom[has]
        weights[has] = np.median(freq) / freq
        return weights
    raise ValueError(f"unknown weighting {method!r}: use inverse, median or none")


def _image_counts(path: Path, scheme: ClassScheme) -> tuple[int, int, np.ndarray, int]:
    """``(width, height, per-class counts, ignored)`` of one mask file."""
    mask = io.read_mask(path)
    try:
        per_class, ignored = count_classes(mask, scheme)
    except ValueError as exc:
        raise io.InputError(path, str(exc)) from None
    return mask.shape[1], mask.shape[0], per_class, ignored


@dataclass
class DatasetStats:
    """Counts of a set of masks under one scheme.

    ``per_image`` has one row per mask: ``image``, ``width``, ``height``, ``ignored``, then
    ``px_<class>`` (pixels) and ``prop_<class>`` (share of the image's labelled pixels,
    NaN when it has none) for every class.
    """

    scheme: ClassScheme
    per_image: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def pixel_columns(self) -> list[str]:
        return [f"px_{n}" for n in self.scheme.names]

    @property
    def counts_matrix(self) -> np.ndarray:
        """``(images, K)`` int64 per-class pixel counts."""
        return self.per_image[self.pixel_columns].to_numpy(dtype=np.int64).reshape(-1, self.scheme.num_classes)

    @property
    def class_pixels(self) -> np.ndarray:
        return self.counts_matrix.sum(axis=0)

    @property
    def ignored(self) -> int:
        return int(self.per_image["ignored"].sum())

    @property
    def labelled(self) -> int:
        return int(self.class_pixels.sum())

    @property
    def proportions(self) -> np.ndarray:
        """Share of the labelled (not ignored) pixels per class."""
        total = self.labelled
        return self.class_pixels / total if total else np.zeros(self.scheme.num_classes)

    @property
    def images_with(self) -> np.ndarray:
        """How many images contain each class."""
        return (self.counts_matrix > 0).sum(axis=0)

    @property
    def present_in(self) -> np.ndarray:
        """Labelled pixels of the images that contain each class (median-frequency denominator)."""
        m = self.counts_matrix
        return ((m > 0) * m.sum(axis=1, keepdims=True)).sum(axis=0)

    def weights(self, method: WeightMethod) -> np.ndarray:
        return class_weights(self.class_pixels, method, self.present_in if method == "median" else None)

    def classes_table(self) -> pd.DataFrame:
        """One row per class: codes, colour, pixels, proportion, images, weights."""
        s = self.scheme
        return pd.DataFrame({
            "class": s.names,
            "codes": [" ".join(str(c) for c in cls.codes) for cls in s.classes],
            "color": ["#{:02x}{:02x}{:02x}".format(*cls.color) for cls in s.classes],
            "pixels": self.class_pixels,
            "proportion": self.proportions,
            "images": self.images_with,
            "weight_inverse": self.weights("inverse"),
            "weight_median": self.weights("median"),
        })

    def to_json(self) -> dict:
        """The summary as plain data (what ``stats.json`` and ``--json`` hold)."""
        return {
            "scheme": self.scheme.name,
            "images": len(self.per_image),
            "labelled_pixels": self.labelled,
            "ignored_pixels": self.ignored,
            "classes": self.classes_table().to_dict(orient="records"),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
        }

    def write(self, out: str | Path, overwrite: bool = False) -> list[Path]:
        """Write :data:`OUTPUT_FILES` into ``out``; refuses to replace them unless ``overwrite``."""
        out = io.check_output_dir(out)
        check_outputs(out, overwrite)
        paths = [out / name for name in OUTPUT_FILES]
        io.write_json(paths[0], self.to_json())
        with io.atomic_path(paths[1]) as tmp:
            self.per_image.to_csv(tmp, index=False)
        with io.atomic_path(paths[2]) as tmp:
            self.classes_table().to_csv(tmp, index=False)
        plot_proportions(self.proportions, self.scheme, paths[3],
                         title=f"{len(self.per_image)} images, scheme {self.scheme.name}")
        return paths


def check_outputs(out: str | Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` when stats outputs already exist in ``out`` and not ``overwrite``."""
    existing = [str(Path(out) / n) for n in OUTPUT_FILES if (Path(out) / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: exists (use --overwrite to replace it)")


def dataset_stats(
    masks: Sequence[str | Path],
    scheme: ClassScheme,
    workers: int = 1,
    scheduler: str | None = None,
    quiet: bool = False,
) -> DatasetStats:
    """Count every mask (files or folders); unreadable masks or unknown codes are skipped."""
    files = io.list_images(masks)
    batch = run_batch(functools.partial(_image_counts, scheme=scheme), files, workers=workers,
                      scheduler=scheduler, desc="stats", quiet=quiet)
    k = scheme.num_classes
    counts = np.array([r[2] for r in batch.ok], dtype=np.int64).reshape(-1, k)
    labelled = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        props = np.where(labelled > 0, counts / np.maximum(labelled, 1), np.nan)
    per_image = pd.DataFrame({
        "image": [Path(p).name for p, _ in batch.results],
        "width": [r[0] for r in batch.ok],
        "height": [r[1] for r in batch.ok],
        "ignored": np.array([r[3] for r in batch.ok], dtype=np.int64),
    })
    per_image = pd.concat([
        per_image,
        pd.DataFrame(counts, columns=[f"px_{n}" for n in scheme.names]),
        pd.DataFrame(props, columns=[f"prop_{n}" for n in scheme.names]),
    ], axis=1)
    return DatasetStats(scheme, per_image, batch.skipped)


def plot_proportions(
    proportions: np.ndarray, scheme: ClassScheme, path: str | Path, title: str = "", log: bool = False
) -> Path:
    """Horizontal bars of class proportions (largest on top) in the scheme's colours.

    Every bar carries its percentage, so tiny classes stay legible; ``log`` uses a log x
    axis. Classes with no pixels are listed in the caption instead of drawn.
    """
    from matplotlib.figure import Figure

    proportions = np.asarray(proportions, dtype=np.float64)
    order = [i for i in np.argsort(-proportions, kind="stable") if proportions[i] > 0]
    absent = [scheme.names[i] for i in range(scheme.num_classes) if proportions[i] <= 0]
    fig = Figure(figsize=(7, 0.35 * max(len(order), 1) + 1.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(order))
    values = proportions[order] * 100
    ax.barh(y, values, color=scheme.colors[order] / 255 if order else None, edgecolor="0.3", linewidth=0.5)
    ax.set_yticks(y, [scheme.names[i] for i in order])
    ax.invert_yaxis()
    if log and order:
        ax.set_xscale("log")
    top = values.max() if order else 1.0
    ax.set_xlim(right=top * (8 if log else 1.25))
    for yi, v in zip(y, values):
        ax.text(v * (1.1 if log else 1) + (0 if log else top * 0.01), yi, f"{v:.3g}%", va="center", fontsize=8)
    ax.set_xlabel("% of labelled pixels (ignored excluded)")
    ax.set_title(title, fontsize=10)
    if absent:
        ax.set_xlabel(ax.get_xlabel() + "\n" + textwrap.fill(f"absent: {', '.join(absent)}", 90), fontsize=8)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
