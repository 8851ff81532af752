"""Region/mask pairs to a patch manifest (one row per patch), resumable and parallel.

:func:`pair_files` matches images with masks by file stem; :func:`tile_image` cuts one pair
into the rows of its patches (and optionally writes patch PNGs); :func:`tile_dataset`
runs it over a dataset with :func:`~tissueseg.batch.run_batch`, one part file per image
(so a rerun skips finished images), and combines the parts into ``manifest.parquet``,
``manifest.csv`` and ``manifest.json`` with train/val/test splits.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import io
from .batch import run_batch, thread_budget
from .schemes import IGNORE, ClassScheme
from .slide import image_mpp
from .splits import SplitMethod, assign_splits, check_split, parse_bcss_name
from .tiling import Edge, check_grid, grid, image_labels, patch_fractions

IMAGE_DIRS = ("rgbs_colorNormalized", "images")
PATCH_DIRS = ("images", "masks", "palette")
MANIFEST_FILES = ("manifest.parquet", "manifest.csv", "manifest.json")
IMAGE_FILL = 255  # image pixels of a patch past the region border (white, like glass)


def _keyed(files: list[Path], suffix: str, folder: Path) -> dict[str, Path]:
    keyed: dict[str, Path] = {}
    for f in files:
        key = f.stem[: -len(suffix)] if suffix and f.stem.endswith(suffix) else f.stem
        if key in keyed:
            raise io.InputError(folder, f"two files with the stem {key!r} ({keyed[key].name}, {f.name})")
        keyed[key] = f
    return keyed


def pair_files(
    images_dir: str | Path, masks_dir: str | Path, image_suffix: str = "", mask_suffix: str = ""
) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """``(pairs, unmatched images, unmatched masks)``: images and masks matched by file stem.

    The optional suffixes are removed from the stems first (masks named ``<stem>_mask.png``
    pair with ``mask_suffix="_mask"``). Never pairs by order; pairs are sorted by stem.
    """
    images = _keyed(io.list_images([images_dir]), image_suffix, Path(images_dir))
    masks = _keyed(io.list_images([masks_dir]), mask_suffix, Path(masks_dir))
    pairs = [(images[k], masks[k]) for k in sorted(images.keys() & masks.keys())]
    return pairs, sorted(images[k] for k in images.keys() - masks.keys()), sorted(
        masks[k] for k in masks.keys() - images.keys()
    )


def find_dataset(root: str | Path) -> tuple[Path, Path]:
    """``(images_dir, masks_dir)`` of a BCSS-style folder: ``rgbs_colorNormalized/`` (or
    ``images/``) and ``masks/``."""
    root = Path(root)
    if not root.is_dir():
        raise io.InputError(root, "no such folder")
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images is None or not (root / "masks").is_dir():
        raise io.InputError(root, f"expected the folders {' or '.join(IMAGE_DIRS)} and masks")
    return images, root / "masks"


def _crop(arr: np.ndarray, x: int, y: int, size: int, fill: int) -> np.ndarray:
    """``arr[y:y+size, x:x+size]``, filled with ``fill`` past the border."""
    part = arr[y : y + size, x : x + size]
    if part.shape[:2] == (size, size):
        return part
    out = np.full((size, size) + arr.shape[2:], fill, dtype=arr.dtype)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def _write_patches(image: np.ndarray, labels: np.ndarray, corners: np.ndarray, size: int, stem: str,
                   scheme: ClassScheme, patches_out: Path) -> None:
    """Each patch's image, mask and palette PNGs, encoded by a pool of threads (the PNG
    encoders release the GIL) as large as this process's share of the cores."""
    palette = scheme.palette()
    for d in PATCH_DIRS:
        (patches_out / d).mkdir(parents=True, exist_ok=True)

    def write(corner: list[int]) -> None:
        x, y = corner
        name = f"{stem}_x{x}_y{y}.png"
        crop = _crop(labels, x, y, size, IGNORE)
        io.write_png(patches_out / "images" / name, _crop(image, x, y, size, IMAGE_FILL))
        io.write_png(patches_out / "masks" / name, crop)
        io.write_png(patches_out / "palette" / name, crop, palette=palette)

    with ThreadPoolExecutor(thread_budget()) as pool:
        for _ in pool.map(write, corners.tolist()):
            pass


