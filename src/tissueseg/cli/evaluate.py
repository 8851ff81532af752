"""``tissueseg evaluate``: score predicted label maps against truth masks."""

from __future__ import annotations

import math
from pathlib import Path

import click

from . import common


def _table(result: dict) -> str:
    lines = [f"{'class':<28}{'IoU':>8}{'Dice':>8}{'prec':>8}{'recall':>8}{'support':>12}"]
    fmt = lambda v: f"{v:8.3f}" if not (v is None or math.isnan(v)) else f"{'-':>8}"  # noqa: E731
    for name, row in result["per_class"].items():
        lines.append(f"{name:<28}{fmt(row['iou'])}{fmt(row['dice'])}{fmt(row['precision'])}"
                     f"{fmt(row['recall'])}{row['support']:>12}")
    lines.append(f"mIoU {fmt(result['miou']).strip()}  mDice {fmt(result['mdice']).strip()}  "
                 f"FwIoU {fmt(result['fwiou']).strip()}  pixel accuracy {fmt(result['pixel_accuracy']).strip()}  "
                 f"({result['pairs']} pairs, {len(result['skipped'])} skipped, "
                 f"{len(result['unmatched_predictions'])} predictions without truth)")
    lines += [f"  skipped {reason}" for reason in result["skipped"]]
    return "\n".join(lines)


def _skipped(result: dict) -> int:
    """Predictions not scored: unreadable pairs and predictions without truth."""
    return len(result["skipped"]) + len(result["unmatched_predictions"])


@click.command(epilog="""\b
Example:
  tissueseg evaluate runs/pred/labels --truth data/masks --scheme bcss5 --out runs/eval
  tissueseg evaluate pred/ --truth wsss/test/mask --convention wsss --out eval/""")
@click.argument("pred_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--truth", "truth_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of truth masks (paired with predictions by file stem).")
@common.out_option()
@common.scheme_option()
@click.option("--truth-format", type=click.Choice(["codes", "labels"]), default="codes", show_default=True,
              help="Truth holds raw codes (mapped through the scheme) or class indices.")
@click.option("--convention", type=click.Choice(["default", "wsss"]), default="default", show_default=True,
              help="wsss: BCSS-WSSS masks, 4 classes, background (index 4) ignored.")
@common.workers_option
@common.json_option
@common.overwrite_option
@common.quiet_option
@common.guard
def command(pred_dir: Path, truth_dir: Path, out: Path, scheme: str, truth_format: str, convention: str,
            workers: int, as_json: bool, overwrite: bool, quiet: bool) -> None:
    """Confusion matrix, IoU, Dice, FwIoU and pixel accuracy of predicted label maps.

    Predictions are class-index PNGs (as written by predict/colorize). Writes
    metrics.json, per_class.csv and confusion.png to --out.
    """
    import json

    from .. import io, metrics

    out = io.check_output_dir(out)
    files = {name: out / name for name in ("metrics.json", "per_class.csv", "confusion.png")}
    if files["metrics.json"].is_file() and not overwrite:
        result = json.loads(files["metrics.json"].read_text())
        common.emit(result, as_json, f"already evaluated: {files['metrics.json']} (pass --overwrite to redo)\n"
                    + _table(result), skipped=_skipped(result))
        return
    result = metrics.evaluate_folders(pred_dir, truth_dir, scheme, truth_format=truth_format,
                                      convention=convention, workers=workers, quiet=quiet)
    metrics.plot_confusion(result["confusion"], result["names"], files["confusion.png"])
    io.write_text(files["per_class.csv"], metrics.per_class_csv(result))
    safe = metrics.json_safe(result)
    io.write_json(files["metrics.json"], safe)
    safe["outputs"] = {k: str(v) for k, v in files.items()}
    common.emit(safe, as_json, _table(result) + f"\nwrote {', '.join(str(p) for p in files.values())}",
                skipped=_skipped(result))
