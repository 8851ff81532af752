"""Write docs/cli.md from the commands' own --help (a test checks it is up to date).

    python docs/make_cli_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from tissueseg.cli import main


def render() -> str:
    parts = ["# Command-line reference", "",
             "Generated from `tissueseg <command> --help` by `python docs/make_cli_reference.py`; do not edit.", ""]
    ctx = main.make_context("tissueseg", [], resilient_parsing=True, terminal_width=100, max_content_width=100)
    parts += ["## tissueseg", "", "```text", main.get_help(ctx).rstrip(), "```", ""]
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        if cmd is None:
            continue
        sub = cmd.make_context(name, [], parent=ctx, resilient_parsing=True, terminal_width=100,
                               max_content_width=100)
        parts += [f"## tissueseg {name}", "", "```text", cmd.get_help(sub).rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    target = Path(__file__).with_name("cli.md")
    target.write_text(render())
    print(f"wrote {target}", file=sys.stderr)
