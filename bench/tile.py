"""Tiling speed in ms per patch: tile_dataset (manifest only, with patch files) vs a plain PIL loop.

Run: python bench/tile.py [--data DIR] [--size 256] [--stride 128] [--regions 4]
``--data`` is a BCSS-style folder (rgbs_colorNormalized/ + masks/), e.g.
../shared/data/bcss/region-a0sk (one real 3136x2240 region). Without it, regions are
generated H&E (tissueseg.synth) laid out like the real BCSS masks in
../shared/data/bcss/masks (random 2756x4196 layouts when absent). The plain loop crops each
patch, counts it with np.bincount and writes image, mask and palette PNGs with PIL at its
default compression. Every method runs in a fresh process on the same inputs; times cover
the whole process (imports and reading the regions included); cpu is the process's own CPU
time (user + system, all its threads), steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
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
METHODS = {
    "manifest": "tile_dataset, manifest only",
    "patches": "tile_dataset, + patch files (3 PNG each)",
    "patches-1thread": "  the same, one encoding thread",
    "pil": "plain PIL loop: bincount + 3 PNG",
}


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


def plain_loop(pairs, out: Path, scheme, size: int, stride: int) -> int:
    n = 0
    for d in ("images", "masks", "palette"):
        (out / d).mkdir(parents=True, exist_ok=True)
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


def run_one(method: str, data: Path, out: Path, size: int, stride: int) -> None:
    """One method, in this process; prints the patch count."""
    pairs, _, _ = pair_files(*find_dataset(data))
    scheme = bcss22()
    if method == "pil":
        n = plain_loop(pairs, out, scheme, size, stride)
    else:
        if method == "patches-1thread":
            import tissueseg.manifest

            tissueseg.manifest.thread_budget = lambda: 1
        n = tile_dataset(pairs, out, scheme, size, stride, patches=method != "manifest", quiet=True).patches
    print(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="BCSS-style folder (default: generated regions)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--regions", type=int, default=4, help="generated regions (without --data)")
    parser.add_argument("--run", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_one(args.run, args.data, args.out, args.size, args.stride)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data
        if data is None:
            data = root / "data"
            make_regions(data, args.regions)
        pairs, _, _ = pair_files(*find_dataset(data))
        sizes = [io.image_size(i) for i, _ in pairs]
        print(f"{len(pairs)} region(s) ({', '.join(f'{w}x{h}' for w, h in sizes)}), "
              f"patches {args.size}/{args.stride}, one process each")
        print(f"{'method':<42}{'patches':>9}{'wall s':>9}{'cpu s':>8}{'ms/patch':>10}{'cpu ms/patch':>14}")
        for method, label in METHODS.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--run", method, "--data", str(data), "--out",
                                   str(root / method), "--size", str(args.size), "--stride", str(args.stride)],
                                  check=True, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            n = int(done.stdout.split()[-1])
            print(f"{label:<42}{n:>9}{seconds:>9.2f}{cpu:>8.2f}{seconds / n * 1e3:>10.2f}{cpu / n * 1e3:>14.2f}")
            shutil.rmtree(root / method, ignore_errors=True)


if __name__ == "__main__":
    main()
