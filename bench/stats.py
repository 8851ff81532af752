"""Counting speed: decode vs histogram count vs a per-pixel Python loop, on real BCSS masks.

Run: python bench/stats.py  (uses ../shared/data/bcss/masks; a generated 4196x2756 mask when absent)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from tissueseg import io
from tissueseg.schemes import bcss22
from tissueseg.stats import count_classes

MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bcss" / "masks"
LOOP_BUDGET_S = 10.0


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def python_loop(mask: np.ndarray, scheme) -> np.ndarray:
    """Per-class counts, then the ignored count last (a fair loop: plain lists, a local LUT)."""
    k = scheme.num_classes
    counts = [0] * (k + 1)
    lut = scheme.lut.tolist()
    for row in mask.tolist():
        for code in row:
            c = lut[code]
            counts[c if c < k else k] += 1
    return np.array(counts, np.int64)


def loop_time(mask: np.ndarray, scheme) -> tuple[float, str]:
    """Seconds for the whole mask; extrapolated from a row subsample when it would exceed the budget."""
    rows = max(1, mask.shape[0] // 64)
    t = best_of(lambda: python_loop(mask[:rows], scheme), repeat=1)
    full = t * mask.shape[0] / rows
    if full <= LOOP_BUDGET_S:
        return best_of(lambda: python_loop(mask, scheme), repeat=1), "measured"
    return full, f"extrapolated from {rows} rows"


def main() -> None:
    scheme = bcss22()
    files = sorted(MASKS.glob("*.png")) if MASKS.is_dir() else []
    with tempfile.TemporaryDirectory() as tmp:
        if not files:
            print(f"{MASKS} not found: a generated 4196x2756 mask of 64 px blocks")
            blocks = np.random.default_rng(0).integers(1, 22, (66, 44)).astype(np.uint8)
            mask = np.kron(blocks, np.ones((64, 64), np.uint8))[:4196, :2756]
            files = [io.write_png(Path(tmp) / "generated.png", mask)]
        run(files, scheme)


def run(files: list[Path], scheme) -> None:
    print(f"{'mask':<30}{'Mpx':>6}{'decode ms':>11}{'count ms':>10}{'bincount ms':>13}"
          f"{'py loop s':>11}{'count/decode':>14}{'speed-up':>10}  loop")
    for f in files:
        mask = io.read_mask(f)
        decode = best_of(lambda: io.read_mask(f))
        count = best_of(lambda: count_classes(mask, scheme))
        bincount = best_of(lambda: scheme.fold_counts(np.bincount(mask.ravel(), minlength=256)))
        loop, how = loop_time(mask, scheme)
        assert (python_loop(mask[:8], scheme)[:-1] == count_classes(mask[:8], scheme)[0]).all()
        print(f"{f.name[:28]:<30}{mask.size / 1e6:>6.2f}{decode * 1e3:>11.1f}{count * 1e3:>10.1f}"
              f"{bincount * 1e3:>13.1f}{loop:>11.2f}{count / decode:>14.2f}{loop / count:>9.0f}x  {how}")


if __name__ == "__main__":
    main()
