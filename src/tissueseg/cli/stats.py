"""``tissueseg stats``: pixel counts, proportions and class weights of label masks."""

from __future__ import annotations

from pathlib import Path

import click

from . import common


@click.command("stats")
@click.argument("masks", nargs=-1, required=True, type=click.Path(path_type=Path))
@common.out_option()
@common.scheme_option()
@common.batch_options
def command(masks: tuple[Path, ...], out: Path, scheme: str, workers: int, scheduler: str | None, as_json: bool,
            overwrite: bool, quiet: bool) -> None:
    """Count classes in MASKS (files or folders of raw-code masks) and write OUT/stats.json,
    per_image.csv, classes.csv (with inverse and median-frequency weights) and proportions.png.

    Proportions exclude ignored pixels (e.g. outside_roi); their count is reported apart.

    \b
    Example:
      tissueseg stats ../shared/data/bcss/masks --out stats/ --scheme bcss5 --workers 2
    """
    from ..schemes import load_scheme
    from ..stats import check_outputs, dataset_stats

    check_outputs(out, overwrite)
    result = dataset_stats(masks, load_scheme(scheme), workers=workers, scheduler=scheduler, quiet=quiet)
    if len(result.per_image) == 0:
        raise ValueError("no mask could be read: " + "; ".join(r for _, r in result.skipped))
    result.write(out, overwrite=overwrite)
    table = result.classes_table()
    lines = [f"{'class':<26}{'pixels':>14}{'%':>9}{'images':>8}{'w_inv':>8}{'w_med':>8}"]
    for row in table.itertuples():
        lines.append(f"{row._1:<26}{row.pixels:>14,}{row.proportion * 100:>9.3f}{row.images:>8}"
                     f"{row.weight_inverse:>8.3f}{row.weight_median:>8.3f}")
    lines.append(f"{'(ignored)':<26}{result.ignored:>14,}")
    n_skip = len(result.skipped)
    lines.append(f"{len(result.per_image)} masks counted, {n_skip} skipped"
                 + "".join(f"\n  skipped {r}" for _, r in result.skipped) + f"\noutputs in {out}")
    common.emit(result.to_json(), as_json, "\n".join(lines), skipped=n_skip)
