"""Options and output helpers shared by every command."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..io import InputError, _json_default

F = Callable[..., Any]


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


def emit(summary: dict[str, Any], as_json: bool, text: str) -> None:
    """Print the summary as JSON (stdout) or as human text."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=_json_default))
    else:
        click.echo(text)


def fail(message: str) -> None:
    """Stop with a one-line error on stderr and exit status 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def guard(fn: F) -> F:
    """Turn expected input errors into a one-line message and exit status 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (InputError, ValueError, FileExistsError) as exc:
            fail(str(exc))

    return wrapper


def batch_options(fn: F) -> F:
    """The options of every per-file batch command (--workers, --scheduler, --json, --overwrite,
    --quiet) and the one-line error guard."""
    for deco in (guard, quiet_option, overwrite_option, json_option, scheduler_option, workers_option):
        fn = deco(fn)
    return fn
