"""``tissueseg tile``: cut regions and masks into patches; write the manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import common


@click.command("tile")
@click.argument("datasets", nargs=-1, metavar="[DATASET_DIR]...", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder of H&E regions (instead of DATASET_DIR; needs --masks).")
@click.option("--masks", type=click.Path(path_type=Path), default=None, help="Folder of label masks (raw codes).")
@click.option("--image-suffix", default="", help="Stem suffix to drop from image names before pairing.")
@click.option("--mask-suffix", default="", help="Stem suffix to drop from mask names before pairing (e.g. _mask).")
@common.out_option()
@click.option("--size", type=click.IntRange(min=1), default=256, show_default=True, help="Patch side in pixels.")
@click.option("--stride", type=click.IntRange(min=1), default=128, show_default=True, help="Step between patches.")
@click.option("--edge", type=click.Choice(["shift", "drop", "pad"]), default="shift", show_default=True,
              help="Border: shift the last patch inside, drop partial patches, or pad past the border.")
@click.option("--min-roi", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Keep a patch when at least this fraction of it is not ignored.")
@click.option("--label-threshold", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Image label: class covers at least this fraction of the patch's ROI pixels.")
@click.option("--split", type=click.Choice(["slide", "bcss-sites", "none"]), default="slide", show_default=True,
              help="Train/val/test by slide, BCSS test sites (OL LL E2 EW GM S3), or all train.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Fraction of slides for validation.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction of slides for test (split slide; bcss-sites takes the test sites).")
@click.option("--patches", is_flag=True, help="Also write patch PNGs to OUT/patches/{images,masks,palette}.")
@common.scheme_option()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@common.batch_options
def command(datasets: tuple[Path, ...], images: Path | None, masks: Path | None, image_suffix: str,
            mask_suffix: str, out: Path, size: int, stride: int, edge: str, min_roi: float, label_threshold: float,
            split: str, val_fraction: float, test_fraction: float, patches: bool, scheme: str, seed: int,
            workers: int,
            scheduler: str | None, as_json: bool, overwrite: bool, quiet: bool) -> None:
    """Tile regions and masks paired by file stem into OUT/manifest.{parquet,csv,json}.

    Each DATASET_DIR is a BCSS-style folder with rgbs_colorNormalized/ (or images/) and masks/;
    or give --images and --masks. A rerun resumes: finished images are skipped.

    \b
    Example:
      tissueseg tile data/bcss --out tiles/ --size 512 --stride 256 --split bcss-sites -j 2
    """
    from ..manifest import find_dataset, pair_files, tile_dataset
    from ..schemes import load_scheme

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
                          test_fraction=test_fraction, seed=seed, patches=patches, workers=workers, scheduler=scheduler, overwrite=overwrite, quiet=quiet)
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
