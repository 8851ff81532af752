"""Published weak-label layouts, read as distributed.

- ``bcss-wsss`` (BCSS-WSSS, Han et al. 2022): training patches
  ``<BCSS ROI name>+<index>[abcd].png`` where a b c d are 0/1 flags for tumour, stroma,
  lymphocytic infiltrate, necrosis; val/test folders ``img/`` + ``mask/`` with palette
  masks (index 0..3 the classes, 4 white background -> ignored). Slide id: the part of
  the name before ``_xmin``.
- ``luad-histoseg`` (LUAD-HistoSeg, same authors): ``patient-x-y-[a b c d].png``
  (space-separated flags in the order TE, NEC, LYM, TAS); val/test ``img/`` + ``mask/``
  with masks 0..3 the classes, 4 background. Slide id: the patient.

:func:`read_weak_folder` gives a table in the tile-manifest style (``image_path``,
``image_id``, ``slide_id``, ``label_<class>`` uint8) so a training Dataset can use it
like a manifest; for an ``img/`` + ``mask/`` folder the labels are the classes present in
each mask and a ``mask_path`` column is added.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from . import io
from .schemes import IGNORE, ClassDef, ClassScheme, bcss_wsss4

Layout = Literal["bcss-wsss", "luad-histoseg"]
MASK_BACKGROUND = 4
"""Mask index of white background / exclude in both layouts (ignored)."""


def luad_histoseg4() -> ClassScheme:
    """LUAD-HistoSeg classes; codes are the mask indices 0..3, background (4) ignored."""
    classes = (
        ClassDef("tumor_epithelium", (205, 51, 51), (0,)),
        ClassDef("necrosis", (0, 255, 0), (1,)),
        ClassDef("lymphocyte", (65, 105, 225), (2,)),
        ClassDef("tumor_associated_stroma", (255, 165, 0), (3,)),
    )
    return ClassScheme("luad-histoseg4", classes, ignore_codes=(MASK_BACKGROUND,), ignore_name="background",
                       ignore_color=(255, 255, 255))


WEAK_SCHEMES: dict[str, ClassScheme] = {"bcss-wsss": bcss_wsss4(), "luad-histoseg": luad_histoseg4()}
"""The class scheme of each layout (class order = flag order = mask index order)."""

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
    _check_layout(layout)
    mask = io.read_mask(path)
    if mask.size and mask.max() > MASK_BACKGROUND:
        bad = np.unique(mask[mask > MASK_BACKGROUND])
        raise io.InputError(path, f"mask values {bad.tolist()[:5]} outside 0..{MASK_BACKGROUND}")
    out = mask.copy()
    out[mask == MASK_BACKGROUND] = IGNORE
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES)


def read_weak_folder(path: str | Path, layout: Layout) -> pd.DataFrame:
    """A manifest-style table of one folder of a weak-label dataset (see module docstring).

    ``path`` is a folder of labelled patches (training split) or a folder holding
    ``img/`` and ``mask/`` (val/test split; labels from the mask contents).
    """
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
