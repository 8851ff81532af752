"""Writers: generated regions in the BCSS folder layout, and pyramidal tiled TIFF slides."""

from __future__ import annotations

import functools
import json
import math
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..batch import run_batch
from ..io import InputError, atomic_path, read_mask, write_json, write_png
from .composite import DEFAULT_TEXTURES, TextureBank, composite_he, resolve_textures
from .fields import Window
from .layouts import LAYOUT_STEP, codes_from_fields, layout_from_mask, random_layout, slide_fields
from .stain import draw_stain
from .textures import MARGIN_UM, render_he, render_window

TRAIN_SITES = ("A1", "A2", "AR", "BH", "C8", "D8", "E9")
TEST_SITES = ("OL", "LL", "E2", "EW", "GM", "S3")
"""BCSS training sites and the held-out test sites of the ``bcss-sites`` split."""


def make_region(shape: tuple[int, int], seed: int, layout: np.ndarray | None = None,
                codes: Sequence[int] = (1, 2, 3, 4, 9), textures: str | Path | TextureBank | None = DEFAULT_TEXTURES
                ) -> tuple[np.ndarray, np.ndarray]:
    """A generated H&E region and its code mask: ``(rgb (H, W, 3), codes (H, W))``.

    Without ``layout`` a :func:`random_layout` of ``codes`` is drawn; a given layout must
    have ``shape`` and is rendered as it is (codes with stand-ins keep their code).
    ``textures``: ``"builtin"`` (real H&E crops where the packaged bank has the class,
    :func:`~tissueseg.synth.composite.composite_he`), ``"none"`` (procedural only,
    :func:`render_he`), a texture bank folder or a loaded :class:`TextureBank`.
    """
    bank = resolve_textures(textures)
    if layout is None:
        layout = random_layout(shape, seed, codes)
    layout = np.asarray(layout)
    if tuple(layout.shape) != (int(shape[0]), int(shape[1])):
        raise ValueError(f"layout shape {layout.shape} does not match shape {tuple(shape)}")
    rgb = render_he(layout, seed) if bank is None else composite_he(layout, seed, bank)
    return rgb, layout.astype(np.uint8)


