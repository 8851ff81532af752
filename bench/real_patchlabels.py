"""The patch-label method on real pixels: the BCSS-WSSS sample and the real A0SK region.

(a) Stage 1 (the multi-label patch classifier) is trained on the 238 real 224 px training
patches of ``../shared/data/bcss-wsss-sample/training`` from their ``[abcd]`` flags only.
The CAM pseudo-masks of the 140 A0SK patches, put back on their grid (column-major, 10 rows
per column: patch ``+i`` at x = 224 (i // 10), y = 224 (i % 10)), are scored against the real
mask of ``../shared/data/bcss/region-a0sk`` in ``bcss-wsss4`` (every other code ignored), beside
the label grid's pseudo-masks from the same 224 px labels. Pixels a pseudo-mask leaves
unlabelled (e.g. glass with ``white``) are not scored: the coverage column says how many.

(b) Stage 2 (DeepLabv3+, cross-entropy on the pseudo-masks of all 238 patches, optionally
mixed with mosaics of the single-label patches) is scored on ``val/`` (14 patches of
TCGA-EW, wsss convention: background ignored), beside the stage-1 classifier alone (gated CAMs).

Run: python bench/real_patchlabels.py [--cls-steps 300] [--steps 300] [--seed 0] [--out bench-out-real]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

from tissueseg import io
from tissueseg.colorize import colorize
from tissueseg.losses import multilabel
from tissueseg.metrics import confusion_matrix, scores
from tissueseg.models import ModelConfig, build_model, normalization
from tissueseg.models.classifier import build_classifier
from tissueseg.schemes import IGNORE, bcss_wsss4
from tissueseg.weak import cam
from tissueseg.weak.mosaic import Mosaics, single_label_sources
from tissueseg.weak.pseudomask import pseudo_mask as grid_pseudo_mask
from tissueseg.weaklabels import read_weak_folder, read_weak_mask

from fitloop import concat_batches, crops, fit, mosaic_batches, patch_batches, predict_probs  # bench/fitloop.py
from quality import full_loss  # bench/quality.py

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WSSS = DATA / "bcss-wsss-sample"
A0SK = DATA / "bcss" / "region-a0sk"
PATCH = 224
MAIN = ("tumor", "stroma", "necrosis")
"""The classes of A0SK (lymphocytic infiltrate covers 4.7k of its 7M px): the goal's mean is over these."""
ROWS = 10

VARIANTS: dict[str, cam.CamOptions] = {
    "cam+ctx32": cam.CamOptions(context=32),
    "cam": cam.CamOptions(),
    "cam+gf": cam.CamOptions(refine_radius=16),
    "cam+white": cam.CamOptions(white=200),
    "cam+gf+white": cam.CamOptions(refine_radius=16, white=200),
    "cam deep only": cam.CamOptions(weights=(0, 0, 1)),
    "cam shallow only": cam.CamOptions(weights=(1, 0, 0)),
    "cam equal weights": cam.CamOptions(weights=(1, 1, 1)),
    "cam no flip TTA": cam.CamOptions(tta="none"),
}


def a0sk_index(image_id: str) -> int | None:
    """The patch number ``i`` of an A0SK training patch name (``...A0SK...+i[abcd]``), None for other slides."""
    if "TCGA-A1-A0SK" not in image_id:
        return None
    return int(re.search(r"\+(\d+)\[", image_id).group(1))


