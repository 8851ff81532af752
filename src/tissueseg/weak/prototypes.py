"""Image-specific prototypes: a patch's class maps redrawn by the similarity of its own features.

A patch classifier's class map is high where a class is most *discriminative*, which is often
only part of where the class *is* (Chen et al. 2022, SIPE). Inside one patch the pixels of a
class resemble each other more than they resemble the patch's other classes, so the maps can
seed a better split: :func:`prototype_scores` takes each pixel's best class among the patch's
labels as a seed, makes each class's *prototype* the mean of its seeds' features, scores every
pixel by its cosine similarity to every prototype, and redraws the seeds from those scores,
``iters`` times (a k-means whose clusters are the patch's labels, started from the class maps).

The features are the classifier's encoder features of every depth
(:meth:`~tissueseg.models.classifier.PatchClassifier.forward_features`), each normalised
per pixel, at the shallowest depth's resolution and concatenated (:func:`feature_stack`);
:func:`~.cam.patch_cams_and_features` averages them over the test-time augmentations,
from the same encoder passes as the class maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def feature_stack(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(N, C, h, w)``: encoder features of every depth L2-normalised over their channels, resized
    to the shallowest depth's grid and concatenated (what :func:`prototype_scores` compares)."""
    size = tuple(levels[0].shape[-2:])
    return torch.cat([F.normalize(F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False), dim=1)
                      for f in levels], dim=1)


def crop_margin(features: torch.Tensor, margin: int, width: int) -> torch.Tensor:
    """``features`` of an input ``width`` px wide without its ``margin`` px of context (scaled to their grid)."""
    if not margin:
        return features
    m = int(round(margin * (features.shape[-1] / width)))
    return features[..., m : features.shape[-2] - m, m : features.shape[-1] - m]


def prototype_scores(features: torch.Tensor, scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                     iters: int = 3) -> torch.Tensor:
    """``(K, H, W)`` scores in [0, 1] of a patch's labelled classes by similarity to its own class prototypes.

    ``features`` ``(C, h, w)`` (:func:`~.cam.patch_cams_and_features`), ``scores`` ``(K, H, W)`` the class
    maps restricted to the labels (:func:`~.cam.restrict_to_labels`; seeds: the best labelled
    class at every feature pixel), ``labels`` ``(K,)`` multi-hot. The score of a labelled class
    is ``(1 + cos) / 2`` to its prototype, bilinearly resized to ``(H, W)``; absent classes
    score 0. A patch with fewer than two labels, or ``iters`` 0, returns ``scores`` as given.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    classes = torch.from_numpy(np.flatnonzero(np.asarray(labels).reshape(-1) > 0))
    if classes.numel() < 2 or iters < 1:
        return scores
    f = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=0)
    small = F.interpolate(scores[None], size=tuple(f.shape[-2:]), mode="bilinear", align_corners=False)[0]
    seeds = small[classes].argmax(dim=0)
    for _ in range(iters):
        hot = F.one_hot(seeds, classes.numel()).permute(2, 0, 1).to(f)  # (L, h, w)
        prototypes = F.normalize(torch.einsum("lhw,chw->lc", hot, f), dim=1)
        similarity = torch.einsum("lc,chw->lhw", prototypes, f)
        seeds = similarity.argmax(dim=0)
    out = torch.zeros((scores.shape[0], *small.shape[-2:]))
    out[classes] = (similarity + 1) / 2
    return F.interpolate(out[None], size=tuple(scores.shape[-2:]), mode="bilinear", align_corners=False)[0]