def tile_image(
    image_path: str | Path,
    mask_path: str | Path,
    scheme: ClassScheme,
    size: int = 256,
    stride: int = 128,
    edge: Edge = "shift",
    min_roi: float = 0.5,
    label_threshold: float = 0.05,
    patches_out: Path | None = None,
    mpp: float | None = None,
) -> pd.DataFrame:
    """The manifest rows of one region: a patch per grid window with ``roi_fraction >= min_roi``.

    ``mpp`` is the region's µm/px; by default it is read from the image's name or metadata
    (:func:`~tissueseg.slide.image_mpp`), and an image that says nothing is refused rather
    than guessed. Columns: ``image_id`` (image stem), ``slide_id``, ``patient_id``, ``site``,
    ``image_path``, ``mask_path`` (absolute), ``mpp``, ``width``, ``height``, ``x``, ``y``, ``size``,
    ``roi_fraction``, ``frac_<class>`` (float32), ``label_<class>`` (uint8, see
    :func:`~tissueseg.tiling.image_labels`), ``n_labels``. With ``patches_out``, also writes
    ``<image id>_x<X>_y<Y>.png`` under ``images/`` (RGB, white past the border), ``masks/``
    (class indices after the scheme, 255 ignore) and ``palette/`` (the same in colour).
    Raises :class:`~tissueseg.io.InputError` for unreadable files, codes outside the
    scheme, an image and mask of different sizes, or a region that gives no patch (smaller
    than one patch, or no patch with ``min_roi`` labelled pixels).
    """
    image_path, mask_path = Path(image_path).resolve(), Path(mask_path).resolve()
    mpp = mpp or image_mpp(image_path)
    if mpp is None:
        raise io.InputError(image_path, "its µm/px is in neither its name (_MPP-0.2500) nor its metadata: "
                                        "give it (tile --mpp)")
    mask = io.read_mask(mask_path)
    try:
        labels = scheme.apply(mask)
    except ValueError as exc:
        raise io.InputError(mask_path, str(exc)) from None
    image = io.read_image(image_path)  # decoded in full: a corrupt image is caught here, not in training
    if image.shape[:2] != labels.shape:
        raise io.InputError(image_path, f"image is {image.shape[1]}x{image.shape[0]} but its mask "
                                        f"{mask_path.name} is {labels.shape[1]}x{labels.shape[0]}")
    corners = grid(labels.shape, size, stride, edge)
    fractions = patch_fractions(labels, corners, size, scheme.num_classes)
    roi = 1.0 - fractions[:, -1]
    keep = roi >= min_roi
    if not keep.any():
        raise io.InputError(image_path, _why_no_patch(labels.shape, len(corners), size, edge, min_roi))
    corners, fractions, roi = corners[keep], fractions[keep], roi[keep]
    present = image_labels(fractions, label_threshold).astype(np.uint8)
    stem = image_path.stem
    info = parse_bcss_name(stem)
    n = len(corners)
    columns: dict[str, object] = {
        "image_id": stem, "slide_id": info["slide_id"], "patient_id": info["patient_id"], "site": info["site"],
        "image_path": str(image_path), "mask_path": str(mask_path), "mpp": np.full(n, mpp, np.float64),
        "width": np.full(n, labels.shape[1], np.int32), "height": np.full(n, labels.shape[0], np.int32),
        "x": corners[:, 0].astype(np.int32), "y": corners[:, 1].astype(np.int32),
        "size": np.full(n, size, np.int32), "roi_fraction": roi.astype(np.float32),
    }
    columns |= {f"frac_{name}": fractions[:, i] for i, name in enumerate(scheme.names)}
    columns |= {f"label_{name}": present[:, i] for i, name in enumerate(scheme.names)}
    columns["n_labels"] = present.sum(axis=1, dtype=np.int16)
    if patches_out is not None:
        _write_patches(image, labels, corners, size, stem, scheme, patches_out)
    return pd.DataFrame(columns, index=pd.RangeIndex(n))


def _why_no_patch(shape: tuple[int, int], windows: int, size: int, edge: Edge, min_roi: float) -> str:
    height, width = shape
    if height < size or width < size:
        why = (f"region is {width}x{height} px, smaller than one {size} px patch: "
               + ("edge drop keeps no partial patch" if edge == "drop"
                  else f"the padded patch has under {min_roi:g} of its pixels labelled (min_roi)"))
    else:
        why = f"none of its {windows} patches has {min_roi:g} of its pixels labelled (min_roi)"
    return why + "; no patch"