def a0sk_layout(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``table`` that are A0SK patches, their ``(N, 2)`` corners on the region, and the ``(gh, gw, K)`` label grid."""
    idx = table["image_id"].map(a0sk_index)
    rows = np.flatnonzero(idx.notna().to_numpy())
    i = idx.iloc[rows].astype(int).to_numpy()
    corners = np.stack([PATCH * (i // ROWS), PATCH * (i % ROWS)], axis=1)
    cols = [f"label_{n}" for n in bcss_wsss4().names]
    grid = np.zeros((ROWS, int(i.max()) // ROWS + 1, len(cols)), np.uint8)
    grid[i % ROWS, i // ROWS] = table.iloc[rows][cols].to_numpy(np.uint8)
    return rows, corners, grid


def score(pred: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    sc = scores(confusion_matrix(pred, truth, len(names)), names)
    coverage = float(((truth != IGNORE) & (pred != IGNORE)).sum() / max((truth != IGNORE).sum(), 1))
    iou = {n: sc["per_class"][n]["iou"] for n in names}
    return {"miou": sc["miou"], "miou3": float(np.mean([iou[n] for n in MAIN])), "iou": iou, "coverage": coverage}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    scheme = bcss_wsss4()
    names, k = scheme.names, scheme.num_classes
    table = read_weak_folder(WSSS / "training", "bcss-wsss")
    images = np.stack([io.read_image(p) for p in table["image_path"]])
    labels = table[[f"label_{n}" for n in names]].to_numpy(np.uint8)
    rows, corners, grid = a0sk_layout(table)
    region = io.read_image(next((A0SK / "rgbs_colorNormalized").glob("*.png")))
    truth = scheme.apply(io.read_mask(next((A0SK / "masks").glob("*.png"))))
    a0sk: dict[str, dict] = {"label grid": score(grid_pseudo_mask(grid, PATCH, truth.shape), truth, names)}
    assert np.array_equal(region[corners[0, 1] : corners[0, 1] + PATCH, corners[0, 0] : corners[0, 0] + PATCH],
                          images[rows[0]]), "A0SK patch 0 is not at its grid place"

    norm = normalization(ModelConfig(weights=args.weights))
    torch.manual_seed(args.seed)
    classifier = build_classifier("tf_efficientnet_lite0", k, weights=args.weights, output_stride=args.cls_stride)
    start = time.perf_counter()
    fit(classifier, patch_batches(images, labels, args.batch, args.seed, balanced=not args.uniform),
        lambda m, x, y: multilabel(m.forward_maps(x), y), args.cls_steps, norm, lr=args.lr, desc="classifier")
    cls_s = time.perf_counter() - start
    for name in args.variants:
        options = VARIANTS[name]
        pm = cam.region_pseudo_mask(classifier, region, corners, PATCH, labels[rows], norm, options)
        a0sk[name] = score(pm, truth, names)
        if name == args.preview:
            io.write_png(args.out / "a0sk-pseudo-mask.png", colorize(np.ascontiguousarray(pm[::2, ::2]), scheme))
        print(f"A0SK {name:18s} mIoU {a0sk[name]['miou']:.3f} TUM/STR/NEC {a0sk[name]['miou3']:.3f}", {n: round(v, 3) for n, v in a0sk[name]["iou"].items()},
              flush=True)

    val = read_weak_folder(WSSS / "val", "bcss-wsss")
    val_images = [io.read_image(p) for p in val["image_path"]]
    val_masks = [read_weak_mask(p, "bcss-wsss") for p in val["mask_path"]]
    heldout: dict[str, dict] = {}

    def evaluate(name: str, predict) -> None:
        cm = sum(confusion_matrix(predict(img), m, k) for img, m in zip(val_images, val_masks))
        sc = scores(cm, names)
        heldout[name] = {"miou": sc["miou"], "iou": {n: sc["per_class"][n]["iou"] for n in names}}
        print(f"val {name:22s} mIoU {sc['miou']:.3f}", {n: round(v, 3) for n, v in heldout[name]["iou"].items()},
              flush=True)

    def stage1(img: np.ndarray) -> np.ndarray:
        c, lab = cam.patch_labels(classifier, img, PATCH, norm, args.gate)
        return cam.region_pseudo_mask(classifier, img, c, PATCH, lab.astype(np.uint8), norm, VARIANTS[args.stage2_cam])

    evaluate("stage 1 (gated CAMs)", stage1)
    options = VARIANTS[args.stage2_cam]
    pms = cam.patch_pseudo_masks(classifier, images, labels, norm, options)
    single = single_label_sources(table, scheme)
    for mix in args.mosaic_mix:
        n_mosaic = round(mix * args.batch)
        streams = []
        if n_mosaic < args.batch:
            streams.append(crops(list(zip(images, pms)), args.crop, args.batch - n_mosaic, args.seed))
        if n_mosaic:
            by_path = dict(zip(table["image_path"].astype(str), images))
            ds = Mosaics(single, by_path.__getitem__, size=args.crop, tile=args.tile, length=10**9, seed=args.seed,
                         white=options.white)
            streams.append(mosaic_batches(ds, n_mosaic))
        torch.manual_seed(args.seed)
        model = build_model(ModelConfig(weights=args.weights), k)
        fit(model, concat_batches(*streams), full_loss, args.steps, norm, lr=args.lr, desc=f"stage 2 mosaics {mix}")
        evaluate(f"stage 2, mosaics {mix:.2f}", lambda img: predict_probs(model, img, norm).argmax(0).numpy())
        evaluate(f"stage 2, mosaics {mix:.2f} + gate", lambda img: cam.gated_argmax(
            predict_probs(model, img, norm), cam.patch_gates(classifier, img, PATCH, norm, args.gate)))
    return {"seed": args.seed, "cls_steps": args.cls_steps, "balanced": not args.uniform, "steps": args.steps, "batch": args.batch,
            "crop": args.crop, "cls_stride": args.cls_stride, "classifier_s": cls_s, "stage2_cam": args.stage2_cam,
            "a0sk": a0sk, "val": heldout}


def table(res: dict) -> str:
    names = bcss_wsss4().names
    lines = ["(a) A0SK pseudo-masks from the 224 px patch labels, against the real mask (bcss-wsss4)", "",
             "| pseudo-masks | " + " | ".join(names) + " | mIoU | mean TUM/STR/NEC | coverage |",
             "|" + "---|" * (len(names) + 4)]
    for m, r in res["a0sk"].items():
        iou = " | ".join("-" if np.isnan(r["iou"][n]) else f"{r['iou'][n]:.3f}" for n in names)
        lines.append(f"| {m} | {iou} | {r['miou']:.3f} | {r['miou3']:.3f} | {r['coverage']:.3f} |")
    lines += ["", "(b) val/ (14 patches of TCGA-EW, wsss convention, background ignored)", "",
              "| model | " + " | ".join(names) + " | mIoU |", "|" + "---|" * (len(names) + 2)]
    for m, r in res["val"].items():
        iou = " | ".join("-" if np.isnan(r["iou"][n]) else f"{r['iou'][n]:.3f}" for n in names)
        lines.append(f"| {m} | {iou} | {r['miou']:.3f} |")
    draws = "class-balanced" if res["balanced"] else "uniform"
    lines += ["", f"seed {res['seed']}; stage 1 {res['cls_steps']} steps x batch {res['batch']} of 224 px patches ({draws} draws) "
              f"(output stride {res['cls_stride']}, {res['classifier_s']:.0f} s); stage 2 {res['steps']} steps x batch "
              f"{res['batch']} of {res['crop']} px crops on the pseudo-masks ({res['stage2_cam']})."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cls-steps", type=int, default=300)
    p.add_argument("--cls-stride", type=int, default=16, choices=[8, 16, 32])
    p.add_argument("--steps", type=int, default=300, help="stage-2 steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gate", type=float, default=0.5)
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--mosaic-mix", default="0,0.5", help="shares of mosaics in stage-2 batches, one model each")
    p.add_argument("--stage2-cam", default="cam", choices=list(VARIANTS), help="pseudo-masks stage 2 trains on")
    p.add_argument("--preview", default="cam", choices=list(VARIANTS))
    p.add_argument("--variants", default=",".join(VARIANTS), help="A0SK pseudo-mask variants to score")
    p.add_argument("--uniform", action="store_true", help="stage 1 draws patches uniformly (default: class-balanced)")
    p.add_argument("--weights", default="imagenet", choices=["imagenet", "none"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out-real"))
    args = p.parse_args()
    args.mosaic_mix = [float(v) for v in args.mosaic_mix.split(",") if v.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if not WSSS.is_dir() or not A0SK.is_dir():
        raise SystemExit(f"real data not found under {DATA}")
    res = run(args)
    text = table(res)
    print(text)
    io.write_text(args.out / "real.md", text + "\n")
    io.write_json(args.out / "real.json", res)


if __name__ == "__main__":
    main()
