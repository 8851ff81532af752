"""Quality of CAM pseudo-masks (no stage 2): one stage-1 classifier, every way of turning its maps into masks.

The training regions of bench/quality.py (same generator, layouts and data seed) are cut into
non-overlapping ``--patch`` px patches with their labels (classes covering >= 5 % of the
patch); the multi-label classifier is trained on them (``--cls-steps`` x ``--batch``), and the
pseudo-masks of every variant of :class:`tissueseg.weak.cam.CamOptions` below are scored
against the true masks (mIoU, per-class IoU, share of labelled pixels they cover).

Run: python bench/pseudo_masks.py [--patch 256] [--cls-steps 150] [--seed 0] [--balanced] [--variants a,b]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from tissueseg import io
from tissueseg.losses import multilabel
from tissueseg.models import ModelConfig, encoders, normalization
from tissueseg.models.classifier import build_classifier
from tissueseg.schemes import load_scheme
from tissueseg.weak import cam

from fitloop import fit, patch_batches  # bench/fitloop.py
from quality import labelled_patches, make_regions, pm_scores  # bench/quality.py

VARIANTS: dict[str, cam.CamOptions] = {
    "default (equal weights, flip TTA)": cam.CamOptions(),
    "no TTA": cam.CamOptions(tta="none"),
    "dihedral TTA (8)": cam.CamOptions(tta="d4"),
    "weights 0.2/0.2/0.6 (MLPS)": cam.CamOptions(weights=(0.2, 0.2, 0.6)),
    "weights 0.3/0.3/0.4 (TPRO)": cam.CamOptions(weights=(0.3, 0.3, 0.4)),
    "deepest maps only": cam.CamOptions(weights=(0.0, 0.0, 1.0)),
    "guided filter r8": cam.CamOptions(refine_radius=8),
    "guided filter r16": cam.CamOptions(refine_radius=16),
    "context 32 px": cam.CamOptions(context=32),
    "context 64 px": cam.CamOptions(context=64),
    "min score 0.3": cam.CamOptions(min_score=0.3),
    "margin 0.1": cam.CamOptions(margin=0.1),
    "margin 0.2": cam.CamOptions(margin=0.2),
    "prototypes 3 (configs/weak.yaml)": cam.CamOptions(prototypes=3),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--cls-steps", type=int, default=150)
    p.add_argument("--cls-stride", type=int, default=16, choices=[8, 16, 32])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--balanced", action="store_true", help="class-balanced patch draws for stage 1")
    p.add_argument("--scheme", default="bcss5")
    p.add_argument("--train-regions", type=int, default=8)
    p.add_argument("--region-size", type=int, default=768)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out-pm"))
    args = p.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from: {'; '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    encoders.shipped_state_dict("tf_efficientnet_lite0")
    scheme = load_scheme(args.scheme)
    k, names = scheme.num_classes, scheme.names
    train = make_regions(args.train_regions, args.region_size, args.data_seed, scheme)
    corners, labels, pix, flat = labelled_patches(train, args.patch, k)
    norm = normalization(ModelConfig())
    torch.manual_seed(args.seed)
    model = build_classifier("tf_efficientnet_lite0", k, weights="imagenet", output_stride=args.cls_stride)
    start = time.perf_counter()
    fit(model, patch_batches(pix, flat, args.batch, args.seed, args.balanced),
        lambda m, x, y: multilabel(m.forward_maps(x), y), args.cls_steps, norm, lr=args.lr, desc="classifier")
    cls_s = time.perf_counter() - start
    rows = []
    for name in variants:
        start = time.perf_counter()
        pm = [(rgb, cam.region_pseudo_mask(model, rgb, xy, args.patch, lab, norm, VARIANTS[name]))
              for (rgb, _), xy, lab in zip(train, corners, labels)]
        sc = pm_scores(pm, train, k, names)
        rows.append((name, sc, time.perf_counter() - start))
        print(f"{name:36s} mIoU {sc['pm_miou']:.3f} coverage {sc['pm_coverage']:.3f}", flush=True)
    lines = ["| pseudo-masks | " + " | ".join(names) + " | mIoU | coverage | s |", "|" + "---|" * (len(names) + 4)]
    for name, sc, secs in rows:
        cells = " | ".join(f"{sc['pm_iou'][n]:.3f}" for n in names)
        lines.append(f"| {name} | {cells} | {sc['pm_miou']:.3f} | {sc['pm_coverage']:.3f} | {secs:.0f} |")
    lines += ["", f"{len(pix)} patches of {args.patch} px ({int((flat.sum(1) == 1).sum())} single-label) of "
              f"{args.train_regions} regions of {args.region_size} px (data seed {args.data_seed}, scheme {scheme.name}); "
              f"stage 1: {args.cls_steps} steps x batch {args.batch}, {'class-balanced' if args.balanced else 'uniform'} "
              f"draws, seed {args.seed}, output stride {args.cls_stride} ({cls_s:.0f} s)."]
    text = "\n".join(lines)
    print(text)
    io.write_text(args.out / "pseudo-masks.md", text + "\n")


if __name__ == "__main__":
    main()
