"""``tissueseg normalize``: stain-normalise images to a reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from . import common


@click.command(epilog="""\b
Example:
  tissueseg normalize data/images --reference data/images/ref.png --method macenko --out data/normalised""")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="H&E image whose stain appearance the others take.")
@click.option("--method", type=click.Choice(["macenko", "reinhard"]), default="macenko", show_default=True)
@common.out_option()
@common.workers_option
@common.json_option
@common.overwrite_option
@common.quiet_option
@common.guard
def command(images: tuple[Path, ...], reference: Path, method: str, out: Path, workers: int, as_json: bool,
            overwrite: bool, quiet: bool) -> None:
    """Stain-normalise IMAGES (files or folders) to a reference (Macenko or Reinhard).

    Writes <out>/<stem>.png; tiles that are mostly glass are copied unchanged. On a rerun,
    outputs made from the same image, reference and method are kept; others are skipped
    unless --overwrite.
    """
    from ..stain import normalize_files

    batch = normalize_files(images, reference, out, method=method, workers=workers, overwrite=overwrite,
                            quiet=quiet)
    counts = Counter(r["status"] for r in batch.ok)
    summary = {"method": method, "reference": str(reference), "out": str(out), "counts": dict(counts),
               "results": batch.ok, "skipped": [reason for _, reason in batch.skipped]}
    text = batch.summary("images") + "".join(f"\n  {n} {status}" for status, n in sorted(counts.items()))
    common.emit(summary, as_json, text, skipped=len(batch.skipped))
