"""Stain normalisation (Macenko, Reinhard via torchstain) and H&E colour augmentation.

:func:`fit_normalizer` fits a normaliser on a reference H&E image; ``.transform(rgb)``
maps another image to the reference's stain appearance. Tiles with too little tissue
(less than ``min_tissue`` of their pixels with optical density >= ``beta`` in every
channel, i.e. mostly glass) are returned unchanged: Macenko's stain vectors are
undefined there and Reinhard would tint the glass. :func:`stain_jitter` is the
augmentation of Tellez et al. 2018: per-image ``alpha * s + beta`` on the haematoxylin,
eosin and DAB densities of the colour deconvolution (Ruifrok & Johnston, as in
``skimage.color.rgb2hed``), computed in torch on batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

from . import fingerprint, io
from .batch import BatchResult, run_batch

Method = Literal["macenko", "reinhard"]
METHODS = ("macenko", "reinhard")
IO = 240  # transmitted light intensity (torchstain's default)
BETA = 0.15  # optical density below which a pixel counts as glass
MIN_TISSUE = 0.05  # tiles with a smaller tissue fraction pass unchanged
MIN_TISSUE_PIXELS = 64


def optical_density(rgb: np.ndarray, io_: float = IO) -> np.ndarray:
    """Beer-Lambert optical density ``-log((I + 1) / Io)`` per channel (float)."""
    return -np.log((rgb.astype(np.float64) + 1.0) / io_)


def tissue_mask(rgb: np.ndarray, beta: float = BETA) -> np.ndarray:
    """``(H, W)`` bool: pixels dense enough in every channel to be stained tissue."""
    return (optical_density(rgb) >= beta).all(axis=-1)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    return rgb


def _enough_tissue(rgb: np.ndarray, min_tissue: float) -> bool:
    mask = tissue_mask(rgb)
    return bool(mask.mean() >= min_tissue and mask.sum() >= MIN_TISSUE_PIXELS)


@dataclass
class Normalizer:
    """A fitted stain normaliser; :meth:`transform` maps an RGB uint8 image to the reference."""

    method: Method
    engine: Any
    min_tissue: float = MIN_TISSUE

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """The normalised image (uint8); near-blank tiles come back unchanged."""
        rgb = _check_rgb(rgb)
        if not _enough_tissue(rgb, self.min_tissue):
            return rgb
        if self.method == "reinhard":
            return self.engine.normalize(rgb)
        try:
            out, _, _ = self.engine.normalize(rgb, Io=IO, beta=BETA, stains=False)
        except (np.linalg.LinAlgError, ValueError):  # degenerate stain plane (one stain only)
            return rgb
        return out


    def state(self) -> dict[str, Any]:
        """The fitted parameters as plain data (:func:`normalizer_from_state` rebuilds the normaliser)."""
        fitted = ("HERef", "maxCRef") if self.method == "macenko" else ("target_means", "target_stds")
        return {"method": self.method, "min_tissue": self.min_tissue,
                "params": {k: np.asarray(getattr(self.engine, k), np.float64).tolist() for k in fitted}}


def _engine(method: Method) -> Any:
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    if method not in METHODS:
        raise ValueError(f"unknown stain normalisation {method!r}; choose from {', '.join(METHODS)}")
    return NumpyMacenkoNormalizer() if method == "macenko" else NumpyReinhardNormalizer()


def normalizer_from_state(state: dict[str, Any]) -> Normalizer:
    """The normaliser whose :meth:`Normalizer.state` is ``state`` (e.g. from a checkpoint)."""
    engine = _engine(state["method"])
    for key, value in state["params"].items():
        setattr(engine, key, np.asarray(value, np.float64))
    return Normalizer(state["method"], engine, float(state["min_tissue"]))


def fit_normalizer(method: Method, reference_rgb: np.ndarray, *, min_tissue: float = MIN_TISSUE) -> Normalizer:
    """Fit ``method`` (``macenko`` or ``reinhard``) on a reference H&E image."""
    engine = _engine(method)
    reference_rgb = _check_rgb(reference_rgb)
    if not _enough_tissue(reference_rgb, min_tissue):
        raise ValueError("the reference image holds too little tissue to fit a stain normaliser")
    if method == "macenko":
        engine.fit(reference_rgb, Io=IO, beta=BETA)
    else:
        engine.fit(reference_rgb)
    return Normalizer(method, engine, min_tissue)


def stain_jitter(rgb: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """H&E colour augmentation (Tellez et al. 2018) on float RGB in [0, 1].

    ``rgb`` is ``(3, H, W)`` or ``(N, 3, H, W)``; each image draws ``alpha ~ U(1-sigma,
    1+sigma)`` and ``beta ~ U(-sigma, sigma)`` per stain (H, E, DAB) and its stain
    densities ``s`` (optical density ``-ln(rgb)`` unmixed by the Ruifrok-Johnston
    matrix, so ``beta`` is in OD units) become ``alpha * s + beta``. ``sigma=0`` is the
    identity; ``sigma=0.05`` is a mild, realistic lab-to-lab variation.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    single = rgb.ndim == 3
    x = rgb[None] if single else rgb
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (3, H, W) or (N, 3, H, W), got {tuple(rgb.shape)}")
    n = x.shape[0]
    to_hed = torch.as_tensor(hed_from_rgb, dtype=x.dtype, device=x.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=x.dtype, device=x.device)
    draws = torch.rand((2, n, 3), generator=generator, dtype=x.dtype).to(x.device) * 2 - 1  # U(-1, 1)
    alpha, beta = 1 + sigma * draws[0], sigma * draws[1]
    od = -torch.log(x.clamp_min(1e-6)).movedim(1, -1)  # (N, H, W, 3)
    stains = (od @ to_hed) * alpha[:, None, None, :] + beta[:, None, None, :]
    out = torch.exp(-(stains @ to_rgb)).clamp(0, 1).movedim(-1, 1)
    return out[0] if single else out


