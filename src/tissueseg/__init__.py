"""tissueseg: semantic segmentation of tissue in H&E histopathology."""

from importlib.metadata import PackageNotFoundError, version

from .schemes import IGNORE, ClassScheme, load_scheme

try:
    __version__ = version("tissueseg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["IGNORE", "ClassScheme", "load_scheme", "__version__"]
