"""Reading images and masks, and writing files atomically.

Every reader raises :class:`InputError` with a one-line message that names the file and
the problem; batch jobs catch it, report the file as skipped and go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PNG_COMPRESS_LEVEL = 1  # 3x faster than the default for +3% size
MAX_PIXELS = 2**32
"""Largest image our readers decode (PIL's own guard stops at 179 Mpx; BCSS regions can be larger)."""

log = logging.getLogger(__name__)
_pil_guard_lock = threading.Lock()
_pil_guard_users = 0
_pil_guard_saved: int | None = None


class InputError(Exception):
    """Bad input: ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@contextlib.contextmanager
def _huge_images_allowed() -> Iterator[None]:
    """Lift PIL's decompression-bomb guard for our own reads only (:data:`MAX_PIXELS` applies).

    PIL reads its limit from a module global; it is lifted while at least one of our reads
    runs and restored when the last one ends, so other code keeps PIL's guard.
    """
    global _pil_guard_users, _pil_guard_saved
    with _pil_guard_lock:
        if _pil_guard_users == 0:
            _pil_guard_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_guard_users += 1
    try:
        yield
    finally:
        with _pil_guard_lock:
            _pil_guard_users -= 1
            if _pil_guard_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_guard_saved


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise InputError(path, f"{size[0]}x{size[1]} px is more than tissueseg reads ({MAX_PIXELS} px); "
                               "convert it to a tiled pyramidal TIFF")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        with _huge_images_allowed():
            img = Image.open(path)
            _check_pixels(path, img.size)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"cannot decode image ({exc.__class__.__name__}: {exc})") from None
    return img


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image (RGBA, greyscale, palette, 16-bit) to an ``(H, W, 3)`` uint8 array.

    Transparent pixels are composited on white (glass); 16-bit data is scaled to 8 bit.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def read_image(path: str | Path) -> np.ndarray:
    """An H&E image as ``(H, W, 3)`` uint8 RGB; a warning (logging) names a file that is not
    plain RGB (alpha, 16-bit, palette, ... converted) or is greyscale."""
    path = Path(path)
    img = _open(path)
    arr = to_rgb(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(path, f"expected an RGB image, got shape {arr.shape}")
    problems = [] if img.mode == "RGB" else [f"mode {img.mode} converted to RGB"]
    if _greyscale(arr):
        problems.append("greyscale (all three channels equal)")
    if problems:
        log.warning("%s: read as H&E but %s", path, "; ".join(problems))
    return arr


def _greyscale(rgb: np.ndarray, rows: int = 1024) -> bool:
    """All three channels equal (a sparse look first: H&E fails it at once)."""
    def equal(a: np.ndarray) -> bool:
        return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())

    return equal(rgb[::16, ::16]) and all(equal(rgb[y : y + rows]) for y in range(0, rgb.shape[0], rows))


def read_mask(path: str | Path) -> np.ndarray:
    """A label mask of integer codes as ``(H, W)`` uint8.

    Accepts 8-bit greyscale (``L``), palette (``P``: the palette indices are the codes) and
    16-bit masks whose values fit in 0..255. RGB masks are refused: colours are not codes.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("L", "P"):
        return np.asarray(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError(path, f"mask values {arr.min()}..{arr.max()} do not fit 0..255")
        return arr.astype(np.uint8)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    raise InputError(path, f"mask must be single-channel (L, P or 16-bit), got mode {img.mode}")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the header only."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        with _huge_images_allowed(), Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"cannot read image header ({exc})") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On any error (Ctrl-C included) the temporary file is removed, so no half-written
    output is ever left under the final name. The file gets the mode a plain ``open``
    would give (``0o666`` less the umask), so colleagues on a shared disk can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _new_temp(path: Path) -> Path:
    """Create an empty, unique ``.<name>.<random>.part<suffix>`` next to ``path`` (mode 0o666 & ~umask)."""
    suffix = ".part" + "".join(path.suffixes[-1:])
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_png(path: str | Path, img: np.ndarray | Image.Image, palette: list[int] | None = None,
              text: Mapping[str, str] | None = None) -> Path:
    """Write a PNG atomically (see :func:`encode_png`); ``text`` goes into PNG text chunks
    (read back with :func:`png_text`)."""
    try:
        data = encode_png(img, palette, text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def encode_png(img: np.ndarray | Image.Image, palette: list[int] | None = None,
               text: Mapping[str, str] | None = None) -> bytes:
    """PNG bytes at the fast compression level. ``palette`` makes a mode-P image of a
    single-channel uint8 label map; ``text`` adds PNG text chunks.

    uint8 arrays (and L, RGB, RGBA images) go through OpenCV, whose encoder releases the GIL
    (threads encode in parallel): one channel is taken for labels (no filter, run-length
    matches), three or four for photographs (average filter, Huffman coding only: 3x faster
    than PIL's adaptive filtering and no larger). Palette images, images with text and other
    images go through PIL.
    """
    from PIL.PngImagePlugin import PngInfo

    arrays = ("L", "P") if palette is not None else ("L", "RGB", "RGBA")  # a P image keeps its palette
    arr = np.asarray(img) if isinstance(img, Image.Image) and img.mode in arrays else img
    is_uint8 = isinstance(arr, np.ndarray) and arr.dtype == np.uint8
    if palette is not None:
        if not (is_uint8 and arr.ndim == 2):
            raise ValueError("a palette PNG needs a single-channel uint8 label map")
        pil = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
        pil.putpalette(palette)
    elif not text and is_uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        return _encode_cv2(arr)
    else:
        pil = img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = BytesIO()
    pil.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
    return buf.getvalue()


def _encode_cv2(arr: np.ndarray) -> bytes:
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESS_LEVEL]
    if arr.ndim == 2:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
                   cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        if arr.strides[1] != 1:
            arr = np.ascontiguousarray(arr)
    else:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG,
                   cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
        if arr.strides[2] != 1 or arr.strides[1] != arr.shape[2]:
            arr = np.ascontiguousarray(arr)
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", arr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.shape} {arr.dtype} image as PNG")
    return buf.tobytes()


def png_text(path: str | Path) -> dict[str, str]:
    """The text chunks before a PNG's pixel data, where :func:`write_png` puts them (the
    pixels are not decoded); {} for other image formats."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                return {}
            return {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"cannot read image header ({exc})") from None


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: object) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def list_images(inputs: Iterable[str | Path], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Files given directly, plus image files inside given folders (sorted, not recursive).

    Raises :class:`InputError` for a path that does not exist or a folder with no images.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise InputError(p, f"folder holds no image files ({', '.join(suffixes)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(p, "no such file or folder")
    return files


def check_output_dir(out: str | Path) -> Path:
    """Create ``out`` and check that it is writable (one clear error otherwise)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tissueseg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(out, f"output folder is not writable ({exc.strerror or exc})") from None
    return out
