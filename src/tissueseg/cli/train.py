"""``tissueseg train``: train a segmenter from a config file plus overrides."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import click

from ..config import METHODS, MIL_LOSSES
from . import common


def _help() -> str:
    methods = "\n".join(textwrap.fill(labels, 88, initial_indent=f"  {name:<11} ", subsequent_indent=" " * 14)
                        for name, labels in METHODS.items())
    return f"""Train a segmenter from pixel masks or from image-level labels only.

Writes OUT/best.pt (best val mIoU), OUT/last.pt (resume point), OUT/metrics.csv,
OUT/curves.png and OUT/config.yaml (and OUT/pseudo-masks/ for methods that make them).

\b
Methods (--method, or `method:` in the config) and the labels each needs:
{methods}

See docs/weak-supervision.md for how the weak methods compare."""


@click.command(
    "train",
    help=_help(),
    epilog="""\b
Examples:
  tissueseg train configs/full.yaml --manifest tiles/ --out runs/full
  tissueseg tile data/ --out tiles-32 --size 32 --stride 32 --edge pad
  tissueseg train configs/label-grid.yaml --manifest tiles-32/ --out runs/grid --steps 2000
  tissueseg tile data/ --out tiles-256 --size 256 --stride 256 --edge pad
  tissueseg train configs/mil.yaml --manifest tiles-256/ --out runs/mil --loss sigmoid-max
  tissueseg train --manifest tiles/ --out runs/quick --set run.batch_size=4 --set model.weights=none

An --out folder that holds last.pt resumes that run (same config and data) unless --overwrite;
--overwrite keeps cam's stage 1 (<out>/classifier) when it finished on the same config and data.""",
)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config field (dotted key, YAML value), e.g. run.steps=50. Repeatable.")
@click.option("--manifest", type=click.Path(path_type=Path), help="Tiling output (folder or manifest.parquet).")
@common.out_option(required=False)
@click.option("--method", type=click.Choice(list(METHODS)), help="What supervises training (method).")
@click.option("--steps", type=click.IntRange(min=1), help="Optimiser steps (run.steps).")
@click.option("--loss", type=click.Choice(["ce", *MIL_LOSSES]),
              help="loss.name: ce, or a MIL loss for method mil.")
@click.option("--weights", type=click.Choice(["imagenet", "none"]), help="Encoder initialisation (model.weights).")
@click.option("--scheme", default=None, metavar="NAME|FILE", help="Class scheme (default: the manifest's).")
@click.option("--workers", "-j", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes (data.workers; 0 = in the main process).")
@common.overwrite_option
@common.json_option
@common.quiet_option
@common.guard
def command(config: Path | None, sets: tuple[str, ...], manifest: Path | None, out: Path | None, method: str | None,
            steps: int | None, loss: str | None, weights: str | None, scheme: str | None, workers: int | None,
            overwrite: bool, as_json: bool, quiet: bool) -> None:
    from ..config import load_config
    from ..train import train

    flags = {"data.manifest": manifest, "run.out": out, "data.scheme": scheme, "run.steps": steps,
             "method": method, "loss.name": loss, "model.weights": weights, "data.workers": workers}
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
