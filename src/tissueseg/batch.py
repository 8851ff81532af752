"""Run one function over many inputs: in-process, a local process pool, or Dask.

A failing item (an :class:`~tissueseg.io.InputError` or ``ValueError``) is recorded as
skipped with its one-line reason and the batch goes on; anything else is a bug and
propagates. Results come back in input order.

A local pool starts its workers with ``spawn`` (a forked child would inherit the parent's
threads, locks and CUDA context), gives each worker ``cores // workers`` threads (torch,
OpenCV and the OpenMP/MKL/BLAS pools of libraries loaded later; :func:`thread_budget`
for pools of our own) and sends the workers' log records to the parent's loggers.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

from .io import InputError

T = TypeVar("T")
R = TypeVar("R")

EXPECTED_ERRORS = (InputError, ValueError, OSError)
START_METHOD = "spawn"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "OPENCV_FOR_THREADS_NUM")
"""Thread-count variables set in every pool worker (read by libraries loaded after the worker starts)."""

log = logging.getLogger(__name__)
_worker_threads: int | None = None  # this process's share of the cores when it is a pool worker


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


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_budget() -> int:
    """Threads this process should use: its share of the cores in a pool worker, else all cores."""
    return _worker_threads or available_cores()


def _init_worker(threads: int, log_queue: Any, level: int) -> None:
    """Pool worker setup: thread caps and log forwarding (this process only)."""
    global _worker_threads
    _worker_threads = threads
    for var in THREAD_ENV:
        os.environ[var] = str(threads)
    if (torch := sys.modules.get("torch")) is not None:  # already imported (by __main__): the env came too late
        torch.set_num_threads(threads)
    if (cv2 := sys.modules.get("cv2")) is not None:
        cv2.setNumThreads(threads)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(level)


class _ToOwnLogger(logging.Handler):
    """Hands a record from a worker to the parent's logger of the same name."""

    def handle(self, record: logging.LogRecord) -> bool:
        logging.getLogger(record.name).handle(record)
        return True


@contextlib.contextmanager
def _forwarded_logs(ctx: Any) -> Iterator[Any]:
    """A queue that workers log into; its records reach this process's loggers."""
    queue = ctx.Queue()
    listener = logging.handlers.QueueListener(queue, _ToOwnLogger())
    listener.start()
    try:
        yield queue
    finally:
        listener.stop()
        queue.close()


def _call(fn: Callable[[T], R], item: T) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except EXPECTED_ERRORS as exc:
        return False, str(exc) if isinstance(exc, InputError) else f"{item}: {exc}"


def _run_pool(fn: Callable[[T], R], items: Sequence[T], workers: int, bar: Any) -> dict[int, tuple[bool, Any]]:
    outcomes: dict[int, tuple[bool, Any]] = {}
    n = min(workers, len(items))
    threads = max(1, available_cores() // n)
    log.info("%d worker processes (%s), %d threads each", n, START_METHOD, threads)
    ctx = multiprocessing.get_context(START_METHOD)
    level = logging.getLogger("tissueseg").getEffectiveLevel()
    with _forwarded_logs(ctx) as queue, ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(threads, queue, level)
    ) as pool:
        futs = {pool.submit(_call, fn, item): i for i, item in enumerate(items)}
        try:
            for fut in as_completed(futs):
                outcomes[futs[fut]] = fut.result()
                bar.update()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return outcomes


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
    function or a ``functools.partial`` of one; a script needs the usual
    ``if __name__ == "__main__":`` guard, as spawned workers import it). ``scheduler`` is the
    address of a Dask distributed scheduler (``tcp://host:8786``) and sends the same tasks there.
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
            outcomes = _run_pool(fn, items, workers, bar)
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
