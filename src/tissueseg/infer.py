"""Sliding-window prediction on regions and whole slides, seamless and in bounded memory.

The image is read at the model's µm/px (or ``target_mpp``) on a grid of windows with
overlap. Softmax probabilities are blended with a 2-D Gaussian weight that never reaches
0 (borders still count): label = argmax of ``sum(w * p)``, probability = ``sum(w * p) /
sum(w)``. On whole-slide images (by default; on regions when asked) windows wholly on
glass (tissue mask on a thumbnail) are skipped and pixels off tissue are
:data:`~tissueseg.schemes.IGNORE`.

Memory: windows are processed row by row. A ring buffer of ``window`` image rows holds
the running sums (``4 * (K + 1) * window * width`` bytes: 0.5 GB for K = 5, window 512 and a
40,000 px wide slide at the target resolution), plus ``batch`` windows in flight and a
bounded queue of read-ahead batches; the label map (and uint8 probabilities) go to zarr
stores on disk a band at a time (band = ``stride`` rows, one zarr chunk row). Add the
band's temporaries (about ``3 * 4 * K * stride * width`` bytes when probabilities are
written). Stitching stays under 1.5 GB for K <= 6, window 512, 40,000 px wide; the model
and one batch of activations come on top (DeepLabv3+ / tf_efficientnet_lite0 on CPU: about
0.9 GB loaded, +0.85 GB for 8 windows of 512 px; see bench/predict.py). Peak memory grows
with slide width, never with area.

Resume: after every band ``progress.json`` (written atomically) records how many bands
are done and the class counts so far. A restarted prediction recomputes the windows that
still overlap the first unfinished band and goes on from there; batches are formed on the
same global window list, so the result is identical to an uninterrupted run. Finished and
interrupted outputs are reused only when made from the same input file, model weights,
scheme and parameters (:mod:`tissueseg.fingerprint`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from . import export, fingerprint, io
from .batch import BatchResult, run_batch
from .schemes import IGNORE, ClassScheme, scheme_from_dict
from .slide import SlideReader, open_image, plan_read, read_at, require_mpp, target_size, tissue_mask

if TYPE_CHECKING:
    from .checkpoint import InferenceChanges

THUMB_MAX = 2048
"""Longest side of the thumbnail that tissue detection runs on."""
QUEUE_BATCHES = 3
"""Batches read ahead by the reader thread."""
CHUNK_WIDTH = 2048
REGION_PNG_MAX = 2**28
"""One-level inputs up to this many pixels also get ``labels.png`` at their own size."""

log = logging.getLogger(__name__)


class PredictorLike(Protocol):
    """What inference needs of :class:`tissueseg.checkpoint.Predictor`."""

    model: torch.nn.Module
    scheme: ClassScheme
    mpp: float
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor: ...

    def probabilities(self, x: torch.Tensor) -> torch.Tensor: ...

    def check_window(self, size: int) -> None: ...

    def fingerprint(self) -> str: ...

    def to(self, device: str | torch.device) -> Any: ...


@dataclass(frozen=True)
class Grid:
    """Windows of ``window`` px every ``stride`` px over a ``width x height`` image.

    Windows start at multiples of ``stride`` and the last ones may reach past the image
    (read as white, cropped), so bands of ``stride`` rows line up with zarr chunks.
    """

    width: int
    height: int
    window: int
    stride: int

    @property
    def nx(self) -> int:
        return max(1, math.ceil((self.width - self.window) / self.stride) + 1)

    @property
    def ny(self) -> int:
        return max(1, math.ceil((self.height - self.window) / self.stride) + 1)

    @property
    def bands(self) -> int:
        return math.ceil(self.height / self.stride)

    def band_rows(self, band: int) -> tuple[int, int]:
        return band * self.stride, min((band + 1) * self.stride, self.height)

    def first_row_touching(self, band: int) -> int:
        """The first window row whose windows reach into ``band``."""
        return max(0, math.floor((band * self.stride - self.window) / self.stride) + 1)


def make_grid(width: int, height: int, window: int, overlap: float) -> Grid:
    if window < 8:
        raise ValueError(f"window must be at least 8 px, got {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return Grid(width, height, window, max(1, round(window * (1.0 - overlap))))


def blend_weights(window: int, sigma: float = 0.25, floor: float = 1e-3) -> np.ndarray:
    """``(window, window)`` float32 Gaussian (sigma = ``sigma * window``), max 1, min ``floor``."""
    r = (np.arange(window, dtype=np.float64) + 0.5 - window / 2) / (sigma * window)
    g = np.exp(-0.5 * r**2)
    return np.maximum(np.outer(g, g) / g.max() ** 2, floor).astype(np.float32)


def window_keep(grid: Grid, mask: np.ndarray | None) -> np.ndarray:
    """``(ny, nx)`` bool: windows that touch tissue of ``mask`` (any scale; None = all)."""
    keep = np.ones((grid.ny, grid.nx), dtype=bool)
    if mask is None:
        return keep
    mh, mw = mask.shape
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for k in range(grid.ny):
        y0 = min(math.floor(k * grid.stride * mh / grid.height), mh - 1)
        y1 = max(min(math.ceil((k * grid.stride + grid.window) * mh / grid.height), mh), y0 + 1)
        for i in range(grid.nx):
            x0 = min(math.floor(i * grid.stride * mw / grid.width), mw - 1)
            x1 = max(min(math.ceil((i * grid.stride + grid.window) * mw / grid.width), mw), x0 + 1)
            keep[k, i] = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0] > 0
    return keep


def _scaled_mask_rows(mask: np.ndarray | None, grid: Grid, r0: int, r1: int) -> np.ndarray:
    if mask is None:
        return np.ones((r1 - r0, grid.width), dtype=bool)
    mh, mw = mask.shape
    rows = np.minimum((np.arange(r0, r1) + 0.5) * mh / grid.height, mh - 1).astype(np.intp)
    cols = np.minimum((np.arange(grid.width) + 0.5) * mw / grid.width, mw - 1).astype(np.intp)
    return mask[rows][:, cols]


def _ring(r0: int, r1: int, size: int) -> list[tuple[slice, slice]]:
    """Rows ``r0..r1`` of a ring buffer of ``size`` rows: ``(buffer slice, local slice)`` pieces."""
    out, r = [], r0
    while r < r1:
        start = r % size
        n = min(r1 - r, size - start)
        out.append((slice(start, start + n), slice(r - r0, r - r0 + n)))
        r += n
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available")
    return dev


@dataclass
class BandStats:
    """What :func:`predict_bands` did."""

    windows_total: int
    windows_kept: int
    windows_run: int
    counts: np.ndarray
    first_band: int
    seconds: float


class BandMerger:
    """Blends weighted window probabilities and writes each band once no later window touches it.

    A ring of ``window`` image rows holds the running sums ``sum(w * p)`` and ``sum(w)``. A
    finished band is written to ``labels`` (argmax; :data:`IGNORE` where no window or no tissue
    reached) and ``probs`` (``sum(w * p) / sum(w)`` x 255), its labels are added to ``counts``
    and ``on_band(band, counts)`` runs. Bands before ``start_band`` are taken as done: their
    rows are cleared, not written.
    """

    def __init__(self, grid: Grid, num_classes: int, labels: Any, probs: Any | None, mask: np.ndarray | None,
                 counts: np.ndarray, start_band: int = 0,
                 on_band: Callable[[int, np.ndarray], None] | None = None):
        self.grid, self.labels, self.probs, self.mask = grid, labels, probs, mask
        self.counts, self.start_band, self.on_band = counts, start_band, on_band
        self.weights = blend_weights(grid.window)
        self.ring = np.zeros((num_classes, grid.window, grid.width), dtype=np.float32)
        self.wsum = np.zeros((grid.window, grid.width), dtype=np.float32)
        self.next_band = 0

    def add(self, row: int, col: int, weighted: np.ndarray) -> None:
        """Add the ``(K, window, window)`` weighted probabilities of window ``(row, col)`` of the grid."""
        g = self.grid
        y, x0 = row * g.stride, col * g.stride
        self.finish_before(y)
        x1 = min(x0 + g.window, g.width)
        for b, local in _ring(y, min(y + g.window, g.height), g.window):
            self.ring[:, b, x0:x1] += weighted[:, local, : x1 - x0]
            self.wsum[b, x0:x1] += self.weights[local, : x1 - x0]

    def finish_before(self, row: int) -> None:
        """Write every band that ends at or before image row ``row``."""
        while self.next_band < self.grid.bands and self.grid.band_rows(self.next_band)[1] <= row:
            self._finish(self.next_band)
            self.next_band += 1

    def _finish(self, band: int) -> None:
        r0, r1 = self.grid.band_rows(band)
        pieces = _ring(r0, r1, self.grid.window)
        if band >= self.start_band:
            self._write(r0, r1, np.concatenate([self.ring[:, b] for b, _ in pieces], axis=1),
                        np.concatenate([self.wsum[b] for b, _ in pieces], axis=0))
        for b, _ in pieces:
            self.ring[:, b] = 0
            self.wsum[b] = 0
        if band >= self.start_band and self.on_band is not None:
            self.on_band(band, self.counts)

    def _write(self, r0: int, r1: int, acc: np.ndarray, ws: np.ndarray) -> None:
        valid = (ws > 0) & _scaled_mask_rows(self.mask, self.grid, r0, r1)
        lab = acc.argmax(0).astype(np.uint8)
        lab[~valid] = IGNORE
        self.labels[r0:r1, :] = lab
        if self.probs is not None:
            p = acc / np.maximum(ws, 1e-12)
            p *= 255.0
            np.rint(p, out=p)
            p[:, ~valid] = 0
            self.probs[:, r0:r1, :] = p.astype(np.uint8)
        self.counts[:] += np.bincount(lab.ravel(), minlength=256)


def predict_bands(
    predictor: PredictorLike,
    read_window: Callable[[int, int, int], np.ndarray],
    grid: Grid,
    labels: Any,
    *,
    probs: Any | None = None,
    mask: np.ndarray | None = None,
    batch_size: int = 8,
    device: torch.device | None = None,
    start_band: int = 0,
    counts: np.ndarray | None = None,
    on_band: Callable[[int, np.ndarray], None] | None = None,
    quiet: bool = True,
    desc: str = "",
) -> BandStats:
    """The engine: predict ``grid`` band by band into ``labels`` (``(H, W)`` uint8, any
    array-like supporting slice assignment, e.g. zarr) and optionally ``probs`` (``(K, H, W)``
    uint8, probability x 255).

    ``read_window(x, y, size)`` returns an ``(size, size, 3)`` uint8 window at target px.
    ``mask`` (bool, any scale) marks tissue. ``on_band(band, counts)`` runs after each band
    is written (bands before ``start_band`` are taken as done). Returns counts per label
    value (256 bins) over all bands.
    """
    t0 = time.perf_counter()
    predictor.check_window(grid.window)
    device = device or next(predictor.model.parameters()).device
    win = grid.window
    keep = window_keep(grid, mask)
    order = [(k, i) for k in range(grid.ny) for i in range(grid.nx) if keep[k, i]]
    first_row = grid.first_row_touching(start_band)
    first_batch = next((j // batch_size for j, (k, _) in enumerate(order) if k >= first_row), len(order) // batch_size)
    todo = order[first_batch * batch_size :]
    counts = np.zeros(256, dtype=np.int64) if counts is None else counts.astype(np.int64).copy()
    merger = BandMerger(grid, predictor.scheme.num_classes, labels, probs, mask, counts, start_band, on_band)
    weight = torch.from_numpy(merger.weights).to(device)
    bar = tqdm(total=len(todo), desc=desc, unit="win", disable=quiet or None, file=sys.stderr, leave=False)
    use_amp = device.type == "cuda"
    run = 0
    try:
        with torch.inference_mode(), contextlib.closing(_read_ahead(read_window, grid, todo, batch_size)) as batches:
            for batch, pixels in batches:
                x = predictor.preprocess(torch.from_numpy(pixels))
                with torch.autocast(device.type, enabled=use_amp):
                    window_probs = predictor.probabilities(x).float()
                if window_probs.shape[-2:] != (win, win):
                    window_probs = torch.nn.functional.interpolate(window_probs, size=(win, win), mode="bilinear")
                weighted = (window_probs * weight).cpu().numpy()
                for (k, i), wp in zip(batch, weighted):
                    if k >= first_row:  # earlier rows only complete a batch formed as in the first run
                        merger.add(k, i, wp)
                run += len(batch)
                bar.update(len(batch))
                area = run * grid.stride**2 / 1e6  # image area the windows stand for
                bar.set_postfix_str(f"{area / max(bar.format_dict['elapsed'], 1e-9):.2f} MP/s", refresh=False)
        merger.finish_before(grid.height + 1)
    finally:
        bar.close()
    return BandStats(grid.nx * grid.ny, len(order), run, counts, start_band, time.perf_counter() - t0)


def _read_ahead(
    read_window: Callable[[int, int, int], np.ndarray], grid: Grid, todo: Sequence[tuple[int, int]], batch_size: int
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Batches of windows read by a background thread into a bounded queue."""
    q: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        """Queue ``item`` unless the consumer has stopped; False once it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for j in range(0, len(todo), batch_size):
                batch = list(todo[j : j + batch_size])
                pixels = np.stack([read_window(i * grid.stride, k * grid.stride, grid.window) for k, i in batch])
                if not put((batch, pixels)):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=produce, name="tissueseg-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class PredictionResult:
    """One predicted image: sizes, timing, class areas and the files written.

    ``size`` is ``(width, height)`` at ``target_mpp``; ``seconds`` covers the whole call,
    ``engine_seconds`` the sliding window alone (reading, model, blending, zarr). ``scheme``
    (``ClassScheme.to_dict``) says what the label values mean; ``fingerprint`` what made them.
    """

    path: str
    out_dir: str
    size: tuple[int, int]
    level0_size: tuple[int, int]
    mpp: float
    target_mpp: float
    level: int
    windows: int
    windows_run: int
    seconds: float
    engine_seconds: float
    areas: list[dict] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    resumed_from_band: int = 0
    already_done: bool = False
    tissue_detection: bool = False
    scheme: dict = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def megapixels(self) -> float:
        return self.size[0] * self.size[1] / 1e6

    def to_dict(self) -> dict:
        return {**asdict(self), "megapixels": self.megapixels}


STORE_FILES = ("labels.zarr", "probabilities.zarr", "progress.json")


def predict_image(
    predictor: PredictorLike,
    path: str | Path,
    out_dir: str | Path,
    *,
    mpp: float | None = None,
    target_mpp: float | None = None,
    window: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 8,
    probabilities: bool = False,
    tissue: bool | Literal["auto"] = "auto",
    device: str | torch.device = "auto",
    overwrite: bool = False,
    quiet: bool = False,
    on_band: Callable[[int, np.ndarray], None] | None = None,
) -> PredictionResult:
    """Predict one region or slide into ``out_dir/<stem>/`` (see :mod:`tissueseg.export`).

    ``mpp`` overrides the input's µm/px (needed when the file has none); ``target_mpp`` is the
    resolution to predict at (default: the model's). ``tissue``: predict only on detected
    tissue (:func:`~tissueseg.slide.tissue_mask`); ``"auto"`` does so for whole-slide images
    (pyramids, or one level above ``REGION_PNG_MAX`` px) and predicts every pixel of regions.

    Rerun (:mod:`tissueseg.fingerprint`): the output records a fingerprint of the input file,
    the model's weights and scheme, and these arguments (``batch_size``, ``device`` and
    ``quiet`` aside). A finished output with the same fingerprint is returned as it is
    (``already_done``); one with another is replaced only with ``overwrite``
    (:class:`~tissueseg.fingerprint.StaleOutput` otherwise); an interrupted one resumes from
    its first unfinished band when the fingerprint matches and starts over when not.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise io.InputError(path, "no such file")
    dest = Path(out_dir) / path.stem
    summary_path = dest / "summary.json"
    dev = resolve_device(device)
    predictor.to(dev)
    stamp = _fingerprint(path, predictor, mpp=mpp, target_mpp=target_mpp, window=window, overlap=overlap,
                         tissue=tissue, probabilities=probabilities)
    if fingerprint.reuse(summary_path, stamp, overwrite):
        return _kept_result(summary_path)
    if overwrite:
        _remove_outputs(dest)
    scheme = predictor.scheme
    with open_image(path, mpp) as reader:
        base_mpp = require_mpp(reader)
        t_mpp = float(target_mpp or predictor.mpp)
        level, _ = plan_read(reader, t_mpp)
        width, height = target_size(reader, t_mpp)
        win = int(window or predictor.patch_size)
        is_region = _is_region(reader)
        detect = not is_region if tissue == "auto" else bool(tissue)
        grid = make_grid(width, height, win, overlap)
        thumb = reader.thumbnail(min(THUMB_MAX, max(reader.dimensions)))
        mask = tissue_mask(thumb, base_mpp * reader.dimensions[0] / thumb.shape[1]) if detect else None
        dest.mkdir(parents=True, exist_ok=True)
        labels, probs, start, counts = _open_stores(dest, grid, scheme.num_classes, probabilities, stamp)
        stats = predict_bands(
            predictor, partial(_read_window, reader, t_mpp), grid, labels, probs=probs, mask=mask,
            batch_size=batch_size, device=dev, start_band=start, counts=counts,
            on_band=partial(_record_progress, dest / "progress.json", stamp, grid.bands, on_band), quiet=quiet,
            desc=path.name,
        )
        outputs = export.write_outputs(
            dest, labels, probs, scheme=scheme, mpp=t_mpp, level0_scale=t_mpp / base_mpp, counts=stats.counts,
            thumbnail=thumb, tissue=mask, region_size=reader.dimensions if is_region else None,
        )
    result = PredictionResult(
        str(path), str(dest), (width, height), tuple(reader.dimensions), base_mpp, t_mpp, level,
        stats.windows_kept, stats.windows_run, time.perf_counter() - t0, stats.seconds, export.class_areas(stats.counts, scheme, t_mpp),
        outputs, start, tissue_detection=detect, scheme=scheme.to_dict(), fingerprint=stamp,
    )
    io.write_json(summary_path, result.to_dict())
    return result


