"""Tiling speed: tile_dataset (manifest only, with patch files) vs a naive per-patch loop.

Run: python bench/tile.py [--size 256] [--stride 128] [--regions 4]
Regions are generated H&E (tissueseg.synth) laid out like the real BCSS masks in
../shared/data/bcss/masks (random 2756x4196 layouts when absent). The naive loop crops
each patch, counts it with np.bincount and writes image, mask and palette PNGs at PIL's
default compression. One process each, same inputs; patches/s from wall time (cpu s is the
process's own CPU time, steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tissueseg import io, synth
from tissueseg.manifest import find_dataset, pair_files, tile_dataset
from tissueseg.schemes import bcss22
from tissueseg.tiling import grid

MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bcss" / "masks"


def make_regions(root: Path, n: int) -> None:
    """``n`` generated H&E regions (synth), laid out like the real BCSS masks when present."""
    masks = sorted(MASKS.glob("*.png"))[:n] if MASKS.is_dir() else []
    for i in range(n):
        layout = synth.layout_from_mask(io.read_mask(masks[i])) if i < len(masks) else None
        shape = layout.shape if layout is not None else (4196, 2756)
        stem = masks[i].stem if i < len(masks) else f"TCGA-ZZ-{i:04d}-DX1_xmin0_ymin0_MPP-0.2500"
        rgb, codes = synth.make_region(shape, seed=i, layout=layout)
        io.write_png(root / "rgbs_colorNormalized" / f"{stem}.png", rgb)
        io.write_png(root / "masks" / f"{stem}.png", codes)


def naive(pairs, out: Path, scheme, size: int, stride: int) -> int:
    n = 0
    for image_path, mask_path in pairs:
        image, labels = io.read_image(image_path), scheme.apply(io.read_mask(mask_path))
        for x, y in grid(labels.shape, size, stride).tolist():
            crop = labels[y : y + size, x : x + size]
            counts = np.bincount(crop.ravel(), minlength=256)
            if counts[: scheme.num_classes].sum() / crop.size < 0.5:
                continue
            name = f"{image_path.stem}_x{x}_y{y}.png"
            Image.fromarray(image[y : y + size, x : x + size]).save(out / "images" / name)
            Image.fromarray(crop).save(out / "masks" / name)
            palette = Image.fromarray(crop).convert("P")
            palette.putpalette(scheme.palette())
            palette.save(out / "palette" / name)
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--regions", type=int, default=4)
    args = parser.parse_args()
    scheme = bcss22()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_regions(root / "data", args.regions)
        pairs, _, _ = pair_files(*find_dataset(root / "data"))
        mpx = sum(np.prod(io.image_size(i)) for i, _ in pairs) / 1e6
        print(f"{len(pairs)} regions, {mpx:.1f} Mpx, patches {args.size}/{args.stride}, 1 process")
        print(f"{'method':<42}{'patches':>9}{'wall s':>9}{'cpu s':>8}{'patches/s':>11}")
        runs = {
            "tile_dataset, manifest only": lambda: tile_dataset(
                pairs, root / "a", scheme, args.size, args.stride, quiet=True).patches,
            "tile_dataset, + patch files (3 PNG each)": lambda: tile_dataset(
                pairs, root / "b", scheme, args.size, args.stride, patches=True, quiet=True).patches,
            "naive loop: bincount + 3 PNG, default zlib": lambda: naive(pairs, _dirs(root / "c"), scheme,
                                                                         args.size, args.stride),
        }
        for label, fn in runs.items():
            start, cpu = time.perf_counter(), time.process_time()
            n = fn()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(f"{label:<42}{n:>9}{seconds:>9.2f}{cpu:>8.2f}{n / seconds:>11.0f}")
            for d in ("a", "b", "c"):
                shutil.rmtree(root / d, ignore_errors=True)


def _dirs(out: Path) -> Path:
    for d in ("images", "masks", "palette"):
        (out / d).mkdir(parents=True, exist_ok=True)
    return out


if __name__ == "__main__":
    main()