@dataclass
class TileResult:
    """What :func:`tile_dataset` did."""

    out: Path
    manifest: Path | None
    images: int = 0
    resumed: int = 0
    patches: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "manifest": str(self.manifest) if self.manifest else None,
            "images": self.images, "resumed": self.resumed, "patches": self.patches, "splits": self.splits,
            "skipped": [{"item": item, "reason": reason} for item, reason in self.skipped],
        }


def _tile_part(pair: tuple[Path, Path], parts: Path, patches_out: Path | None, **kwargs: object) -> int:
    """Tile one pair into ``parts/<image id>.parquet`` (atomically); the number of patches."""
    df = tile_image(pair[0], pair[1], patches_out=patches_out, **kwargs)
    with io.atomic_path(parts / f"{Path(pair[0]).stem}.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return len(df)


def _previous_params(out: Path) -> tuple[Path, dict] | None:
    for path in (out / "manifest.json", out / "parts" / "params.json"):
        if path.is_file():
            return path, json.loads(path.read_text())["params"]
    return None


class TileParams(BaseModel):
    """How a dataset is tiled: the defaults of ``tissueseg tile``, :func:`tile_dataset` and the
    pipeline's ``tile:`` section alike (one place)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(256, gt=0, description="Patch side in pixels.")
    stride: int = Field(128, gt=0, description="Step between patches in pixels.")
    edge: Edge = Field("shift", description="Border: shift the last patch inside, drop partial patches, or pad "
                                            "past the border.")
    min_roi: float = Field(0.5, ge=0, le=1, description="Keep a patch when at least this fraction of it is not "
                                                        "ignored.")
    label_threshold: float = Field(0.05, ge=0, le=1, description="Image label: a class covers at least this "
                                                                  "fraction of the patch's ROI pixels.")
    split: SplitMethod = Field("slide", description="Train/val/test by slide, BCSS test sites (OL LL E2 EW GM "
                                                    "S3), or all train.")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of slide groups for validation.")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of slide groups for test (split slide; "
                                                              "bcss-sites takes the test sites).")
    seed: int = Field(0, description="Seed of the split.")
    mpp: float | None = Field(None, gt=0, description="µm/px of the regions (default: from each image's name, "
                                                      "e.g. _MPP-0.2500, or its metadata; an image that says "
                                                      "nothing is skipped).")
    patches: bool = Field(False, description="Also write patch PNGs to OUT/patches/{images,masks,palette}.")

    @model_validator(mode="after")
    def _room_for_train(self) -> TileParams:
        check_split(self.split, self.val_fraction, self.test_fraction)
        return self


def check_train_split(image_ids: Sequence[str], params: TileParams) -> None:
    """``ValueError`` when the split would leave no image for training (checked before any work)."""
    if not image_ids or params.split == "none":
        return
    regions = pd.DataFrame([parse_bcss_name(i) for i in image_ids])
    split = assign_splits(regions, params.split, params.val_fraction, params.test_fraction, seed=params.seed)
    if not (split == "train").any():
        groups = regions["patient_id"].fillna(regions["slide_id"]).nunique()
        raise ValueError(f"split {params.split} of {groups} slide group(s) with val_fraction "
                         f"{params.val_fraction} and test_fraction {params.test_fraction} leaves none for "
                         "training: lower the fractions, add slides, or use split none")


def tile_params(**fields: object) -> TileParams:
    """:class:`TileParams` from keyword fields; ``ValueError`` naming the first bad field."""
    try:
        return TileParams(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "tile"
        raise ValueError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def tile_dataset(
    pairs: Sequence[tuple[str | Path, str | Path]],
    out: str | Path,
    scheme: ClassScheme,
    params: TileParams | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    **fields: object,
) -> TileResult:
    """Tile every ``(image, mask)`` pair and write ``out/manifest.{parquet,csv,json}``.

    ``params`` (or its fields as keywords, e.g. ``size=512``) say how (:class:`TileParams`).
    Each finished image leaves ``out/parts/<image id>.parquet``; a rerun with the same
    parameters skips those images (resume), bad pairs are skipped with their reason. With
    ``patches``, patch PNGs go to ``out/patches/{images,masks,palette}``. The manifest gets
    a ``split`` column (:func:`~tissueseg.splits.assign_splits`); ``manifest.json`` holds the
    parameters and counts. ``mpp`` gives every region's µm/px (default: each image's name or
    metadata; images that say nothing are skipped with the reason). Different parameters
    than an earlier run in ``out`` raise ``ValueError`` unless ``overwrite`` (which starts over).
    """
    p = tile_params(**((params.model_dump() if params else {}) | fields))
    check_grid(p.size, p.stride, p.edge)
    pairs = [(Path(i), Path(m)) for i, m in pairs]
    ids = [i.stem for i, _ in pairs]
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise ValueError(f"several images share the stem(s) {', '.join(dupes)}: patch ids would collide")
    check_train_split(ids, p)
    out = io.check_output_dir(out)
    parts, patches_out = out / "parts", out / "patches"
    params = json.loads(json.dumps({"scheme": scheme.to_dict(), **p.model_dump()}))
    previous = _previous_params(out)
    if overwrite:
        for folder in (parts, patches_out):
            shutil.rmtree(folder, ignore_errors=True)
        for name in MANIFEST_FILES:
            (out / name).unlink(missing_ok=True)
    elif previous and previous[1] != params:
        changed = sorted(k for k in params.keys() | previous[1].keys() if params.get(k) != previous[1].get(k))
        raise ValueError(f"{previous[0]}: made with other parameters ({', '.join(changed)} differ); "
                         f"use --overwrite or another --out")
    parts.mkdir(exist_ok=True)
    io.write_json(parts / "params.json", {"params": params})
    todo = [p for p in pairs if not (parts / f"{p[0].stem}.parquet").is_file()]
    fn = functools.partial(
        _tile_part, parts=parts, patches_out=patches_out if p.patches else None, scheme=scheme, size=p.size,
        stride=p.stride, edge=p.edge, min_roi=p.min_roi, label_threshold=p.label_threshold, mpp=p.mpp,
    )
    batch = run_batch(fn, todo, workers=workers, scheduler=scheduler, desc="tile", quiet=quiet)
    done = [parts / f"{s}.parquet" for s in ids if (parts / f"{s}.parquet").is_file()]
    image_of = {str(p): str(p[0]) for p in todo}
    skipped = [(image_of[item], reason) for item, reason in batch.skipped]
    result = TileResult(out, None, images=len(done), resumed=len(pairs) - len(todo), skipped=skipped)
    if not done:
        return result
    manifest = pd.concat([pd.read_parquet(p) for p in done], ignore_index=True)
    manifest["split"] = assign_splits(manifest, p.split, p.val_fraction, p.test_fraction, seed=p.seed)
    result.patches = len(manifest)
    result.splits = {s: int(n) for s, n in manifest["split"].value_counts().sort_index().items()}
    result.manifest = write_manifest(manifest, out, params, skipped=len(result.skipped))
    return result


def write_manifest(table: pd.DataFrame, out: Path, params: dict, skipped: int = 0) -> Path:
    """``out/manifest.parquet`` (the rows), ``manifest.csv`` (the same) and ``manifest.json``
    (``params`` and counts), each written atomically; returns the Parquet path."""
    path = out / "manifest.parquet"
    with io.atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    with io.atomic_path(out / "manifest.csv") as tmp:
        table.to_csv(tmp, index=False)
    splits = {str(s): int(n) for s, n in table["split"].value_counts().sort_index().items()}
    counts = {"images": int(table["image_path"].nunique()), "patches": len(table), "splits": splits,
              "skipped": skipped}
    io.write_json(out / "manifest.json", {"params": params, "counts": counts})
    return path


def load_manifest(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """``(patch table, manifest.json)`` from a tiling output folder or its ``manifest.parquet``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    table, meta = folder / "manifest.parquet", folder / "manifest.json"
    for f in (table, meta):
        if not f.is_file():
            raise io.InputError(f, "no such file (run `tissueseg tile` first)")
    return pd.read_parquet(table), json.loads(meta.read_text())


def manifest_mpp(df: pd.DataFrame, source: str = "manifest") -> float:
    """The µm/px of a manifest's regions (its ``mpp`` column; one value).

    Tables without the column (made before it existed, or by
    :func:`~tissueseg.weaklabels.read_weak_folder` from names without ``_MPP-``) raise
    ``ValueError``: the resolution is never guessed.
    """
    if "mpp" not in df.columns:
        raise ValueError(f"{source}: records no µm/px (an older manifest?): tile again, with --mpp if the "
                         "images' names and metadata do not say it")
    values = np.unique(df["mpp"].to_numpy(np.float64))
    if len(values) != 1 or not values[0] > 0:
        raise ValueError(f"{source}: regions at several or no µm/px ({values.tolist()[:5]}); "
                         "train on regions of one resolution")
    return float(values[0])
