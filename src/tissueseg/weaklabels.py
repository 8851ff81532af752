"""Published patch-label datasets, read as distributed, into a manifest.

- ``bcss-wsss`` (BCSS-WSSS, Han et al. 2022): ``training/`` patches
  ``<BCSS ROI name>+<index>[abcd].png`` where a b c d are 0/1 flags for tumour, stroma,
  lymphocytic infiltrate, necrosis; ``val/`` and ``test/`` with ``img/`` + ``mask/``, palette
  masks (index 0..3 the classes, 4 white background -> ignored). Slide id: the part of
  the name before ``_xmin``; 0.25 µm/px (in the names).
- ``luad-histoseg`` (LUAD-HistoSeg, same authors): ``patient-x-y-[a b c d].png``
  (space-separated flags in the order TE, NEC, LYM, TAS); val/test ``img/`` + ``mask/``
  with masks 0..3 the classes, 4 background. Slide id: the patient. Its names carry no
  resolution: give it.

:func:`read_weak_folder` reads one folder; :func:`read_weak_dataset` the whole dataset
into the rows of a ``tile`` manifest (one patch per file: ``x = y = 0``, ``size`` its
side; ``split`` train / val / test from the folders; ``label_<class>`` from the names,
or from the masks in val/test, which also give ``mask_path`` and ``frac_<class>``), and
:func:`write_weak_manifest` writes it where ``tissueseg train`` reads it
(``tissueseg tile --layout bcss-wsss BCSS-WSSS/ --out tiles-wsss``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from . import io
from .schemes import MASK_BACKGROUND, ClassScheme, bcss_wsss_masks, luad_histoseg4
from .splits import parse_bcss_name

Layout = Literal["bcss-wsss", "luad-histoseg"]
LAYOUTS: tuple[str, ...] = ("bcss-wsss", "luad-histoseg")
SPLIT_FOLDERS = {"train": "training", "val": "val", "test": "test"}
"""Split -> folder of a published dataset (val/test hold ``img/`` and ``mask/``)."""


WEAK_SCHEMES: dict[str, ClassScheme] = {"bcss-wsss": bcss_wsss_masks(), "luad-histoseg": luad_histoseg4()}
"""The class scheme of each layout on its mask indices (class order = flag order = mask index)."""

_LUAD_NAME = re.compile(r"^(?P<patient>.+)-(?P<x>\d+)-(?P<y>\d+)-\[(?P<flags>[01](?: [01]){3})\]$")


def _check_layout(layout: str) -> ClassScheme:
    if layout not in WEAK_SCHEMES:
        raise ValueError(f"unknown weak-label layout {layout!r}; choose from {', '.join(WEAK_SCHEMES)}")
    return WEAK_SCHEMES[layout]


def parse_name(path: str | Path, layout: Layout) -> tuple[str, np.ndarray | None]:
    """``(slide_id, flags)`` from a patch file name; flags is None for unlabelled names
    (val/test images). Raises :class:`~tissueseg.io.InputError` for a malformed name."""
    _check_layout(layout)
    stem = Path(path).stem
    if layout == "bcss-wsss":
        if "_xmin" not in stem:
            raise io.InputError(path, "not a BCSS-WSSS patch name (<ROI name>+<index>[abcd].png)")
        slide = stem.split("_xmin")[0]
        if "[" not in stem:
            return slide, None
        flags = stem.split("]")[0].split("[")[-1]
        if not re.fullmatch(r"[01]{4}", flags):
            raise io.InputError(path, f"label flags {flags!r} are not four 0/1 digits")
        return slide, np.array([int(c) for c in flags], dtype=np.uint8)
    match = _LUAD_NAME.match(stem)
    if match:
        return match["patient"], np.array(match["flags"].split(), dtype=np.uint8)
    if "[" in stem:
        raise io.InputError(path, "not a LUAD-HistoSeg patch name (patient-x-y-[a b c d].png)")
    return stem.split("-")[0], None


def read_weak_mask(path: str | Path, layout: Layout) -> np.ndarray:
    """A val/test mask as class indices uint8: 0..3 kept, background 4 -> 255 (ignore)."""
    scheme = _check_layout(layout)
    try:
        return scheme.apply(io.read_mask(path))
    except ValueError as exc:
        raise io.InputError(path, f"mask {exc} (expected 0..{MASK_BACKGROUND})") from None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES)


def read_weak_folder(path: str | Path, layout: Layout) -> pd.DataFrame:
    """One folder of a weak-label dataset: ``image_path``, ``image_id``, ``slide_id``,
    ``label_<class>`` (uint8), and for an ``img/`` + ``mask/`` folder (val/test) ``mask_path``
    with the labels taken from the mask contents."""
    scheme = _check_layout(layout)
    folder = Path(path)
    if not folder.is_dir():
        raise io.InputError(folder, "no such folder")
    names = scheme.names
    paired = (folder / "img").is_dir() and (folder / "mask").is_dir()
    rows = []
    for image in _images(folder / "img" if paired else folder):
        slide, flags = parse_name(image, layout)
        row: dict[str, object] = {"image_path": str(image), "image_id": image.stem, "slide_id": slide}
        if paired:
            mask_path = folder / "mask" / image.name
            if not mask_path.is_file():
                raise io.InputError(image, f"no mask {mask_path}")
            present = np.bincount(read_weak_mask(mask_path, layout).ravel(), minlength=256)[: len(names)] > 0
            flags = present.astype(np.uint8)
            row["mask_path"] = str(mask_path)
        elif flags is None:
            raise io.InputError(image, "file name carries no image labels and there is no mask/ folder")
        row.update({f"label_{n}": flags[i] for i, n in enumerate(names)})
        rows.append(row)
    if not rows:
        raise io.InputError(folder, "folder holds no image files")
    table = pd.DataFrame(rows)
    for n in names:
        table[f"label_{n}"] = table[f"label_{n}"].astype(np.uint8)
    return table


def _patch_geometry(table: pd.DataFrame, layout: Layout, mpp: float | None) -> pd.DataFrame:
    """``width``, ``height``, ``x``, ``y``, ``size`` (the side: patches are square), ``mpp``,
    ``patient_id``, ``site`` of every patch (headers only)."""
    from .slide import image_mpp

    sizes = [io.image_size(p) for p in table["image_path"]]
    for path, (w, h) in zip(table["image_path"], sizes):
        if w != h:
            raise io.InputError(path, f"patch is {w}x{h}, not square")
    out = table.copy()
    out["width"] = out["height"] = out["size"] = np.array([w for w, _ in sizes], np.int32)
    out["x"] = out["y"] = np.zeros(len(out), np.int32)
    if mpp is None:
        found = [image_mpp(p) for p in out["image_path"]]
        missing = [p for p, m in zip(out["image_path"], found) if m is None]
        if missing:
            raise io.InputError(missing[0], f"its µm/px is in neither its name nor its metadata ({len(missing)} "
                                            f"such {layout} patches): give it (--mpp)")
        out["mpp"] = np.array(found, np.float64)
    else:
        out["mpp"] = float(mpp)
    info = [parse_bcss_name(str(s)) for s in out["slide_id"]]
    out["patient_id"] = [i["patient_id"] or s for i, s in zip(info, out["slide_id"])]
    out["site"] = [i["site"] for i in info]
    return out


def _mask_fractions(table: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """``roi_fraction`` and ``frac_<class>`` of the patches with a mask (NaN for the others)."""
    scheme = WEAK_SCHEMES[layout]
    k = scheme.num_classes
    fractions = np.full((len(table), k + 1), np.nan, np.float32)
    for i, path in enumerate(table.get("mask_path", pd.Series([None] * len(table)))):
        if isinstance(path, str):
            mask = read_weak_mask(path, layout)
            counts = np.bincount(mask.ravel(), minlength=256).astype(np.float64)
            fractions[i, :k] = counts[:k] / mask.size
            fractions[i, k] = counts[:k].sum() / mask.size
    out = table.copy()
    out["roi_fraction"] = fractions[:, k]
    for j, name in enumerate(scheme.names):
        out[f"frac_{name}"] = fractions[:, j]
    return out


def read_weak_dataset(root: str | Path, layout: Layout, mpp: float | None = None) -> pd.DataFrame:
    """Every patch of a published weak-label dataset as manifest rows (see the module docstring).

    ``root`` holds ``training/`` and optionally ``val/`` and ``test/``. ``mpp`` (µm/px) is
    required when the names and files do not say it (LUAD-HistoSeg).
    """
    root = Path(root)
    scheme = _check_layout(layout)
    if not (root / SPLIT_FOLDERS["train"]).is_dir():
        raise io.InputError(root, f"expected the {layout} folders training/ (and val/, test/)")
    parts = []
    for split, folder in SPLIT_FOLDERS.items():
        if (root / folder).is_dir():
            part = read_weak_folder(root / folder, layout)
            part["split"] = split
            parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table = _mask_fractions(_patch_geometry(table, layout, mpp), layout)
    table["n_labels"] = table[[f"label_{n}" for n in scheme.names]].sum(axis=1).astype(np.int16)
    order = ["image_id", "slide_id", "patient_id", "site", "image_path", "mask_path", "mpp", "width", "height",
             "x", "y", "size", "roi_fraction"]
    order = [c for c in order if c in table.columns]
    return table[order + [c for c in table.columns if c not in order]]


def write_weak_manifest(root: str | Path, layout: Layout, out: str | Path, mpp: float | None = None,
                        overwrite: bool = False) -> Path:
    """Write :func:`read_weak_dataset`'s rows as ``out/manifest.{parquet,csv,json}`` (the scheme
    is the layout's, on its mask indices; reading is headers and val/test masks only, so it is
    redone on every call). A manifest made from another folder or with other parameters is
    refused without ``overwrite``. Returns the manifest path."""
    from .manifest import write_manifest

    out = io.check_output_dir(out)
    scheme = _check_layout(layout)
    params = {"layout": layout, "root": str(Path(root).resolve()), "mpp": mpp, "scheme": scheme.to_dict(),
              "size": None, "stride": None}
    meta = out / "manifest.json"
    if meta.is_file() and not overwrite:
        previous = json.loads(meta.read_text())["params"]
        if previous != json.loads(json.dumps(params)):
            raise ValueError(f"{meta}: made from another folder or with other parameters; use --overwrite "
                             "or another --out")
    table = read_weak_dataset(root, layout, mpp)
    sizes = table["size"].unique()
    params["size"] = params["stride"] = int(sizes[0]) if len(sizes) == 1 else None
    return write_manifest(table, out, params)
