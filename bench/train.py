"""Training throughput: the real training step against the model alone.

Run: python bench/train.py [--manifest TILES] [--steps 30] [--batch 8] [--workers 0 2]
     [--arch deeplabv3plus] [--device auto] [--threads N]

"real" is :func:`tissueseg.train.train` itself (DataLoader over the manifest, memory-mapped
region crops, flips/rotations and H&E stain jitter, forward/backward/AdamW step,
channels_last, AMP on CUDA) timed from its own ``patches_per_s`` log, first interval
(warm-up, region cache fill) and validation left out. "model only" is the same model, loss
and optimiser on random tensors of the same batch, already on the device. Overhead = 1 -
real / model only (goal: under 10 %). Without ``--manifest``, 8 generated 512 px regions are
tiled at 128 px in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_only(cfg, num_classes: int, patch: int, steps: int) -> float:
    """Patches per second of forward/backward/step on random tensors of the training batch."""
    import contextlib

    import torch

    from tissueseg.losses import build_loss
    from tissueseg.models import build_model
    from tissueseg.train import _device

    device = _device(cfg.run.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    loss_fn = build_loss(cfg.loss.name)
    B = cfg.run.batch_size
    x = torch.randn(B, 3, patch, patch, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, num_classes, (B, patch, patch), device=device)
    amp = cfg.run.amp and device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast("cuda", dtype=dtype) if amp else contextlib.nullcontext()
    warm = max(steps // 5, 2)
    for i in range(steps + warm):
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        with autocast:
            out = model(x)
        loss = loss_fn(out.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * B / (time.perf_counter() - t)


def real(cfg) -> float:
    """Patches per second of train() (intervals after the first, validation excluded)."""
    from tissueseg.train import train

    result = train(cfg, quiet=True, overwrite=True)
    rates = result.history["patches_per_s"].to_numpy()[1:]
    return float(rates.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, help="tiling output; default: generated data")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--arch", default="deeplabv3plus", choices=["deeplabv3plus", "fcn"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tissueseg.config import load_config
    from tissueseg.manifest import load_manifest, tile_dataset
    from tissueseg.schemes import bcss5
    from tissueseg.train import resolve_scheme

    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest
        if manifest is None:
            from tissueseg.synth import make_dataset

            pairs = make_dataset(Path(tmp) / "synth", n=8, size=512, seed=0, quiet=True)
            manifest = tile_dataset(pairs, Path(tmp) / "tiles", bcss5(), size=128, stride=128, quiet=True).out
        _, meta = load_manifest(manifest)
        log_every = max(args.steps // 5, 1)
        rows = []
        for workers in args.workers:
            cfg = load_config(None, [
                f"data.manifest={manifest}", f"run.out={tmp}/run", f"run.steps={args.steps}",
                f"run.batch_size={args.batch}", f"data.workers={workers}", f"model.arch={args.arch}",
                "model.weights=none", f"run.device={args.device}", f"run.log_every={log_every}",
                f"run.val_every={args.steps}", "run.max_val_patches=8", f"run.checkpoint_every={args.steps}",
                f"data.cache_dir={tmp}/cache",
            ])
            scheme = resolve_scheme(cfg, meta)
            patch = int(meta["params"]["size"])
            base = model_only(cfg, scheme.num_classes, patch, args.steps)
            full = real(cfg)
            rows.append((workers, base, full))
        from tissueseg.train import _device

        dev = _device(args.device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        print(f"\n{args.arch}/tf_efficientnet_lite0, batch {args.batch} x {patch} px, {args.steps} steps, {name}")
        print(f"{'workers':>7}  {'model only':>12}  {'real step':>12}  {'overhead':>8}")
        for workers, base, full in rows:
            print(f"{workers:>7}  {base:>9.1f} p/s  {full:>9.1f} p/s  {1 - full / base:>7.1%}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