def region_name(seed: int, index: int) -> str:
    """BCSS-style region name; every third region (from the third) is on a held-out test site."""
    rng = random.Random(f"tissueseg-synth-{seed}-{index}")
    if index % 3 == 2:
        site = TEST_SITES[(index // 3) % len(TEST_SITES)]
    else:
        site = TRAIN_SITES[(index - index // 3) % len(TRAIN_SITES)]
    patient = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(4))
    return f"TCGA-{site}-{patient}-DX1_xmin{rng.randrange(10_000, 120_000)}_ymin{rng.randrange(10_000, 90_000)}_MPP-0.2500"


def region_seed(seed: int, index: int) -> int:
    """The seed region ``index`` of a dataset of seed ``seed`` is rendered with."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _write_region(index: int, out: Path, size: tuple[int, int], seed: int, layouts: tuple[Path, ...],
                  textures: str, overwrite: bool) -> tuple[Path, Path]:
    name = region_name(seed, index)
    rgb_path = out / "rgbs_colorNormalized" / f"{name}.png"
    mask_path = out / "masks" / f"{name}.png"
    if not overwrite and rgb_path.exists() and mask_path.exists():
        return rgb_path, mask_path
    rseed = region_seed(seed, index)
    if layouts:
        real = read_mask(layouts[index % len(layouts)])
        crop = (min(size[0], real.shape[0]), min(size[1], real.shape[1]))
        try:
            layout = layout_from_mask(real, crop, rseed)
        except ValueError as exc:
            raise InputError(layouts[index % len(layouts)], str(exc)) from None
        rgb, mask = make_region(crop, rseed, layout, textures=textures)
    else:
        rgb, mask = make_region(size, rseed, textures=textures)
    write_png(rgb_path, rgb)
    write_png(mask_path, mask)
    return rgb_path, mask_path


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """Record ``settings`` in ``out/synth.json``; other recorded ones raise unless ``overwrite``."""
    record = out / "synth.json"
    if record.is_file() and not overwrite:
        old = json.loads(record.read_text())
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out}: regions there were generated with other {', '.join(changed)} "
                             f"({', '.join(f'{k}={old.get(k)}' for k in changed)}); use overwrite or another folder")
    write_json(record, settings)


def make_dataset(out: Path, n: int = 8, size: int | tuple[int, int] = 1024, seed: int = 0,
                 layouts: Sequence[Path] | None = None, textures: str | Path = DEFAULT_TEXTURES,
                 overwrite: bool = False, workers: int = 1, quiet: bool = False) -> list[tuple[Path, Path]]:
    """Write ``n`` generated regions in the BCSS layout (``out/rgbs_colorNormalized/*.png``,
    ``out/masks/*.png`` with codes) and return the ``(rgb, mask)`` paths.

    ``size`` is ``H`` (square) or ``(H, W)``. With ``layouts`` (real mask files) the
    layouts are seeded crops of those masks, cycled (the whole mask when smaller).
    ``textures`` as in :func:`make_region` (``"builtin"``, ``"none"`` or a bank folder).
    Finished pairs are kept on a rerun unless ``overwrite``; ``out/synth.json`` records the
    settings that change the pixels of a region (size, layouts, textures), and a rerun with
    other ones raises ``ValueError`` unless ``overwrite``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if min(hw) < 16:
        raise ValueError(f"size must be at least 16 px, got {hw}")
    layout_files = tuple(Path(p) for p in (layouts or ()))
    for p in layout_files:
        if not p.is_file():
            raise InputError(p, "no such mask file")
    texture_key = str(textures) if str(textures) in ("builtin", "none") else str(Path(textures).resolve())
    resolve_textures(texture_key)  # a bad bank fails here, once
    out = Path(out)
    _check_settings(out, {"size": list(hw), "layouts": [str(p.resolve()) for p in layout_files],
                          "textures": texture_key}, overwrite)
    fn = functools.partial(_write_region, out=out, size=hw, seed=seed, layouts=layout_files, textures=texture_key,
                           overwrite=overwrite)
    result = run_batch(fn, list(range(n)), workers=workers, desc="synth regions", quiet=quiet)
    if result.skipped:
        raise InputError(out, "; ".join(reason for _, reason in result.skipped))
    return result.ok


def _pyramid(shape: tuple[int, int]) -> list[tuple[int, int]]:
    levels = [(int(shape[0]), int(shape[1]))]
    while max(levels[-1]) > 1024:
        levels.append(tuple(math.ceil(v / 2) for v in levels[-1]))
    return levels


def make_slide(path: Path, shape: tuple[int, int], seed: int, mpp: float = 0.5, tile: int = 512,
               codes: Sequence[int] = (1, 2, 3, 4, 9), mask_downsample: int = 16, quiet: bool = True
               ) -> np.ndarray:
    """Write a generated pyramidal tiled TIFF (JPEG tiles, levels as a page chain, µm/px in
    the resolution tags) and return its codes mask at ``1/mask_downsample`` (also written
    as ``<stem>_mask.png``).

    Memory stays bounded: each level is rendered tile by tile straight from the low-res
    layout (textures are functions of position in µm, so levels agree and tiles join).
    ``shape`` is ``(H, W)`` of level 0.
    """
    import tifffile

    path = Path(path)
    h, w = int(shape[0]), int(shape[1])
    if h < 64 or w < 64:
        raise ValueError(f"slide shape must be at least 64x64, got {shape}")
    if tile % 16 or tile < 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if mpp <= 0 or mask_downsample < 1:
        raise ValueError("mpp and mask_downsample must be positive")
    fields, labels = slide_fields((h, w), seed, [int(c) for c in codes], LAYOUT_STEP)
    st = draw_stain(seed)
    levels = _pyramid((h, w))
    ds = int(mask_downsample)
    mask = np.zeros((math.ceil(h / ds), math.ceil(w / ds)), np.uint8)
    mask_y = np.minimum(np.arange(mask.shape[0]) * ds + ds // 2, h - 1)  # block centres (edge-clamped)
    mask_x = np.minimum(np.arange(mask.shape[1]) * ds + ds // 2, w - 1)
    n_tiles = sum(math.ceil(lh / tile) * math.ceil(lw / tile) for lh, lw in levels)
    bar = tqdm(total=n_tiles, desc=f"synth slide {path.name}", disable=quiet or None, file=sys.stderr, unit="tile")

    def tiles(k: int) -> Iterator[np.ndarray]:
        lh, lw = levels[k]
        f = 2**k
        lmpp = mpp * f
        margin = math.ceil(MARGIN_UM / lmpp)
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                x0, y0 = max(tx - margin, 0), max(ty - margin, 0)
                x1, y1 = min(tx + tile + margin, lw), min(ty + tile + margin, lh)
                codes_win = codes_from_fields(fields, labels, LAYOUT_STEP / f, x0, y0, x1 - x0, y1 - y0)
                rgb = render_window(codes_win, Window(x0, y0, x1 - x0, y1 - y0, lmpp), st)
                core = rgb[ty - y0 : ty - y0 + tile, tx - x0 : tx - x0 + tile]
                if k == 0:  # ground truth: the code at the centre of every ds x ds block
                    gy = np.flatnonzero((mask_y >= ty) & (mask_y < ty + tile))
                    gx = np.flatnonzero((mask_x >= tx) & (mask_x < tx + tile))
                    mask[np.ix_(gy, gx)] = codes_win[np.ix_(mask_y[gy] - y0, mask_x[gx] - x0)]
                out = np.full((tile, tile, 3), 255, np.uint8)
                out[: core.shape[0], : core.shape[1]] = core
                bar.update()
                yield out

    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=h * w * 3 > 2**31) as tif:
            for k, (lh, lw) in enumerate(levels):
                res = 1e4 / (mpp * 2**k)
                tif.write(tiles(k), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                          compression="jpeg", compressionargs={"level": 90}, resolution=(res, res),
                          resolutionunit="CENTIMETER", subfiletype=1 if k else 0, metadata=None)
    finally:
        bar.close()
    write_png(path.with_name(f"{path.stem}_mask.png"), mask)
    return mask
