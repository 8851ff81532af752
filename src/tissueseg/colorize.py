"""Label maps to pictures: palette PNGs, overlays on the H&E image, and a legend.

Palette PNGs hold the class indices themselves (class ``i`` at palette index ``i``, ignore
at :data:`~tissueseg.schemes.IGNORE`), so they are both a picture and a lossless label map.
Those written by :func:`write_label_png` also record their class scheme (a PNG text chunk,
:data:`SCHEME_KEY`), which ``evaluate`` reads back with :func:`recorded_scheme`.
"""

from __future__ import annotations

import functools
import io as _bytesio
import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import fingerprint, io
from .batch import BatchResult, run_batch
from .schemes import IGNORE, ClassScheme, scheme_from_dict

SCHEME_KEY = "tissueseg-scheme"
"""PNG text chunk with the class scheme of a label map (JSON of ``ClassScheme.to_dict``)."""


def _check_labels(labels: np.ndarray, scheme: ClassScheme) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a (H, W) uint8 class map, got {labels.dtype} {labels.shape}")
    bad = (labels >= scheme.num_classes) & (labels != IGNORE)
    if bad.any():
        raise ValueError(f"class indices {np.unique(labels[bad]).tolist()} are not in scheme {scheme.name!r}")


def colorize(labels: np.ndarray, scheme: ClassScheme) -> Image.Image:
    """A mode-P image of ``labels`` (class indices, 255 = ignore) in the scheme's colours."""
    _check_labels(labels, scheme)
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    img.putpalette(scheme.palette())
    return img


def write_label_png(path: str | Path, labels: np.ndarray, scheme: ClassScheme, stamp: str | None = None) -> Path:
    """The palette PNG of ``labels`` with its scheme recorded (and ``stamp``, an output fingerprint)."""
    text = {SCHEME_KEY: json.dumps(scheme.to_dict(), separators=(",", ":"))}
    if stamp is not None:
        text[fingerprint.PNG_KEY] = stamp
    return io.write_png(path, colorize(labels, scheme), text=text)


def recorded_scheme(path: str | Path) -> ClassScheme | None:
    """The scheme a label-map PNG records (None when it records none)."""
    text = io.png_text(path).get(SCHEME_KEY)
    if text is None:
        return None
    try:
        return scheme_from_dict(json.loads(text), source=str(path))
    except ValueError as exc:
        raise io.InputError(path, f"unreadable scheme record ({exc})") from None


