"""``python -m tissueseg``: the command line (also ``torchrun ... -m tissueseg train ...``)."""

from .cli import main

main(prog_name="tissueseg")
