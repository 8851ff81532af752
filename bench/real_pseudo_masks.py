"""Pseudo-masks of a real region from the labels of its 224 px patches only, against its real mask.

The 140 BCSS-WSSS training patches of TCGA-A1-A0SK are the 224 px grid of
``../shared/data/bcss/region-a0sk`` (column-major, 10 a column: patch ``+i`` at x = 224 (i // 10),
y = 224 (i % 10)). Given a stage-1 classifier of method ``cam`` trained on the BCSS-WSSS
training patches (``tissueseg train configs/weak.yaml --manifest <tile --layout bcss-wsss>``:
``<out>/classifier/last.pt``), this makes the CAM pseudo-mask of every A0SK patch from its
``[abcd]`` flags, puts them back on the grid and scores them (``bcss-wsss4``, every other code
ignored) beside the label grid's pseudo-masks from the same labels; with ``--segmenter``, also
the stage-2 model's prediction of the region (flip-averaged), alone, restricted to each
patch's labels, and with the classifier's local gate (as ``cam.local_gate`` applies it). Prints a table.

Run: python bench/real_pseudo_masks.py CLASSIFIER.pt [--tta flip] [--refine 0] [--prototypes 3]
    [--presence-power 0] [--local-presence-power 0] [--segmenter LAST.pt] [--gate-window 64] [--gate-power 4]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from fitloop import predict_probs, to_input  # bench/fitloop.py
from tissueseg import io
from tissueseg.checkpoint import load_predictor
from tissueseg.config import CamConfig
from tissueseg.metrics import confusion_matrix, scores
from tissueseg.schemes import bcss_wsss4
from tissueseg.weak import cam
from tissueseg.weak.pseudomask import pseudo_mask as grid_pseudo_mask

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NAME = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"
PATCH = 224


def a0sk_labels() -> tuple[np.ndarray, np.ndarray]:
    """``(corners (140, 2), labels (140, 4))`` of the A0SK patches from their file names."""
    corners, labels = [], []
    for path in sorted((SHARED / "bcss-wsss-sample" / "training").glob(f"{NAME}+*.png")):
        index, flags = re.match(r".*\+(\d+)\[([01]{4})\]", path.stem).groups()
        corners.append((PATCH * (int(index) // 10), PATCH * (int(index) % 10)))
        labels.append([int(c) for c in flags])
    return np.array(corners), np.array(labels, np.uint8)


def score(mask: np.ndarray, truth: np.ndarray) -> dict:
    names = bcss_wsss4().names
    sc = scores(confusion_matrix(mask, truth, len(names)), names)
    iou = {n: sc["per_class"][n]["iou"] for n in names}
    return {"iou": iou, "mean3": float(np.mean([iou["tumor"], iou["stroma"], iou["necrosis"]])),
            "coverage": sc["coverage"]}


def table(title: str, rows: dict[str, np.ndarray], truth: np.ndarray) -> str:
    """A markdown table of each row's label map scored against ``truth``."""
    names = bcss_wsss4().names
    lines = [f"| {title} | " + " | ".join(names) + " | mean TUM/STR/NEC | coverage |", "|---" * (len(names) + 3) + "|"]
    for name, mask in rows.items():
        s = score(mask, truth)
        lines.append(f"| {name} | " + " | ".join(f"{s['iou'][n]:.3f}" for n in names)
                     + f" | {s['mean3']:.3f} | {s['coverage']:.3f} |")
    return "\n".join(lines)


def a0sk_region() -> tuple[np.ndarray, np.ndarray]:
    """The A0SK region's pixels and its real mask in ``bcss-wsss4`` classes."""
    region = SHARED / "bcss" / "region-a0sk"
    rgb = io.read_image(region / "rgbs_colorNormalized" / f"{NAME}.png")
    return rgb, bcss_wsss4().apply(io.read_mask(region / "masks" / f"{NAME}.png"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("classifier", type=Path)
    p.add_argument("--tta", default="flip", choices=["none", "flip", "d4"])
    p.add_argument("--refine", type=int, default=0, help="guided-filter radius (0: none)")
    p.add_argument("--prototypes", type=int, default=3, help="iterations of image-specific prototypes (0: none)")
    p.add_argument("--presence-power", type=float, default=CamConfig().presence_power,
                   help="power of the patch presence weighing the maps (0: none; default: cam.presence_power)")
    p.add_argument("--local-presence-power", type=float, default=CamConfig().local_presence_power,
                   help="power of the local presence weighing the scores (0: none; default: cam.local_presence_power)")
    p.add_argument("--segmenter", type=Path, help="a stage-2 checkpoint (<out>/last.pt): rows for its prediction "
                                                   "of the region, alone and restricted to the patch labels")
    p.add_argument("--gate-window", type=int, default=CamConfig().local_gate,
                   help="window of the local gate row (px; default: cam.local_gate)")
    p.add_argument("--gate-power", type=float, default=CamConfig().local_gate_power,
                   help="power of the local gate row's probabilities (default: cam.local_gate_power)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rgb, truth = a0sk_region()
    corners, labels = a0sk_labels()
    classifier = load_predictor(args.classifier)
    prep = classifier.preprocessing
    options = cam.CamOptions(tta=args.tta, refine_radius=args.refine, prototypes=args.prototypes,
                             presence_power=args.presence_power, local_presence_power=args.local_presence_power)
    rows = {"cam": cam.region_pseudo_mask(classifier.model, rgb, corners, PATCH, labels, (prep.mean, prep.std),
                                          options)}
    grid = np.zeros((truth.shape[0] // PATCH, truth.shape[1] // PATCH, 4), np.uint8)
    grid[corners[:, 1] // PATCH, corners[:, 0] // PATCH] = labels
    rows["label grid"] = grid_pseudo_mask(grid, PATCH, truth.shape)
    if args.segmenter is not None:
        seg = load_predictor(args.segmenter)
        probs = predict_probs(seg.model, rgb, (seg.preprocessing.mean, seg.preprocessing.std))
        rows["stage 2 alone"] = probs.argmax(0).numpy().astype(np.uint8)
        rows["stage 2 restricted to the labels"] = cam.restrict_region(probs, corners, PATCH, labels)
        with torch.no_grad():
            local = classifier.model.local_presence(to_input(rgb[None], prep.mean, prep.std), args.gate_window)[0]
        rows[f"stage 2 with the local gate ({args.gate_window} px, power {args.gate_power:g})"] = (
            probs * local ** args.gate_power).argmax(0).numpy().astype(np.uint8)
    print(table("pseudo-masks from 224 px patch labels", rows, truth))


if __name__ == "__main__":
    main()