def normalize_file(path: Path, *, normalizer: Normalizer, out: Path, stamp: str,
                   overwrite: bool = False) -> dict[str, Any]:
    """Normalise one image file to ``out/<stem>.png``; ``stamp`` is the fingerprint of the
    reference and method. An output of the same image and ``stamp`` is kept, another one is
    replaced only with ``overwrite`` (:mod:`tissueseg.fingerprint`)."""
    target = out / f"{path.stem}.png"
    key = fingerprint.key(fingerprint.file_stamp(path), stamp)
    if fingerprint.reuse(target, key, overwrite):
        return {"image": str(path), "output": str(target), "status": "kept"}
    rgb = io.read_image(path)
    result = normalizer.transform(rgb)
    io.write_png(target, result, text={fingerprint.PNG_KEY: key})
    return {"image": str(path), "output": str(target),
            "status": "normalised" if result is not rgb else "unchanged (too little tissue)"}


def normalize_files(
    images: Sequence[str | Path], reference: str | Path, out: str | Path, *, method: Method = "macenko",
    workers: int = 1, overwrite: bool = False, quiet: bool = True,
) -> BatchResult[dict[str, Any]]:
    """Normalise image files (or folders of them) to ``reference``; PNGs in ``out``.

    Two images with one stem are refused; outputs follow :func:`normalize_file`.
    """
    paths = io.list_images(images)
    fingerprint.unique_stems(paths, "images")
    try:
        normalizer = fit_normalizer(method, io.read_image(reference))
    except ValueError as exc:
        raise io.InputError(reference, str(exc)) from None
    out = io.check_output_dir(out)
    stamp = fingerprint.key(fingerprint.file_stamp(reference), method, normalizer.min_tissue)
    fn = partial(normalize_file, normalizer=normalizer, out=out, stamp=stamp, overwrite=overwrite)
    return run_batch(fn, paths, workers=workers, desc="normalize", quiet=quiet)
