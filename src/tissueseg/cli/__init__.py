"""The ``tissueseg`` command line: a thin layer over the Python API.

Each command lives in ``cli/<command>.py`` and only parses arguments, calls the API and
prints a summary. Commands are imported lazily so ``tissueseg --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

from .common import EXIT_STATUS_HELP, configure_logging

COMMANDS: dict[str, str] = {
    "synth": "Generate H&E regions with known masks (and pyramidal slides).",
    "colorize": "Label masks to palette PNGs, overlays and a legend.",
    "stats": "Pixel counts, proportions and class weights per image and dataset.",
    "tile": "Cut regions and masks into patches; write the manifest.",
    "normalize": "Stain-normalise images (Macenko or Reinhard) to a reference.",
    "train": "Train a segmenter from masks (DeepLabv3+) or from image-level labels only.",
    "predict": "Sliding-window prediction on regions and whole-slide images.",
    "evaluate": "Confusion matrix, IoU, Dice, FwIoU and pixel accuracy.",
    "demo": "The whole pipeline on generated data, from nothing to a report.",
    "run": "The whole pipeline on your data from one config file.",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                return None
            raise
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx) if self.get_command(ctx, name)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_STATUS_HELP)
@click.version_option(package_name="tissueseg")
@click.option("--verbose", "-v", count=True, help="More messages on stderr: -v progress notes, -vv debugging.")
def main(verbose: int) -> None:
    """Semantic segmentation of tissue in H&E histopathology (BCSS and your own data).

    Every step is a command and a Python function: synth -> stats/colorize -> tile ->
    train -> predict -> evaluate; `demo` and `run` chain them. Warnings (a greyscale
    image read as H&E, ...) go to stderr.
    """
    click.get_current_context().call_on_close(configure_logging(verbose))
