"""``tissueseg synth``: generated H&E regions with known masks, and a pyramidal slide."""

from __future__ import annotations

from pathlib import Path

import click

from .. import synth
from ..io import check_output_dir, list_images
from . import common


def _slide_shape(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected WIDTHxHEIGHT, e.g. 20000x15000") from None
    return h, w


@click.command(
    "synth",
    epilog="""\b
Examples:
  tissueseg synth --out data/synth                       # 8 regions of 1024 px
  tissueseg synth --out data/procedural --textures none  # procedural textures only
  tissueseg synth --out data/synth --n 24 --size 2048 --workers 2
  tissueseg synth --out data/real-layouts --layouts ../shared/data/bcss/masks
  tissueseg synth --out data/synth --slide 20000x15000 --mpp 0.5
""",
)
@common.out_option()
@click.option("--n", "n", type=click.IntRange(min=1), default=8, show_default=True, help="Number of regions.")
@click.option("--size", type=click.IntRange(min=16), default=1024, show_default=True, help="Region side in px.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--layouts", type=click.Path(exists=True, path_type=Path), default=None,
              help="Real BCSS mask file or folder: region layouts are crops of these masks.")
@click.option("--textures", default="builtin", show_default=True, metavar="builtin|none|FOLDER",
              help="builtin: real H&E crops of the packaged bank in half of each class's areas, "
                   "procedural textures elsewhere; none: procedural only; or a bank folder (images + "
                   "provenance.csv with file, code, mpp). Slides are always procedural.")
@click.option("--slide", "slide", default=None, metavar="WxH", help="Also write a pyramidal slide of this size.")
@click.option("--mpp", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="µm/px of the slide's level 0.")
@common.workers_option
@common.overwrite_option
@common.json_option
@common.quiet_option
@common.guard
def command(out: Path, n: int, size: int, seed: int, layouts: Path | None, textures: str, slide: str | None,
            mpp: float, workers: int, overwrite: bool, as_json: bool, quiet: bool) -> None:
    """Generate H&E regions with known masks in the BCSS layout (and a pyramidal slide).

    Writes OUT/rgbs_colorNormalized/*.png and OUT/masks/*.png (codes); with --slide also
    OUT/slides/synth_slide.tiff and its mask OUT/slides/synth_slide_mask.png (1/16).
    Finished files are kept on a rerun unless --overwrite.
    """
    shape = _slide_shape(slide)
    out = check_output_dir(out)
    layout_files = list_images([layouts]) if layouts else None
    pairs = synth.make_dataset(out, n=n, size=size, seed=seed, layouts=layout_files, textures=textures,
                               overwrite=overwrite, workers=workers, quiet=quiet)
    summary: dict = {"out": out, "regions": len(pairs), "size": size, "seed": seed, "textures": textures,
                     "rgbs": out / "rgbs_colorNormalized", "masks": out / "masks"}
    text = f"{len(pairs)} regions in {out} (rgbs_colorNormalized/, masks/)"
    if shape is not None:
        path = out / "slides" / "synth_slide.tiff"
        summary["slide_kept"] = path.exists() and not overwrite
        if summary["slide_kept"]:
            text += f"\nslide {path} exists, kept (use --overwrite to replace)"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            synth.make_slide(path, shape, seed, mpp=mpp, quiet=quiet)
            text += f"\nslide {path} ({shape[1]}x{shape[0]} px at {mpp} µm/px) + {path.stem}_mask.png"
        summary["slide"] = path
        summary["slide_mask"] = path.with_name(f"{path.stem}_mask.png")
    common.emit(summary, as_json, text)
