"""Run one function over many inputs: in-process, a local process pool, or Dask.

A failing item (an :class:`~tissueseg.io.InputError` or ``ValueError``) is recorded as
skipped with its one-line reason and the batch goes on; anything else is a bug and
propagates. Results come back in input order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

from .io import InputError

T = TypeVar("T")
R = TypeVar("R")

EXPECTED_ERRORS = (InputError, ValueError, OSError)


@dataclass
class BatchResult(Generic[R]):
    """What a batch did: results of the items that worked and reasons for the rest."""

    results: list[tuple[Any, R]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> list[R]:
        return [r for _, r in self.results]

    def summary(self, what: str = "files") -> str:
        line = f"{len(self.results)} {what} done, {len(self.skipped)} skipped"
        if self.skipped:
            line += ":\n" + "\n".join(f"  skipped {reason}" for _, reason in self.skipped)
        return line


def _call(fn: Callable[[T], R], item: T) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except EXPECTED_ERRORS as exc:
        return False, str(exc) if isinstance(exc, InputError) else f"{item}: {exc}"


def run_batch(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    desc: str = "",
    quiet: bool = False,
) -> BatchResult[R]:
    """Apply ``fn`` to every item; see the module docstring.

    ``workers > 1`` uses a local process pool (``fn`` must be picklable: a module-level
    function or a ``functools.partial`` of one). ``scheduler`` is the address of a Dask
    distributed scheduler (``tcp://host:8786``) and sends the same tasks there.
    """
    result: BatchResult[R] = BatchResult()
    outcomes: dict[int, tuple[bool, Any]] = {}
    bar = tqdm(total=len(items), desc=desc, disable=quiet or None, file=sys.stderr, unit="file")
    try:
        if scheduler:
            from dask.distributed import Client, as_completed as dask_completed

            with Client(scheduler) as client:
                futures = {client.submit(_call, fn, item, pure=False): i for i, item in enumerate(items)}
                for fut in dask_completed(futures):
                    outcomes[futures[fut]] = fut.result()
                    bar.update()
        elif workers > 1 and len(items) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
                futs = {pool.submit(_call, fn, item): i for i, item in enumerate(items)}
                for fut in as_completed(futs):
                    outcomes[futs[fut]] = fut.result()
                    bar.update()
        else:
            for i, item in enumerate(items):
                outcomes[i] = _call(fn, item)
                bar.update()
    finally:
        bar.close()
    for i, item in enumerate(items):
        ok, value = outcomes[i]
        if ok:
            result.results.append((item, value))
        else:
            result.skipped.append((str(item), value))
    return result
