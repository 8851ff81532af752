"""``tissueseg run``."""

from __future__ import annotations

from pathlib import Path

import click

from . import common
from .demo import _text


@click.command(epilog="""\b
Example:
  tissueseg run configs/bcss.yaml
  tissueseg run configs/bcss.yaml --set train.full.run.steps=2000 --set workers=4""")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
@common.scheduler_option
@common.json_option
@common.quiet_option
@common.guard
def command(config: Path, overrides: tuple[str, ...], scheduler: str | None, as_json: bool, quiet: bool) -> None:
    """The whole pipeline on your data from one config file.

    Stages: stats, colorize, tile, train (each model in `train:`), predict and evaluate
    the held-out split, predict slides, report. A stage whose inputs and settings did not
    change since its last run is skipped, so a second run redoes only what changed.
    See docs/bcss.md for a config for BCSS as downloaded.
    """
    from ..pipeline import load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(config, overrides)
    if scheduler:
        cfg.scheduler = scheduler
    summary = run_pipeline(cfg, quiet=quiet)
    common.emit(summary, as_json, _text(summary))