def overlay(rgb: np.ndarray, labels: np.ndarray, scheme: ClassScheme, alpha: float = 0.4) -> np.ndarray:
    """``(1 - alpha) * rgb + alpha * colour`` rounded to uint8; ignore pixels keep the image."""
    _check_labels(labels, scheme)
    if rgb.shape != (*labels.shape, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"image {rgb.dtype} {rgb.shape} does not match labels {labels.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: scheme.num_classes] = scheme.colors
    blended = cv2.addWeighted(rgb, 1.0 - alpha, lut[labels], alpha, 0.0)
    ignored = labels == IGNORE
    blended[ignored] = rgb[ignored]
    return blended


def legend(scheme: ClassScheme, present: Sequence[int] | None = None) -> Image.Image:
    """Swatches and names of the ``present`` classes (all when None), then the ignore entry."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    indices = range(scheme.num_classes) if present is None else sorted(set(int(i) for i in present))
    for i in indices:
        if not 0 <= i < scheme.num_classes:
            raise ValueError(f"class index {i} is not in scheme {scheme.name!r}")
    entries = [(scheme.names[i], scheme.classes[i].color) for i in indices]
    entries.append((f"{scheme.ignore_name} (ignored)", scheme.ignore_color))
    fig = Figure(figsize=(3.6, 0.3 * len(entries) + 0.5), dpi=100)
    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="0.5", linewidth=0.8, label=n) for n, c in entries]
    fig.legend(handles=handles, loc="center", frameon=False, title=f"scheme {scheme.name}",
               handlelength=2.5, handleheight=1.2, fontsize=10)
    buf = _bytesio.BytesIO()
    fig.savefig(buf, format="png", facecolor="white", bbox_inches="tight", pad_inches=0.1)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _pair_images(masks: list[Path], images: Path) -> dict[str, Path]:
    """Image files in ``images`` by stem (any image suffix); two images for one mask are refused."""
    if not images.is_dir():
        raise io.InputError(images, "images folder does not exist")
    wanted = {m.stem for m in masks}
    found = [f for f in sorted(images.iterdir())
             if f.is_file() and f.suffix.lower() in io.IMAGE_SUFFIXES and f.stem in wanted]
    fingerprint.unique_stems(found, "images")
    return {f.stem: f for f in found}


def _colorize_one(
    mask_path: Path, *, out: Path, scheme: ClassScheme, images: dict[str, Path] | None, alpha: float,
    overwrite: bool,
) -> dict:
    """Palette PNG (and overlay) of one mask; all checks happen before anything is written.

    Each output records a fingerprint of its files and parameters (:mod:`tissueseg.fingerprint`).
    """
    try:
        labels = scheme.apply(io.read_mask(mask_path))
    except ValueError as exc:
        raise io.InputError(mask_path, str(exc)) from None
    mask_stamp = fingerprint.file_stamp(mask_path)
    palette_out, overlay_out = out / f"{mask_path.stem}.png", None
    targets = {palette_out: fingerprint.key(mask_stamp, scheme.to_dict())}
    if images is not None:
        image_path = images.get(mask_path.stem)
        if image_path is None:
            raise io.InputError(mask_path, "no image with the same stem in the images folder")
        overlay_out = out / f"{mask_path.stem}_overlay.png"
        targets[overlay_out] = fingerprint.key(mask_stamp, fingerprint.file_stamp(image_path), scheme.to_dict(), alpha)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[: scheme.num_classes]).tolist()
    todo = {t: stamp for t, stamp in targets.items() if not fingerprint.reuse(t, stamp, overwrite)}
    if overlay_out in todo:
        (width, height) = io.image_size(image_path)
        if (height, width) != labels.shape:
            raise io.InputError(mask_path, f"mask is {labels.shape[1]}x{labels.shape[0]} but image "
                                           f"{image_path.name} is {width}x{height}")
        rgb = io.read_image(image_path)
    if palette_out in todo:
        write_label_png(palette_out, labels, scheme, todo[palette_out])
    if overlay_out in todo:
        io.write_png(overlay_out, overlay(rgb, labels, scheme, alpha), text={fingerprint.PNG_KEY: todo[overlay_out]})
    return {"mask": str(mask_path), "outputs": [str(t) for t in targets], "written": len(todo), "present": present}


def colorize_files(
    masks: Sequence[str | Path],
    out: str | Path,
    scheme: ClassScheme,
    images: Path | None = None,
    alpha: float = 0.4,
    workers: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    legend_all: bool = False,
) -> BatchResult[dict]:
    """Write ``out/<stem>.png`` (palette, scheme recorded) per mask, ``<stem>_overlay.png`` with
    ``images``, and ``out/legend.png``.

    ``masks`` are files or folders; two masks with one stem are refused. Images pair with
    masks by file stem (any suffix). Bad masks (unreadable, codes outside the scheme, size
    mismatch, no image) are skipped with a reason. Outputs made from the same files and
    parameters are kept, others are replaced only with ``overwrite`` (skipped with a reason
    otherwise: :mod:`tissueseg.fingerprint`). The legend (classes present in the batch, or
    all with ``legend_all``) is rewritten on every run that colorized something.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be in 0..1, got {alpha}")
    files = io.list_images(masks)
    fingerprint.unique_stems(files, "masks")
    if any(f.parent.resolve() == Path(out).resolve() for f in files):
        raise ValueError(f"{out}: the output folder holds input masks; choose another --out")
    out = io.check_output_dir(out)
    paired = _pair_images(files, Path(images)) if images is not None else None
    fn = functools.partial(_colorize_one, out=out, scheme=scheme, images=paired, alpha=alpha, overwrite=overwrite)
    result = run_batch(fn, files, workers=workers, scheduler=scheduler, desc="colorize", quiet=quiet)
    if result.results:
        present = None if legend_all else sorted({i for r in result.ok for i in r["present"]})
        io.write_png(out / "legend.png", legend(scheme, present))
    return result
