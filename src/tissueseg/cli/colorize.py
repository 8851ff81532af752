"""``tissueseg colorize``: label masks to palette PNGs, overlays and a legend."""

from __future__ import annotations

from pathlib import Path

import click

from . import common


@click.command("colorize")
@click.argument("masks", nargs=-1, required=True, type=click.Path(path_type=Path))
@common.out_option()
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder of H&E images paired with the masks by file stem: also writes <stem>_overlay.png.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.4, show_default=True,
              help="Opacity of the class colours in overlays.")
@click.option("--all-classes", is_flag=True, help="Legend lists every class, not only those present.")
@common.scheme_option()
@common.batch_options
def command(masks: tuple[Path, ...], out: Path, images: Path | None, alpha: float, all_classes: bool, scheme: str,
            workers: int, scheduler: str | None, as_json: bool, overwrite: bool, quiet: bool) -> None:
    """Write OUT/<stem>.png (palette PNG of class indices) for each mask, and OUT/legend.png.

    MASKS are mask files or folders of masks (raw codes). Bad masks are skipped and listed.
    The palette PNGs record their scheme (evaluate reads it). On a rerun, outputs made
    from the same files and options are kept; others are skipped unless --overwrite.

    \b
    Example:
      tissueseg colorize masks/ --images images/ --out colour/ --scheme bcss5
    """
    from ..colorize import colorize_files
    from ..schemes import load_scheme

    result = colorize_files(masks, out, load_scheme(scheme), images=images, alpha=alpha, workers=workers,
                            scheduler=scheduler, overwrite=overwrite, quiet=quiet, legend_all=all_classes)
    written = sum(1 for r in result.ok if r["written"])
    summary = {
        "out": str(out),
        "done": len(result.results),
        "written": written,
        "kept": len(result.results) - written,
        "skipped": [{"file": f, "reason": r} for f, r in result.skipped],
        "legend": str(out / "legend.png") if result.results else None,
    }
    common.emit(summary, as_json, result.summary("masks") + f" ({written} written, {summary['kept']} already there)"
                + f"\noutputs in {out}", skipped=len(result.skipped))
