"""``tissueseg train``: train a segmenter from a config file plus overrides."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import common


@click.command(
    "train",
    epilog="""\b
Examples:
  tissueseg train configs/full.yaml --manifest tiles/ --out runs/full
  tissueseg tile data/ --out tiles-32 --size 32 --stride 32 --edge pad
  tissueseg train configs/weak.yaml --manifest tiles-32/ --out runs/weak --steps 2000
  tissueseg train configs/mil.yaml --manifest tiles/ --out runs/mil --loss sigmoid-max
  tissueseg train --manifest tiles/ --out runs/quick --set run.batch_size=4 --set model.weights=none

An --out folder that holds last.pt resumes that run (same config) unless --overwrite.""",
)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config field (dotted key, YAML value), e.g. run.steps=50. Repeatable.")
@click.option("--manifest", type=click.Path(path_type=Path), help="Tiling output (folder or manifest.parquet).")
@common.out_option(required=False)
@click.option("--steps", type=click.IntRange(min=1), help="Optimiser steps (run.steps).")
@click.option("--loss", type=click.Choice(["ce", "label-grid", "mil-max", "sigmoid-max", "lse", "topk"]),
              help="ce trains from masks; label-grid (the default weak method) from the image labels of small "
                   "patches; the MIL losses from the image labels of whole patches.")
@click.option("--weights", type=click.Choice(["imagenet", "none"]), help="Encoder initialisation (model.weights).")
@click.option("--scheme", default=None, metavar="NAME|FILE", help="Class scheme (default: the manifest's).")
@click.option("--workers", "-j", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes (data.workers; 0 = in the main process).")
@common.overwrite_option
@common.json_option
@common.quiet_option
@common.guard
def command(config: Path | None, sets: tuple[str, ...], manifest: Path | None, out: Path | None, steps: int | None,
            loss: str | None, weights: str | None, scheme: str | None, workers: int | None, overwrite: bool,
            as_json: bool, quiet: bool) -> None:
    """Train DeepLabv3+ from pixel masks (loss ce) or from image-level labels only.

    Writes OUT/best.pt (best val mIoU), OUT/last.pt (resume point), OUT/metrics.csv,
    OUT/curves.png and OUT/config.yaml. From image labels: loss label-grid (the default
    weak method, configs/weak.yaml) trains DeepLabv3+ on pseudo-masks made from the labels
    of small patches (a manifest tiled with --size 32 --stride 32 --edge pad; previews in
    OUT/pseudo-masks/); the MIL losses (configs/mil.yaml) train an FCN from the labels of
    whole patches. See docs/weak-supervision.md.
    """
    from ..config import load_config
    from ..train import train

    flags = {"data.manifest": manifest, "run.out": out, "data.scheme": scheme, "run.steps": steps,
             "loss.name": loss, "model.weights": weights, "data.workers": workers}
    # JSON-quoted so that any path or name stays a string when parsed as YAML
    overrides = list(sets) + [f"{k}={json.dumps(v if isinstance(v, int) else str(v))}"
                              for k, v in flags.items() if v is not None]
    cfg = load_config(config, overrides)
    try:
        result = train(cfg, quiet=quiet, overwrite=overwrite)
    except KeyboardInterrupt as exc:
        click.echo(f"interrupted: {exc or 'stopped'}; rerun the same command to resume", err=True)
        sys.exit(130)
    ious = result.per_class_iou()
    width = max([len(n) for n in ious] + [5])
    table = "\n".join(f"  {n:<{width}}  {v:.3f}" for n, v in ious.items())
    text = (
        f"trained {result.steps} steps" + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
        + f"\nbest val mIoU {result.best_miou:.3f} at step {result.best_step}"
        + (f"\nper-class IoU:\n{table}" if table else "")
        + f"\nbest: {result.best}\nlast: {result.last}\nmetrics: {result.out / 'metrics.csv'}"
        + f"\ncurves: {result.out / 'curves.png'}"
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process reports
        common.emit(result.to_dict(), as_json, text)