def _record_progress(path: Path, stamp: str, bands: int, on_band: Callable[[int, np.ndarray], None] | None,
                     band: int, counts: np.ndarray) -> None:
    """After a band: write ``progress.json`` (what a resumed run starts from), then call ``on_band``."""
    io.write_json(path, {"fingerprint": stamp, "bands_done": band + 1, "bands": bands, "counts": counts.tolist()})
    if on_band is not None:
        on_band(band, counts)


def _kept_result(summary_path: Path) -> PredictionResult:
    """The result of a finished prediction, read back from its ``summary.json``."""
    data = json.loads(summary_path.read_text())
    data.pop("megapixels", None)
    return PredictionResult(**{**data, "size": tuple(data["size"]), "level0_size": tuple(data["level0_size"]),
                               "already_done": True})


def _remove_outputs(dest: Path) -> None:
    """Delete what a prediction wrote into ``dest`` (stores, summary, probability TIFF)."""
    for name in (*STORE_FILES, "summary.json", "probabilities.tiff"):
        p = dest / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _is_region(reader: SlideReader) -> bool:
    """A region, not a whole-slide image: one level of at most ``REGION_PNG_MAX`` px."""
    return reader.level_count == 1 and reader.dimensions[0] * reader.dimensions[1] <= REGION_PNG_MAX


