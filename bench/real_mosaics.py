"""PistoSeg's route on real pixels: a segmenter trained on mosaics of single-label patches only.

The 77 single-label patches of ``../shared/data/bcss-wsss-sample/training`` (labels from
their file names only) are cut into ``--tile`` px squares and stitched into 224 px mosaics
whose masks are exact (:class:`tissueseg.weak.mosaic.Mosaics`, classes drawn
balanced); DeepLabv3+ learns from them for ``--steps`` x ``--batch``. Its prediction of
``bcss/region-a0sk`` (flip-averaged), alone and restricted to the ``[abcd]`` labels of the
140 A0SK patches (the pseudo-masks PistoSeg trains its second round on), is scored against
the region's real mask. With ``--round2 STEPS``, a fresh DeepLabv3+ then learns for that many
steps from all 238 training patches with those label-restricted pseudo-masks (PistoSeg's
second round), scored the same way. With ``--classifier``, rows for the ``cam`` pseudo-masks
of the same patches (prototypes) and for the mean of their scores and the mosaic model's
probabilities. Prints a table.

Run: python bench/real_mosaics.py [--steps 300] [--batch 8] [--tile 32] [--seed 0] [--round2 300] [--classifier CLS.pt]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fitloop import crops, fit, mosaic_batches, predict_probs  # bench/fitloop.py
from real_pseudo_masks import PATCH, SHARED, a0sk_labels, a0sk_region, table
from tissueseg import io
from tissueseg.checkpoint import load_predictor
from tissueseg.models import ModelConfig, build_model, normalization
from tissueseg.data import label_columns
from tissueseg.schemes import IGNORE, bcss_wsss4
from tissueseg.weak import cam
from tissueseg.weak.mosaic import Mosaics, single_label_sources
from tissueseg.weak.prototypes import prototype_scores
from tissueseg.weaklabels import read_weak_folder


def training_patches(folder: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The table of a BCSS-WSSS ``training/`` folder (:func:`~tissueseg.weaklabels.read_weak_folder`), its
    uint8 images ``(N, 224, 224, 3)`` and multi-hot ``[abcd]`` labels ``(N, 4)`` from the file names."""
    df = read_weak_folder(folder, "bcss-wsss")
    labels = df[label_columns(df, bcss_wsss4())].to_numpy(np.uint8)
    return df, np.stack([io.read_image(p) for p in df["image_path"]]), labels


def cam_scores(classifier: torch.nn.Module, rgb: np.ndarray, corners: np.ndarray, labels: np.ndarray,
               normalize: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The default ``cam`` scores ``(K, H, W)`` of every labelled patch of a region (maps restricted,
    prototypes) and the prototypes' features of every patch ``(N, C, h, w)``."""
    out, features = torch.zeros((labels.shape[1], *rgb.shape[:2])), []
    for s in range(0, len(corners), 16):
        chunk = corners[s : s + 16]
        batch = np.stack([rgb[y : y + PATCH, x : x + PATCH] for x, y in chunk])
        maps, feats = cam.patch_cams_and_features(classifier, batch, normalize)
        features.append(feats)
        for (x, y), m, f, lab in zip(chunk, maps, feats, labels[s : s + 16]):
            out[:, y : y + PATCH, x : x + PATCH] = prototype_scores(f, cam.restrict_to_labels(m, lab), lab, 3)
    return out, torch.cat(features)


def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y.long(), ignore_index=IGNORE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tile", type=int, default=32, help="mosaic tile side (px; 224 must be a multiple)")
    p.add_argument("--white", type=int, default=None, help="grey level above which mosaic pixels are ignored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round2", type=int, default=0, help="steps of a second round on all patches' pseudo-masks (0: none)")
    p.add_argument("--classifier", type=Path, help="a cam stage-1 checkpoint: rows for its pseudo-masks and the mean")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    table_df, patches, patch_labels = training_patches(SHARED / "bcss-wsss-sample" / "training")
    sources = single_label_sources(table_df, bcss_wsss4())
    images = dict(zip(table_df["image_path"], patches))
    print("single-label patches per class:", sources["class"].value_counts().sort_index().to_dict())
    cfg = ModelConfig(weights="imagenet")
    norm = normalization(cfg)
    data = Mosaics(sources, images.__getitem__, size=PATCH, tile=args.tile, length=10**9, seed=args.seed,
                   white=args.white)
    torch.manual_seed(args.seed)
    model = build_model(cfg, 4)
    start = time.perf_counter()
    fit(model, mosaic_batches(data, args.batch), loss, args.steps, norm, desc="mosaics")
    seconds = time.perf_counter() - start
    rgb, truth = a0sk_region()
    corners, labels = a0sk_labels()
    probs = predict_probs(model, rgb, norm)
    rows = {"mosaic model alone": probs.argmax(0).numpy().astype(np.uint8),
            "mosaic model restricted to the labels": cam.restrict_region(probs, corners, PATCH, labels)}
    if args.round2:
        pm = [cam.restrict_region(predict_probs(model, x, norm), np.zeros((1, 2), np.int64), PATCH, lab[None])
              for x, lab in zip(patches, patch_labels)]
        torch.manual_seed(args.seed)
        model2 = build_model(cfg, 4)
        start = time.perf_counter()
        fit(model2, crops(list(zip(patches, pm)), PATCH, args.batch, args.seed + 1), loss, args.round2, norm,
            desc="round 2")
        seconds += time.perf_counter() - start
        probs2 = predict_probs(model2, rgb, norm)
        rows["round 2 alone"] = probs2.argmax(0).numpy().astype(np.uint8)
        rows["round 2 restricted to the labels"] = cam.restrict_region(probs2, corners, PATCH, labels)
    if args.classifier is not None:
        classifier = load_predictor(args.classifier)
        prep = classifier.preprocessing
        scores, _ = cam_scores(classifier.model, rgb, corners, labels, (prep.mean, prep.std))
        rows["cam pseudo-masks (default: prototypes)"] = cam.restrict_region(scores, corners, PATCH, labels)
        rows["mean of cam scores and mosaic probabilities, restricted"] = cam.restrict_region(
            (scores + probs) / 2, corners, PATCH, labels)
    print(f"\nmosaics: {args.steps} steps x {args.batch}, tile {args.tile} px, seed {args.seed}, round 2 {args.round2} "
          f"steps; training {seconds:.0f} s")
    print(table("A0SK from 224 px patch labels", rows, truth))


if __name__ == "__main__":
    main()
