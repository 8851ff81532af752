"""``tissueseg demo``."""

from __future__ import annotations

from pathlib import Path

import click

from . import common


@click.command(epilog="""\b
Example:
  tissueseg demo --out demo-out
  tissueseg demo --out demo-out --steps 50 --regions 6   # a quicker look""")
@common.out_option(default="demo-out")
@click.option("--regions", type=click.IntRange(min=3), default=9, show_default=True, help="Generated regions.")
@click.option("--size", type=click.IntRange(min=256), default=1024, show_default=True, help="Region side in px.")
@click.option("--slide-size", type=click.IntRange(min=1024), default=3072, show_default=True,
              help="Side of the generated whole-slide image in px.")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Training steps per model.")
@click.option("--seed", type=int, default=0, show_default=True)
@common.json_option
@common.quiet_option
@common.guard
def command(out: Path, regions: int, size: int, slide_size: int, steps: int, seed: int, as_json: bool,
            quiet: bool) -> None:
    """The whole pipeline on generated data, with no data and no network needed.

    Generates a BCSS-like dataset (H&E regions with known masks) and a pyramidal slide,
    computes class statistics, tiles, trains a DeepLabv3+ from masks ("full") and a weakly
    supervised model from image-level labels ("weak"), predicts the held-out regions and
    the slide, evaluates both models and writes OUT/report.html. A rerun skips what is
    up to date.
    """
    from ..pipeline import run_demo

    summary = run_demo(out, regions=regions, size=size, slide_size=slide_size, steps=steps, seed=seed, quiet=quiet)
    common.emit(summary, as_json, _text(summary))


def _text(summary: dict) -> str:
    lines = ["", "stages:"] + [f"  {k:<22} {v}" for k, v in summary["stages"].items()]
    lines.append("mIoU on the generated held-out regions and on the packaged real BCSS crop:")
    lines.append(f"  {'model':<8} {'method':<6} {'held-out':>8}  {'real crop':>9}")
    for name, m in summary.get("models", {}).items():
        cells = [f"{m[key]:.3f}" if m.get(key) is not None else "-" for key in ("miou", "regions_miou")]
        lines.append(f"  {name:<8} {m['method']:<6} {cells[0]:>8}  {cells[1]:>9}")
    lines.append(f"report: {summary['report']}  ({summary['seconds']:.0f} s)")
    return "\n".join(lines)