def _read_window(reader: SlideReader, target_mpp: float, x: int, y: int, size: int) -> np.ndarray:
    return read_at(reader, x, y, size, size, target_mpp)


def _fingerprint(path: Path, predictor: PredictorLike, **params: Any) -> str:
    """What a prediction is made from: the input file, the model (:meth:`Predictor.fingerprint`:
    weights, scheme, preprocessing, test-time additions) and the arguments that shape the output."""
    return fingerprint.key(fingerprint.file_stamp(path), predictor.fingerprint(), params)


def _open_stores(dest: Path, grid: Grid, num_classes: int, probabilities: bool,
                 stamp: str) -> tuple[Any, Any | None, int, np.ndarray | None]:
    """The zarr stores and the band to start from (0 unless ``progress.json`` matches)."""
    import zarr

    progress = dest / "progress.json"
    try:
        state = json.loads(progress.read_text()) if progress.exists() else None
    except ValueError:
        state = None
    chunks = (grid.stride, min(grid.width, CHUNK_WIDTH))
    if state and state.get("fingerprint") == stamp:
        labels = zarr.open_array(dest / "labels.zarr", mode="r+")
        probs = zarr.open_array(dest / "probabilities.zarr", mode="r+") if probabilities else None
        return labels, probs, int(state["bands_done"]), np.asarray(state["counts"], dtype=np.int64)
    progress.unlink(missing_ok=True)
    labels = zarr.create_array(dest / "labels.zarr", shape=(grid.height, grid.width), chunks=chunks, dtype="uint8",
                               fill_value=IGNORE, overwrite=True)
    probs = None
    if probabilities:
        probs = zarr.create_array(dest / "probabilities.zarr", shape=(num_classes, grid.height, grid.width),
                                  chunks=(1, *chunks), dtype="uint8", fill_value=0, overwrite=True)
    return labels, probs, 0, None


