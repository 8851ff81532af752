"""What an output was made from, and when a rerun may keep it.

One policy for every command. An output records a fingerprint: a hash of its inputs
(absolute path, size and modification time of each file), of the model (a hash of its
weights) and of the parameters that shape it. On a rerun an existing output is

- kept when its recorded fingerprint equals the one this run would record;
- recomputed with ``overwrite``;
- otherwise refused (:class:`StaleOutput`, one line naming the output): it was made from
  other inputs, another model or other parameters, or by a version that recorded nothing,
  and it is never replaced silently.

Several inputs of one batch whose outputs would share a name are refused up front
(:func:`unique_stems`). JSON outputs keep the fingerprint under ``"fingerprint"``, PNGs in
a text chunk (:data:`PNG_KEY`).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import io

PNG_KEY = "tissueseg-fingerprint"
"""PNG text chunk holding the fingerprint of the PNG."""

_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class StaleOutput(io.InputError):
    """An existing output made from something else; replaced only with ``overwrite``."""

    def __init__(self, path: str | Path):
        super().__init__(path, "exists and was made from other inputs, model or parameters (or by an older "
                               "version); pass --overwrite to replace it")


def file_stamp(path: str | Path) -> list:
    """``[absolute path, size, mtime_ns]`` of one file: it changes when the file does."""
    p = Path(path).absolute()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def file_stamps(paths: Iterable[str | Path]) -> list[list]:
    """:func:`file_stamp` of each file, in path order."""
    return [file_stamp(p) for p in sorted(Path(p).absolute() for p in paths)]


def key(*parts: Any) -> str:
    """A 16-hex-digit hash of JSON-able ``parts`` (dict keys sorted; other objects as ``str``)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_hash(model: Any) -> str:
    """A hash of a torch module's state dict (names, shapes, dtypes and values).

    Cached per module while its tensors stay the same objects at the same versions
    (in-place updates bump a tensor's version), so repeated calls cost a state-dict walk.
    """
    state = model.state_dict()
    signature = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    cached = _WEIGHTS.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    h = hashlib.sha1()
    for name, t in state.items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
    digest = h.hexdigest()[:16]
    _WEIGHTS[model] = (signature, digest)
    return digest


def recorded(path: str | Path) -> str | None:
    """The fingerprint an output file records (JSON key or PNG text); None if it records none."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            return data.get("fingerprint") if isinstance(data, dict) else None
        return io.png_text(path).get(PNG_KEY)
    except (OSError, ValueError, io.InputError):
        return None


def reuse(path: str | Path, fingerprint: str, overwrite: bool = False) -> bool:
    """True: ``path`` exists with this fingerprint, keep it. False: compute it (absent, or
    ``overwrite``). Raises :class:`StaleOutput` when it exists with another fingerprint."""
    path = Path(path)
    if overwrite or not path.exists():
        return False
    if recorded(path) == fingerprint:
        return True
    raise StaleOutput(path)


def unique_stems(paths: Iterable[str | Path], what: str = "inputs") -> None:
    """Refuse inputs whose outputs would collide: two files with one stem (one line naming both)."""
    unique_names(((Path(p).stem, Path(p)) for p in paths), what, "which names their outputs")


def unique_names(named: Iterable[tuple[str, Path]], what: str, why: str) -> None:
    """Raise ValueError naming both files when two ``(name, path)`` share a name."""
    seen: dict[str, Path] = {}
    for name, path in named:
        if name in seen:
            raise ValueError(f"{seen[name]} and {path}: two {what} share the name {name!r}, {why}; "
                             "rename one or use them separately")
        seen[name] = path
