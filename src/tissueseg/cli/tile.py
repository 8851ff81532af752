"""``tissueseg tile``: cut regions and masks into patches; write the manifest."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from . import common
from .common import F


def _option(flag: str, field: str, **kwargs: object) -> Callable[[F], F]:
    """An option whose default and help are :class:`~tissueseg.manifest.TileParams`' (one place for both)."""
    from ..manifest import TileParams

    info = TileParams.model_fields[field]
    return click.option(flag, field, default=info.default, show_default=True, help=info.description, **kwargs)


@click.command("tile")
@click.argument("datasets", nargs=-1, metavar="[DATASET_DIR]...", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder of H&E regions (instead of DATASET_DIR; needs --masks).")
@click.option("--masks", type=click.Path(path_type=Path), default=None, help="Folder of label masks (raw codes).")
@click.option("--image-suffix", default="", help="Stem suffix to drop from image names before pairing.")
@click.option("--mask-suffix", default="", help="Stem suffix to drop from mask names before pairing (e.g. _mask).")
@common.out_option()
@_option("--size", "size", type=click.IntRange(min=1))
@_option("--stride", "stride", type=click.IntRange(min=1))
@_option("--edge", "edge", type=click.Choice(["shift", "drop", "pad"]))
@_option("--min-roi", "min_roi", type=click.FloatRange(0, 1))
@_option("--label-threshold", "label_threshold", type=click.FloatRange(0, 1))
@_option("--split", "split", type=click.Choice(["slide", "bcss-sites", "none"]))
@_option("--val-fraction", "val_fraction", type=click.FloatRange(0, 1, max_open=True))
@_option("--test-fraction", "test_fraction", type=click.FloatRange(0, 1, max_open=True))
@_option("--mpp", "mpp", type=click.FloatRange(min=0, min_open=True))
@_option("--patches", "patches", is_flag=True)
@click.option("--layout", type=click.Choice(["bcss-wsss", "luad-histoseg"]), default=None,
              help="DATASET_DIR is a published patch-label dataset as downloaded (training/ with labels in the "
                   "file names, val/ and test/ with img/ + mask/): read it into a manifest, one row per patch.")
@common.scheme_option()
@_option("--seed", "seed", type=int)
@common.batch_options
def command(datasets: tuple[Path, ...], images: Path | None, masks: Path | None, image_suffix: str,
            mask_suffix: str, out: Path, size: int, stride: int, edge: str, min_roi: float, label_threshold: float,
            split: str, val_fraction: float, test_fraction: float, mpp: float | None, patches: bool,
            layout: str | None, scheme: str, seed: int, workers: int, scheduler: str | None, as_json: bool,
            overwrite: bool, quiet: bool) -> None:
    """Tile regions and masks paired by file stem into OUT/manifest.{parquet,csv,json}.

    Each DATASET_DIR is a BCSS-style folder with rgbs_colorNormalized/ (or images/) and masks/;
    or give --images and --masks. A rerun resumes: finished images are skipped. With --layout,
    DATASET_DIR is a published patch-label dataset (BCSS-WSSS, LUAD-HistoSeg) as downloaded:
    its patches become the manifest's rows (splits from its folders, the layout's classes).

    \b
    Examples:
      tissueseg tile data/bcss --out tiles/ --size 512 --stride 256 --split bcss-sites -j 2
      tissueseg tile BCSS-WSSS/ --layout bcss-wsss --out tiles-wsss/
    """
    from ..manifest import find_dataset, pair_files, tile_dataset
    from ..schemes import load_scheme

    if layout is not None:
        _read_layout(datasets, layout, out, mpp, overwrite, as_json)
        return

    folders = [find_dataset(d) for d in datasets]
    if images is not None or masks is not None:
        if images is None or masks is None:
            raise ValueError("--images and --masks go together")
        folders.append((images, masks))
    if not folders:
        raise ValueError("give a DATASET_DIR or --images and --masks")
    pairs, unmatched = [], []
    for image_dir, mask_dir in folders:
        found, lone_images, lone_masks = pair_files(image_dir, mask_dir, image_suffix, mask_suffix)
        pairs += found
        unmatched += [(str(f), "image without mask") for f in lone_images]
        unmatched += [(str(f), "mask without image") for f in lone_masks]
    result = tile_dataset(pairs, out, load_scheme(scheme), size=size, stride=stride, edge=edge, min_roi=min_roi,
                          label_threshold=label_threshold, split=split, val_fraction=val_fraction,
                          test_fraction=test_fraction, seed=seed, patches=patches, mpp=mpp, workers=workers,
                          scheduler=scheduler, overwrite=overwrite, quiet=quiet)
    summary = result.to_dict() | {"unmatched": [{"file": f, "problem": p} for f, p in unmatched]}
    lines = [f"{result.images} images tiled ({result.resumed} from an earlier run), {result.patches} patches"
             + "".join(f", {n} {s}" for s, n in result.splits.items())]
    lines += [f"  skipped {reason}" for _, reason in result.skipped]
    lines += [f"  unmatched {f}: {p}" for f, p in unmatched]
    lines.append(f"manifest: {result.manifest}" if result.manifest else "no manifest written: no image was tiled")
    if result.manifest is None:
        common.emit(summary, as_json, "\n".join(lines))
        sys.exit(common.EXIT_ERROR)
    common.emit(summary, as_json, "\n".join(lines), skipped=len(result.skipped) + len(unmatched))


def _read_layout(datasets: tuple[Path, ...], layout: str, out: Path, mpp: float | None, overwrite: bool,
                 as_json: bool) -> None:
    from ..manifest import load_manifest
    from ..weaklabels import write_weak_manifest

    if len(datasets) != 1:
        raise ValueError(f"--layout {layout} reads one dataset folder (training/, val/, test/)")
    path = write_weak_manifest(datasets[0], layout, out, mpp=mpp, overwrite=overwrite)
    _, meta = load_manifest(path)
    counts = meta["counts"]
    common.emit({"out": str(out), "manifest": str(path), **counts}, as_json,
                f"{counts['patches']} {layout} patches" + "".join(f", {n} {s}" for s, n in counts["splits"].items())
                + f"\nmanifest: {path}")