def predict_files(
    model: PredictorLike | str | Path,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    device: str | torch.device = "auto",
    scheme: ClassScheme | None = None,
    changes: InferenceChanges | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> BatchResult[PredictionResult]:
    """:func:`predict_image` on every input; bad inputs are skipped and reported.

    Inputs whose outputs would share a folder (one file stem) are refused before any work.
    ``model`` is a checkpoint path or a loaded predictor. With ``workers > 1`` or a Dask
    ``scheduler`` it must be a path: the tasks carry the path, never the weights, and each
    worker process loads the model once (on ``device``) for all its inputs; this process
    loads nothing onto a device. ``scheme`` gives the outputs other class names and
    colours (same number of classes as the model). ``changes``: what to change of the
    checkpoint's flip TTA and class gate (:class:`~tissueseg.checkpoint.InferenceChanges`;
    ``model`` must then be a path).
    """
    if changes is not None and not isinstance(model, (str, Path)):
        raise ValueError("changes to the inference need the checkpoint path, not a loaded model")
    fingerprint.unique_stems(paths)
    pool = workers > 1 or scheduler is not None
    settings = dict(out_dir=out, device=device, quiet=quiet or pool, **kwargs)
    if pool:
        if not isinstance(model, (str, Path)):
            raise ValueError("predicting with several workers needs the checkpoint path, not a loaded model")
        from .checkpoint import checkpoint_inference, read_checkpoint

        data = read_checkpoint(model)  # what the checkpoint cannot take fails once, here
        _check_scheme(scheme, scheme_from_dict(data["scheme"]).num_classes)
        checkpoint_inference(model, data, changes)
        fn: Callable[[Path], PredictionResult] = partial(
            _predict_in_worker, str(Path(model).resolve()), scheme=scheme, changes=changes, **settings)
    else:
        if isinstance(model, (str, Path)):
            from .checkpoint import load_predictor

            model = load_predictor(model, resolve_device(device), changes)
        fn = partial(predict_image, _with_scheme(model, scheme), **settings)
    io.check_output_dir(out)
    return run_batch(fn, [Path(p) for p in paths], workers=workers, scheduler=scheduler, desc="predict",
                     quiet=quiet or len(paths) < 2)


def _check_scheme(scheme: ClassScheme | None, num_classes: int) -> None:
    if scheme is not None and scheme.num_classes != num_classes:
        raise ValueError(f"scheme {scheme.name!r} has {scheme.num_classes} classes, the model {num_classes}")


def _with_scheme(predictor: PredictorLike, scheme: ClassScheme | None) -> PredictorLike:
    """``predictor`` with ``scheme``'s names and colours (a shallow copy: the model is shared)."""
    if scheme is None:
        return predictor
    _check_scheme(scheme, predictor.scheme.num_classes)
    renamed = copy.copy(predictor)
    renamed.scheme = scheme
    return renamed


@lru_cache(maxsize=1)
def _worker_predictor(checkpoint: str, mtime_ns: int, device: str, changes: InferenceChanges | None) -> PredictorLike:
    """The model of a worker process, loaded on its first input and kept for the next ones."""
    from .checkpoint import load_predictor

    predictor = load_predictor(checkpoint, resolve_device(device), changes)
    log.debug("loaded %s on %s in process %d", checkpoint, device, os.getpid())
    return predictor


def _predict_in_worker(checkpoint: str, path: Path, *, device: str | torch.device, scheme: ClassScheme | None,
                       changes: InferenceChanges | None, **kwargs: Any) -> PredictionResult:
    predictor = _worker_predictor(checkpoint, Path(checkpoint).stat().st_mtime_ns, str(device), changes)
    return predict_image(_with_scheme(predictor, scheme), path, device=device, **kwargs)
