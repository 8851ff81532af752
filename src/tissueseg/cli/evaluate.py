"""``tissueseg evaluate``: score predicted label maps against truth masks."""

from __future__ import annotations

import math
from pathlib import Path

import click

from . import common


def _table(result: dict) -> str:
    lines = [f"{'class':<28}{'IoU':>8}{'Dice':>8}{'prec':>8}{'recall':>8}{'cover':>8}{'support':>12}"]
    fmt = lambda v: f"{v:8.3f}" if not (v is None or math.isnan(v)) else f"{'-':>8}"  # noqa: E731
    for name, row in result["per_class"].items():
        lines.append(f"{name:<28}{fmt(row['iou'])}{fmt(row['dice'])}{fmt(row['precision'])}"
                     f"{fmt(row['recall'])}{fmt(row['coverage'])}{row['support']:>12}")
    lines.append(f"mIoU {fmt(result['miou']).strip()}  coverage {fmt(result['coverage']).strip()}  "
                 f"mDice {fmt(result['mdice']).strip()}  FwIoU {fmt(result['fwiou']).strip()}  "
                 f"pixel accuracy {fmt(result['pixel_accuracy']).strip()}  scheme {result['scheme']}  "
                 f"({result['pairs']} pairs, {len(result['skipped'])} skipped, "
                 f"{len(result['unmatched_predictions'])} predictions without truth)")
    lines += [f"  skipped {reason}" for reason in result["skipped"]]
    return "\n".join(lines)


def _skipped(result: dict) -> int:
    """Predictions not scored: unreadable pairs and predictions without truth."""
    return len(result["skipped"]) + len(result["unmatched_predictions"])


@click.command(epilog="""\b
Example:
  tissueseg evaluate runs/pred --truth data/masks --out runs/eval
  tissueseg evaluate colour/ --truth data/masks --scheme bcss5 --out eval/
  tissueseg evaluate pred/ --truth wsss/test/mask --convention wsss --out eval/""")
@click.argument("pred_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--truth", "truth_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of truth masks (paired with predictions by file stem).")
@common.out_option()
@click.option("--scheme", default=None, metavar="NAME|FILE",
              help="Class scheme of the predictions: bcss22, bcss5, bcss-wsss4, or a YAML/JSON merge map "
                   "(default: the one the predictions record; one of other classes is refused, one of the same "
                   "classes maps the truth's codes).")
@click.option("--truth-format", type=click.Choice(["codes", "labels"]), default="codes", show_default=True,
              help="Truth holds raw codes (mapped through the scheme) or class indices.")
@click.option("--convention", type=click.Choice(["default", "wsss"]), default="default", show_default=True,
              help="wsss: BCSS-WSSS masks, 4 classes, background (index 4) ignored.")
@common.workers_option
@common.json_option
@common.overwrite_option
@common.quiet_option
@common.guard
def command(pred_dir: Path, truth_dir: Path, out: Path, scheme: str | None, truth_format: str, convention: str,
            workers: int, as_json: bool, overwrite: bool, quiet: bool) -> None:
    """Confusion matrix, IoU, Dice, FwIoU, pixel accuracy and coverage of predicted label maps.

    Predictions are class-index PNGs (as written by predict/colorize; 255 = no prediction,
    a miss of the true class). Coverage is the share of labelled pixels that got a
    prediction. Writes metrics.json, per_class.csv, per_image.csv and confusion.png to
    --out. On a rerun, an evaluation of the same files and options is kept; another one is
    refused unless --overwrite.
    """
    from .. import metrics

    result = metrics.evaluate_folders(pred_dir, truth_dir, scheme, truth_format=truth_format, convention=convention,
                                      workers=workers, quiet=quiet, out=out, overwrite=overwrite)
    files = [out / name for name in metrics.OUTPUTS]
    result = {**result, "outputs": [str(p) for p in files]}
    if result["kept"]:
        text = f"already evaluated (same predictions, truth and options): {out / 'metrics.json'}\n" + _table(result)
    else:
        text = _table(result) + f"\nwrote {', '.join(str(p) for p in files)}"
    common.emit(metrics.json_safe(result), as_json, text, skipped=_skipped(result))
