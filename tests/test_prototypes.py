"""Image-specific prototypes: class maps redrawn by the similarity of a patch's own features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tissueseg.weak import cam
from tissueseg.weak.prototypes import prototype_scores

torch.set_num_threads(1)
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _halves(h: int = 16, w: int = 16) -> torch.Tensor:
    """``(2, h, w)`` features: ``[1, 0]`` on the left half, ``[0, 1]`` on the right half."""
    f = torch.zeros((2, h, w))
    f[0, :, : w // 2] = 1
    f[1, :, w // 2 :] = 1
    return f


def _misplaced(h: int = 32, w: int = 32, boundary: int = 24) -> torch.Tensor:
    """``(3, h, w)`` class maps: class 0 wins left of ``boundary`` (the truth is ``w // 2``), class 1 right."""
    s = torch.zeros((3, h, w))
    s[0, :, :boundary] = 1.0
    s[1, :, boundary:] = 1.0
    s[1, :, :boundary] = 0.2
    s[2] = 0.9  # a class the patch does not hold
    return s


def test_prototypes_move_a_misplaced_boundary_onto_the_feature_edge():
    labels = np.array([1, 1, 0])
    out = prototype_scores(_halves(), _misplaced(), labels, iters=3)
    mask = cam.pseudo_mask(out, labels)
    assert (mask[:, :16] == 0).all() and (mask[:, 16:] == 1).all()
    assert (out[2] == 0).all()  # absent class
    assert out.shape == (3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    before = cam.pseudo_mask(_misplaced(), labels)
    assert (before[:, 16:24] == 0).all()  # the class maps alone put columns 16-23 wrong


def test_prototypes_leave_single_label_patches_and_zero_iterations_to_the_maps():
    for labels, iters in (([0, 1, 0], 3), ([1, 1, 0], 0)):
        scores = cam.restrict_to_labels(_misplaced(), np.array(labels))
        torch.testing.assert_close(prototype_scores(_halves(), scores, np.array(labels), iters), scores)


class ShiftedModel(torch.nn.Module):
    """A stand-in classifier whose features are the image's colours and whose class maps are them shifted
    8 px to the right (a class map that reaches past its class, as CAMs do)."""

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.avg_pool2d(x, 4)]

    def class_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.roll(f, shifts=2, dims=-1) for f in features]

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.class_maps(self.forward_features(x))


def _two_halves(h: int = 64, w: int = 64) -> np.ndarray:
    """Red left half, green right half."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2, 0] = 200
    rgb[:, w // 2 :, 1] = 200
    return rgb


def test_features_average_the_flips_keep_the_grid_and_come_with_the_same_maps_as_patch_cams():
    rgb = _two_halves()[None]
    maps, feats = cam.patch_cams_and_features(ShiftedModel(), rgb, IDENTITY, tta="flip")
    assert feats.shape == (1, 3, 16, 16)
    torch.testing.assert_close(feats[0, 0, :, :8], torch.ones(16, 8))  # red, normalised per pixel
    torch.testing.assert_close(feats[0, 1, :, 8:], torch.ones(16, 8))
    torch.testing.assert_close(maps, cam.patch_cams(ShiftedModel(), rgb, IDENTITY, tta="flip"), rtol=0, atol=0)
    padded = np.pad(rgb, ((0, 0), (8, 8), (8, 8), (0, 0)))
    maps, feats = cam.patch_cams_and_features(ShiftedModel(), padded, IDENTITY, tta="none", margin=8)
    assert feats.shape == (1, 3, 16, 16) and maps.shape == (1, 3, 64, 64)
    torch.testing.assert_close(maps, cam.patch_cams(ShiftedModel(), padded, IDENTITY, tta="none", margin=8), rtol=0, atol=0)


def test_pseudo_masks_with_prototypes_follow_the_features_not_the_shifted_maps():
    images, labels = _two_halves()[None], np.array([[1, 1, 0]])
    plain = cam.patch_pseudo_masks(ShiftedModel(), images, labels, IDENTITY, cam.CamOptions(weights=None, tta="none"))
    redrawn = cam.patch_pseudo_masks(ShiftedModel(), images, labels, IDENTITY,
                                     cam.CamOptions(weights=None, tta="none", prototypes=2))
    truth = np.zeros((64, 64), np.uint8)
    truth[:, 32:] = 1
    assert (plain[0] != truth).mean() > 0.05
    assert (redrawn[0] != truth).mean() < 0.02
