"""What full supervision reaches on the real A0SK region: the ceiling of its patch-label goal.

``bench/real_pseudo_masks.py`` scores pseudo-masks of ``bcss/region-a0sk`` made from the
``[abcd]`` labels of its 224 px patches. This trains DeepLabv3+ on the region's *real mask*
instead, two-fold: on the left half of the patch grid (7 of its 14 columns) for
``--steps`` x ``--batch`` random 224 px crops, scored on the right half, and the other way
round; the two predictions make one map of the region, scored alone and restricted to each
patch's labels (as the pseudo-masks are). With ``--classifier``, rows on the same pixels for
the default ``cam`` pseudo-masks of the same patches and for two oracles that read the real
mask: the ``cam`` scores with the tumour/stroma split of each ``[11..]`` patch moved to its
best on the truth (the most a per-patch bias can do), and a linear layer on the classifier's
features (what the prototypes compare) trained two-fold on the real mask like the full model
(what those features can separate at all). Prints a table.

Run: python bench/real_full_halves.py [--steps 300] [--batch 8] [--seed 0] [--classifier CLS.pt] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from fitloop import crops, fit, predict_probs  # bench/fitloop.py
from real_mosaics import cam_scores, loss
from real_pseudo_masks import PATCH, a0sk_labels, a0sk_region, table
from tissueseg.checkpoint import load_predictor
from tissueseg.models import ModelConfig, build_model, normalization
from tissueseg.schemes import IGNORE
from tissueseg.weak import cam

BIASES = np.linspace(-0.6, 0.6, 25)


def best_split(scores: torch.Tensor, corners: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(H, W)``: the label-restricted argmax of ``scores`` with the bias of :data:`BIASES` added to tumour (class 0)
    over stroma that scores best on the truth, chosen per patch labelled with both (an oracle)."""
    out = cam.restrict_region(scores, corners, PATCH, labels)
    for (x, y), lab in zip(corners, labels):
        t = truth[y : y + PATCH, x : x + PATCH]
        if not (lab[0] and lab[1]) or not (t < len(lab)).any():
            continue
        s = scores[:, y : y + PATCH, x : x + PATCH]
        masks = [cam.pseudo_mask(s + b * F.one_hot(torch.tensor(0), len(lab)).view(-1, 1, 1), lab) for b in BIASES]
        out[y : y + PATCH, x : x + PATCH] = max(masks, key=lambda m: (m == t)[t < len(lab)].mean())
    return out


def probe_scores(features: torch.Tensor, corners: np.ndarray, truth: np.ndarray, k: int, train: np.ndarray,
                 seed: int, pixels: int = 400, iters: int = 300) -> torch.Tensor:
    """``(k, H, W)`` softmax of a linear layer on the patches' ``features`` ``(N, C, h, w)``, trained (Adam,
    full batch) on ``pixels`` random labelled pixels of each patch where ``train`` ``(N,)`` is true. The other
    patches are predicted; every other pixel is 0."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for f, (x0, y0) in zip(features[train], corners[train]):
        t = truth[y0 : y0 + PATCH, x0 : x0 + PATCH]
        yy, xx = np.nonzero(t != IGNORE)
        pick = rng.choice(len(yy), min(pixels, len(yy)), replace=False)
        up = F.interpolate(f[None], size=t.shape, mode="bilinear", align_corners=False)[0]
        xs.append(up[:, yy[pick], xx[pick]].T)
        ys.append(torch.from_numpy(t[yy[pick], xx[pick]].astype(np.int64)))
    x, y = torch.cat(xs), torch.cat(ys)
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(iters):
        opt.zero_grad()
        F.cross_entropy(layer(x), y).backward()
        opt.step()
    out = torch.zeros((k, *truth.shape))
    with torch.no_grad():
        for f, (x0, y0) in zip(features[~train], corners[~train]):
            logits = torch.einsum("kc,chw->khw", layer.weight, f) + layer.bias.view(-1, 1, 1)
            out[:, y0 : y0 + PATCH, x0 : x0 + PATCH] = torch.softmax(
                F.interpolate(logits[None], size=(PATCH, PATCH), mode="bilinear", align_corners=False)[0], 0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", type=Path,
                   help="a cam stage-1 checkpoint: rows for its pseudo-masks and the two oracles")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rgb, truth = a0sk_region()
    corners, labels = a0sk_labels()
    split = PATCH * (truth.shape[1] // PATCH // 2)
    cfg = ModelConfig(weights="imagenet")
    norm = normalization(cfg)
    probs = torch.zeros((len(labels[0]), *truth.shape))
    start = time.perf_counter()
    halves = [(slice(0, split), slice(split, None)), (slice(split, None), slice(0, split))]
    for fold, (train, test) in enumerate(halves):
        torch.manual_seed(args.seed + fold)
        model = build_model(cfg, probs.shape[0])
        fit(model, crops([(rgb[:, train], truth[:, train])], PATCH, args.batch, args.seed + fold), loss, args.steps,
            norm, desc=f"fold {fold}")
        probs[:, :, test] = predict_probs(model, np.ascontiguousarray(rgb[:, test]), norm)
    seconds = time.perf_counter() - start
    rows = {"full, other half's real mask, alone": probs.argmax(0).numpy().astype(np.uint8),
            "full, other half's real mask, restricted to the labels":
                cam.restrict_region(probs, corners, PATCH, labels)}
    if args.classifier is not None:
        classifier = load_predictor(args.classifier)
        prep = classifier.preprocessing
        scores, features = cam_scores(classifier.model, rgb, corners, labels, (prep.mean, prep.std))
        rows["cam pseudo-masks from the patch labels (default)"] = cam.restrict_region(scores, corners, PATCH, labels)
        rows["oracle: cam scores, each patch's tumour/stroma bias chosen on the real mask"] = best_split(
            scores, corners, labels, truth)
        left = corners[:, 0] < split
        probe = sum(probe_scores(features, corners, truth, labels.shape[1], train, args.seed + fold)
                    for fold, train in enumerate([left, ~left]))
        rows["oracle: linear layer on the classifier's features, other half's real mask, restricted"] = (
            cam.restrict_region(probe, corners, PATCH, labels))
    print(f"\nfull supervision two-fold (halves split at x = {split} px): {args.steps} steps x {args.batch} per fold, "
          f"seed {args.seed}; training {seconds:.0f} s")
    print(table("A0SK, each half predicted by a model of the other", rows, truth))


if __name__ == "__main__":
    main()
