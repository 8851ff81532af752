"""Segmentation quality of full supervision and of each weak method, side by side.

Generated H&E regions (tissueseg.synth) on the layouts of the real BCSS masks
(../shared/data/bcss/masks; random layouts when absent); training and held-out regions
have different seeds and crops. Every method gets the SAME training budget: the total
number of training samples, optimiser steps x batch size summed over all its stages
(``--steps`` x ``--batch``), the same crop size, optimiser (AdamW, poly LR) and seed. Weak
methods see only image-level labels of patches (the ``label_<class>`` columns a manifest
tiled at that patch size would hold, threshold 5 % of the ROI); the masks of the training
regions are used only by the full model. Scores: per-class IoU and mIoU on the held-out
regions (whole-region prediction with flip TTA for every method).

Run: python bench/quality.py --steps 300 --seed 0 [--data-seed 0] [--methods full,sigmoid-max,...] [--out bench-out]
Writes the table to <out>/quality.md and the numbers to <out>/quality.json.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from tissueseg import io
from tissueseg.losses import build_loss
from tissueseg.metrics import confusion_matrix, scores
from tissueseg.models import ModelConfig, build_model, normalization
from tissueseg.schemes import IGNORE, ClassScheme, load_scheme
from tissueseg.weak import labelgrid
from tissueseg.weak.pseudomask import pseudo_mask

from fitloop import crops, decode, encode, fit, grid_loss, predict_probs  # bench/fitloop.py

MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bcss" / "masks"
Region = tuple[np.ndarray, np.ndarray]  # (rgb, class-index labels with 255 ignore)


def make_regions(n: int, size: int, seed: int, scheme: ClassScheme) -> list[Region]:
    """``n`` generated regions on crops of the real BCSS layouts (cycled)."""
    from tissueseg import synth

    masks = sorted(MASKS.glob("*.png")) if MASKS.is_dir() else []
    out = []
    for i in range(n):
        layout = None
        if masks:
            layout = synth.layout_from_mask(io.read_mask(masks[i % len(masks)]), (size, size), seed=seed * 1000 + i)
        rgb, codes = synth.make_region((size, size), seed=seed * 1000 + i, layout=layout)
        out.append((rgb, scheme.apply(codes)))
    return out


def weak_targets(regions: list[Region], cell: int, k: int) -> list[Region]:
    """Regions with their label grid at ``cell`` px as a bit-coded pixel map (the weak labels)."""
    return [(rgb, encode(labelgrid.cell_labels(lab, cell, k))) for rgb, lab in regions]


def pseudo_targets(regions: list[Region], cell: int, k: int) -> list[Region]:
    """Regions with the pseudo-mask made from their label grid at ``cell`` px (the default weak method)."""
    return [(rgb, pseudo_mask(labelgrid.cell_labels(lab, cell, k), cell, lab.shape)) for rgb, lab in regions]


def full_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y.long(), ignore_index=IGNORE)


def mil_loss(name: str, k: int) -> Callable:
    """A MIL loss of tissueseg.losses on the FCN's coarse maps, with the crop's image labels."""
    mil = build_loss(name)

    def loss(model, x, bits):
        labels = decode(bits[:, :1, :1], k)[:, :, 0, 0].float()
        return mil(model.forward_maps(x), labels)
    return loss


METHODS = ("full", "mil-max", "sigmoid-max", "lse", "grid-32-set", "grid-128", "grid-64", "grid-32")
"""``grid-<cell>``: the default weak method (pseudo-masks from the labels of ``cell`` px patches, cross-entropy);
``grid-<cell>-set``: the same labels with the label-set and presence losses; ``crop`` for ``cell``: one cell per crop."""


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    scheme = load_scheme(args.scheme)
    k, names = scheme.num_classes, scheme.names
    t0 = time.perf_counter()
    train = make_regions(args.train_regions, args.region_size, args.data_seed, scheme)
    test = make_regions(args.test_regions, args.region_size, args.data_seed + 10_000, scheme)
    data_s = time.perf_counter() - t0
    results: dict[str, dict] = {}
    for method in args.methods:
        torch.manual_seed(args.seed)
        if method in ("sigmoid-max", "lse", "topk", "mil-max"):
            cfg = ModelConfig(arch="fcn", weights=args.weights)
            regions, align, loss = weak_targets(train, args.crop, k), args.crop, mil_loss(method, k)
        elif method.startswith("grid-"):
            size = method.split("-")[1]
            cell = args.crop if size == "crop" else int(size)
            cfg = ModelConfig(arch="deeplabv3plus", weights=args.weights)
            if method.endswith("-set"):
                regions, align, loss = weak_targets(train, cell, k), cell, grid_loss(cell, args.presence)
            else:
                regions, align, loss = pseudo_targets(train, cell, k), 1, full_loss
        elif method == "full":
            cfg = ModelConfig(arch="deeplabv3plus", weights=args.weights)
            regions, align, loss = train, 1, full_loss
        else:
            raise SystemExit(f"unknown method {method!r} (known: {', '.join(METHODS)})")
        model = build_model(cfg, k)
        norm = normalization(cfg)
        start = time.perf_counter()
        hist = fit(model, crops(regions, args.crop, args.batch, args.seed, align), loss, args.steps, norm,
                   lr=args.lr, desc=method)
        train_s = time.perf_counter() - start
        cm = np.zeros((k, k + 1), np.int64)  # last column: no prediction (see metrics.confusion_matrix)
        for rgb, lab in test:
            pred = predict_probs(model, rgb, norm).argmax(0).numpy()
            cm += confusion_matrix(pred, lab, k)
        sc = scores(cm, names)
        results[method] = {"miou": sc["miou"], "iou": {n: sc["per_class"][n]["iou"] for n in names},
                           "train_s": train_s, "final_loss": float(np.mean(hist[-20:]))}
        print(f"{method:12s} mIoU {sc['miou']:.3f}  ({train_s:.0f} s)", flush=True)
    return {"scheme": scheme.name, "classes": names, "seed": args.seed, "data_seed": args.data_seed,
            "steps": args.steps, "batch": args.batch,
            "crop": args.crop, "budget_samples": args.steps * args.batch, "train_regions": args.train_regions,
            "test_regions": args.test_regions, "region_size": args.region_size, "weights": args.weights,
            "data_s": data_s, "methods": results}


def table(res: dict) -> str:
    names = res["classes"]
    full = res["methods"].get("full", {}).get("miou")
    head = "| method | " + " | ".join(names) + " | mIoU | % of full | train s |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for m, r in res["methods"].items():
        rel = f"{100 * r['miou'] / full:.0f}%" if full else "-"
        cells = " | ".join(f"{r['iou'][n]:.3f}" for n in names)
        lines.append(f"| {m} | {cells} | {r['miou']:.3f} | {rel} | {r['train_s']:.0f} |")
    lines.append("")
    lines.append(f"seed {res['seed']} (data seed {res['data_seed']}); budget {res['steps']} steps x batch "
                 f"{res['batch']} = {res['budget_samples']} "
                 f"samples of {res['crop']} px per method; {res['train_regions']} training / {res['test_regions']} "
                 f"held-out regions of {res['region_size']} px; scheme {res['scheme']}; encoder weights {res['weights']}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, crops, dropout)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated regions")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--scheme", default="bcss5")
    p.add_argument("--train-regions", type=int, default=8)
    p.add_argument("--test-regions", type=int, default=8)
    p.add_argument("--region-size", type=int, default=768)
    p.add_argument("--presence", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weights", default="imagenet", choices=["imagenet", "none"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = run(args)
    text = table(res)
    print(text)
    io.write_text(args.out / "quality.md", text + "\n")
    io.write_json(args.out / "quality.json", res)


if __name__ == "__main__":
    main()
