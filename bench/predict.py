"""Whole-slide prediction rate and peak memory against slide size, next to the model alone.

Run: python bench/predict.py [--sizes 5000 20000 40000] [--target-mpp 4.0] [--window 512]
     [--batch 8] [--cache DIR] [--device auto] [--model deeplab|tiny]

Slides are generated pyramidal TIFFs (tissueseg.synth.make_slide, 0.5 µm/px, JPEG tiles,
levels by 2), cached under ``--cache`` (generating 40k px takes a while; ``--max-gen-s``
skips sizes whose generation would not fit). Each size runs in a fresh subprocess: the full
predict_image (reading, tissue detection, blending, zarr, TIFF/GeoJSON export) and then,
in the same process, the model alone on the same number of windows as random tensors.
Peak RSS is ``ru_maxrss`` of the subprocess read right after the prediction. The model is
DeepLabv3+ / tf_efficientnet_lite0 with random weights (speed only), or ``--model tiny`` (a
2-layer conv net: reading, stitching and export dominate; shows memory against area). The
rate is target MP per second (the slide's area at ``--target-mpp``): "MP/s" over the whole predict_image
call, "engine MP/s" over the sliding window alone (reading, model, blending, zarr writes;
without thumbnail, tissue detection and exports); ratio = whole / model alone. On CPU use
a coarse target (4 µm/px reads level 3 of a 0.5 µm/px slide).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLIDE_MPP = 0.5


def build_predictor(window: int, device: str, kind: str = "deeplab"):
    """DeepLabv3+ / tf_efficientnet_lite0 (random weights), or ``tiny``: a 2-layer conv net that
    makes reading, stitching and export the cost."""
    import torch

    from tissueseg.checkpoint import Predictor, Preprocessing
    from tissueseg.infer import resolve_device
    from tissueseg.models import ModelConfig, build_model, normalization
    from tissueseg.schemes import bcss5

    torch.manual_seed(0)
    cfg = ModelConfig(arch="deeplabv3plus", encoder="tf_efficientnet_lite0", weights="none")
    dev = resolve_device(device)
    if kind == "tiny":
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 3, padding=1))
    else:
        model = build_model(cfg, 5)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    mean, std = normalization(cfg)
    preprocessing = Preprocessing(SLIDE_MPP, window, tuple(mean), tuple(std))
    return Predictor(model, bcss5(), preprocessing, {"model": cfg.model_dump()})


def model_only(predictor, windows: int, window: int, batch: int) -> float:
    """Seconds for ``windows`` random uint8 windows through preprocess, model and softmax."""
    import torch

    dev = next(predictor.model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, windows, batch):
            n = min(batch, windows - i)
            x = torch.randint(0, 256, (n, window, window, 3), dtype=torch.uint8, generator=gen)
            with torch.autocast(dev.type, enabled=dev.type == "cuda"):
                predictor.probabilities(predictor.preprocess(x)).cpu()
    return time.perf_counter() - t0


def run_one(slide: Path, out: Path, target_mpp: float, window: int, batch: int, device: str, kind: str) -> dict:
    from tissueseg.infer import predict_image

    predictor = build_predictor(window, device, kind)
    t0 = time.perf_counter()
    res = predict_image(predictor, slide, out, target_mpp=target_mpp, window=window, batch_size=batch,
                        device=device, overwrite=True, quiet=True)
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model_s = model_only(predictor, res.windows_run, window, batch)
    return {"slide": slide.name, "level0": res.level0_size, "level": res.level, "target": res.size,
            "mp": res.megapixels, "windows": res.windows_run, "wall_s": wall, "engine_s": res.engine_seconds,
            "model_s": model_s, "peak_rss_mb": rss_mb}


def ensure_slide(cache: Path, size: int, max_gen_s: float) -> Path | None:
    from tissueseg.synth import make_slide

    path = cache / f"bench_{size}_MPP-{SLIDE_MPP:.4f}.tiff"
    if path.exists():
        return path
    estimate = size * size / 2.5e6  # s, rough CPU rate of make_slide incl. pyramid
    if estimate > max_gen_s:
        print(f"skip {size}: generating would take ~{estimate:.0f} s (> --max-gen-s {max_gen_s:.0f})", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    make_slide(path, (size, size), seed=size, mpp=SLIDE_MPP, tile=512, quiet=False)
    print(f"generated {path.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 40000])
    ap.add_argument("--target-mpp", type=float, default=4.0)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", choices=["deeplab", "tiny"], default="deeplab")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tissueseg-bench-slides")
    ap.add_argument("--max-gen-s", type=float, default=1800.0)
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one size in this process
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="tissueseg-bench-out-") as out:
            print(json.dumps(run_one(args.one, Path(out), args.target_mpp, args.window, args.batch, args.device,
                                     args.model)))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        slide = ensure_slide(args.cache, size, args.max_gen_s)
        if slide is None:
            continue
        cmd = [sys.executable, __file__, "--one", str(slide), "--target-mpp", str(args.target_mpp),
               "--window", str(args.window), "--batch", str(args.batch), "--device", args.device,
               "--model", args.model]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            sys.exit(f"size {size} failed:\n{proc.stderr}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"model {args.model}, target {args.target_mpp} µm/px from {SLIDE_MPP} µm/px slides, window "
          f"{args.window}, overlap 0.5, batch {args.batch}, device {args.device}")
    head = (f"{'slide (level 0)':>16} {'lvl':>3} {'target px':>12} {'MP':>6} {'windows':>7} {'wall s':>7} "
            f"{'MP/s':>6} {'engine MP/s':>11} {'model s':>7} {'model MP/s':>10} {'ratio':>5} {'peak RSS MB':>11}")
    print(head)
    for r in rows:
        w0, h0 = r["level0"]
        tw, th = r["target"]
        rate, erate, mrate = r["mp"] / r["wall_s"], r["mp"] / r["engine_s"], r["mp"] / r["model_s"]
        print(f"{f'{w0}x{h0}':>16} {r['level']:>3} {f'{tw}x{th}':>12} {r['mp']:>6.1f} {r['windows']:>7} "
              f"{r['wall_s']:>7.1f} {rate:>6.2f} {erate:>11.2f} {r['model_s']:>7.1f} {mrate:>10.2f} {rate / mrate:>5.2f} "
              f"{r['peak_rss_mb']:>11.0f}")


if __name__ == "__main__":
    main()
