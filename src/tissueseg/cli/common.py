"""Options, output helpers and exit statuses shared by every command."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..io import InputError, _json_default

F = Callable[..., Any]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own status for bad options and arguments
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130
EXIT_STATUS_HELP = (f"Exit status: {EXIT_OK} done; {EXIT_ERROR} error (a one-line message on stderr); "
                    f"{EXIT_USAGE} bad command line; {EXIT_SKIPPED} finished, but some inputs were skipped (listed "
                    f"in the summary); {EXIT_INTERRUPTED} interrupted (rerun the command to resume).")


class _EchoHandler(logging.Handler):
    """Log records as ``level: message`` lines on the current stderr (click's, so tests see them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def configure_logging(verbose: int) -> Callable[[], None]:
    """Warnings of the ``tissueseg`` loggers on stderr; ``-v`` adds info, ``-vv`` debug.

    Returns the function that puts the logger back as it was (run when the command ends).
    """
    logger = logging.getLogger("tissueseg")
    level, handler = logger.level, _EchoHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.setLevel(logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    logger.addHandler(handler)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return restore


def out_option(required: bool = True, default: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=required and default is None,
        default=default, help="Folder for what the command writes.",
    )


def scheme_option() -> Callable[[F], F]:
    from ..schemes import DEFAULT_SCHEME

    return click.option(
        "--scheme", default=DEFAULT_SCHEME, show_default=True, metavar="NAME|FILE",
        help="Class scheme: bcss22, bcss5, bcss-wsss4, or a YAML/JSON merge map.",
    )


workers_option = click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True,
                              help="Parallel worker processes.")
scheduler_option = click.option("--scheduler", metavar="ADDRESS", default=None,
                                help="Run the tasks on a Dask distributed scheduler (tcp://host:8786).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


def emit(summary: dict[str, Any], as_json: bool, text: str, skipped: int = 0) -> None:
    """Print the summary as JSON (stdout) or as human text; with ``skipped`` inputs, end the
    command with :data:`EXIT_SKIPPED`."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=_json_default))
    else:
        click.echo(text)
    if skipped:
        sys.exit(EXIT_SKIPPED)


def fail(message: str) -> None:
    """Stop with a one-line error on stderr and :data:`EXIT_ERROR`."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def guard(fn: F) -> F:
    """Expected input errors end in a one-line message and :data:`EXIT_ERROR`, Ctrl-C in
    :data:`EXIT_INTERRUPTED`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (InputError, ValueError, FileExistsError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def batch_options(fn: F) -> F:
    """The options of every per-file batch command (--workers, --scheduler, --json, --overwrite,
    --quiet) and the one-line error guard."""
    for deco in (guard, quiet_option, overwrite_option, json_option, scheduler_option, workers_option):
        fn = deco(fn)
    return fn
