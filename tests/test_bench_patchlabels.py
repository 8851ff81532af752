"""bench/fitloop.py and bench/quality.py pieces of the patch-label methods, on hand-made inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fitloop import concat_batches, mosaic_batches, patch_batches  # noqa: E402
from quality import labelled_patches, parse, pm_scores  # noqa: E402

from tissueseg.schemes import IGNORE  # noqa: E402
from tissueseg.weak.mosaic import Mosaics  # noqa: E402


def test_patch_batches_keep_labels_and_are_deterministic():
    patches = np.zeros((3, 8, 8, 3), np.uint8)
    for i in range(3):
        patches[i, :, :4] = 50 * (i + 1)  # patch i: value 50(i+1) on one half, its label i
    labels = np.eye(3, dtype=np.uint8)
    a, b = patch_batches(patches, labels, 6, seed=1), patch_batches(patches, labels, 6, seed=1)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert xa.shape == (6, 8, 8, 3) and ya.dtype == np.float32
        np.testing.assert_array_equal(ya.argmax(1), xa.max(axis=(1, 2, 3)) // 50 - 1)  # labels follow their patch
        assert ((xa > 0).sum(axis=(1, 2, 3)) == 32 * 3).all()  # half of each patch, rotated or flipped


def test_mosaic_and_crop_batches_concatenate():
    rgb = np.zeros((32, 32, 3), np.uint8)
    src = pd.DataFrame([("a", 0, 0, 32, 32, 1)], columns=["image_path", "x", "y", "w", "h", "class"])
    ds = Mosaics(src, {"a": rgb}.__getitem__, size=16, tile=8, length=5, seed=0)
    real = iter(lambda: (np.ones((3, 16, 16, 3), np.uint8), np.zeros((3, 16, 16), np.uint8)), None)
    x, y = next(concat_batches(real, mosaic_batches(ds, 2)))
    assert x.shape == (5, 16, 16, 3) and (y[:3] == 0).all() and (y[3:] == 1).all()


def test_labelled_patches_pad_the_edges_and_drop_patches_without_roi():
    lab = np.full((40, 50), IGNORE, np.uint8)
    lab[:20, :20] = 0
    lab[:20, 20:] = 1
    lab[20:, :20] = 2
    rgb = np.zeros((40, 50, 3), np.uint8)
    corners, labels, pix, flat = labelled_patches([(rgb, lab)], 20, 3)
    # grid 20 px with pad: x 0, 20, 40 and y 0, 20; patches (20,20) and (40,20) have no ROI
    assert corners[0].tolist() == [[0, 0], [20, 0], [40, 0], [0, 20]]
    assert labels[0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert pix.shape == (4, 20, 20, 3) and (pix[2][:, 10:] == 255).all()  # past the region: white
    np.testing.assert_array_equal(flat, labels[0])


def test_pseudo_mask_scores_and_coverage():
    lab = np.array([[0, 0, 1, 1]], np.uint8)
    pm = np.array([[0, 1, 1, IGNORE]], np.uint8)
    sc = pm_scores([(None, pm)], [(None, lab)], 2, ["a", "b"])
    assert sc["pm_coverage"] == 0.75
    assert sc["pm_iou"] == {"a": 0.5, "b": 0.5}


def test_method_names():
    assert parse("cam@256+gf+gate") == ("cam", 256, frozenset({"gf", "gate"}))
    assert parse("lse@224") == ("lse", 224, frozenset())
    assert parse("full") == ("full", None, frozenset())
    with pytest.raises(SystemExit, match="unknown options"):
        parse("cam@256+nope")
    with pytest.raises(SystemExit, match="unknown options"):
        parse("lse@256+gf")


def test_pseudo_masks_with_label_sets_round_trip():
    from quality import set_loss, with_label_sets

    mask = np.array([[0, 1, 1, IGNORE]], np.uint8)
    t = with_label_sets(mask, np.array([[0, 0], [2, 0]]), 2, np.array([[1, 1, 0], [0, 1, 1]]))
    assert ((t >> 16) & 0xFF).tolist() == [[0, 1, 1, IGNORE]] and (t & 0xFFFF).tolist() == [[3, 3, 6, 6]]
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1:] = 20.0  # right on the mask and inside every set
    model = lambda x: logits  # noqa: E731
    target = torch.from_numpy(t)[None]
    assert set_loss(1.0)(model, None, target) < 1e-6
    logits[0, 2, 0, 3] = 40.0  # class 2 at the ignored pixel of a {1, 2} patch: still allowed
    assert set_loss(1.0)(model, None, target) < 1e-6
    logits[0, 2, 0, 0] = 40.0  # class 2 in the {0, 1} patch: wrong twice
    ce, both = set_loss(0.0)(model, None, target), set_loss(1.0)(model, None, target)
    assert both > ce + 4 > 10  # the label-set term adds its own penalty
    torch.testing.assert_close(set_loss(0.5)(model, None, target), (ce + both) / 2)


def test_balanced_patch_batches_favour_rare_classes():
    patches = np.zeros((10, 4, 4, 3), np.uint8)
    labels = np.zeros((10, 2), np.uint8)
    labels[:9, 0] = 1
    labels[9, 1] = 1  # one patch of the rare class
    rare = lambda balanced: np.mean([y[:, 1].mean() for _, y in  # noqa: E731
                                     (next(g) for g in [patch_batches(patches, labels, 400, 0, balanced)])])
    assert rare(False) < 0.2 and 0.4 < rare(True) < 0.6


def test_real_mosaic_sources_are_the_single_label_patches(tmp_path):
    from real_mosaics import training_patches

    from tissueseg import io
    from tissueseg.schemes import bcss_wsss4
    from tissueseg.weak.mosaic import single_label_sources

    flags = ["1000", "1100", "0001", "0000", "0110"]
    for i, f in enumerate(flags):
        io.write_png(tmp_path / f"TCGA-A1-A0SK-DX1_xmin1_ymin2_MPP-0.2500+{i}[{f}].png", np.full((6, 5, 3), 10 * i, np.uint8))
    df, images, labels = training_patches(tmp_path)
    assert images.shape == (5, 6, 5, 3) and labels.tolist() == [[int(c) for c in f] for f in flags]
    assert images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40]  # each image with its own name's labels
    src = single_label_sources(df, bcss_wsss4())
    assert src["class"].tolist() == [0, 3]  # tumour, necrosis: the patches with one label
    assert src["image_path"].tolist() == [df["image_path"][0], df["image_path"][2]]
    assert (src[["x", "y", "w", "h"]].to_numpy() == [0, 0, 5, 6]).all()


def test_best_split_moves_each_mixed_patch_to_its_truth():
    from real_full_halves import best_split
    from real_pseudo_masks import PATCH

    ramp = np.linspace(0, 1, PATCH, dtype=np.float32)[None].repeat(PATCH, 0)  # 0 at the left, 1 at the right
    scores = torch.zeros((4, PATCH, 2 * PATCH))
    scores[0], scores[1] = torch.from_numpy(np.tile(1 - ramp, 2)), torch.from_numpy(np.tile(ramp, 2))
    corners = np.array([[0, 0], [PATCH, 0]])
    labels = np.array([[1, 1, 0, 0], [0, 1, 0, 0]], np.uint8)  # tumour + stroma; stroma alone
    truth = np.full((PATCH, 2 * PATCH), 1, np.uint8)
    truth[:, :150] = 0  # tumour up to x = 150; the scores alone split at x = 112
    out = best_split(scores, corners, labels, truth)
    plain = (scores[0, :, :PATCH] > scores[1, :, :PATCH]).numpy()
    assert (plain == (truth[:, :PATCH] == 0)).mean() < 0.9
    assert (out[:, :PATCH] == truth[:, :PATCH]).mean() > 0.99  # the bias found on the truth
    assert (out[:, PATCH:] == 1).all()  # a single-label patch is its label whole


def test_probe_scores_learn_the_truth_of_the_training_patches_only():
    from real_full_halves import probe_scores
    from real_pseudo_masks import PATCH

    truth = np.zeros((PATCH, 2 * PATCH), np.uint8)
    truth[: PATCH // 2] = 2  # class 2 above, class 0 below, in both patches
    truth[:8, :8] = IGNORE
    features = torch.zeros((2, 2, 4, 4))
    features[:, 0, 2:], features[:, 1, :2] = 1, 1  # channel 1 above, channel 0 below
    corners = np.array([[0, 0], [PATCH, 0]])
    probs = probe_scores(features, corners, truth, 4, np.array([True, False]), seed=0)
    assert probs.shape == (4, PATCH, 2 * PATCH)
    assert (probs[:, :, :PATCH] == 0).all()  # the training patch is not predicted
    right = probs[:, :, PATCH:].argmax(0).numpy()
    assert (right[: PATCH // 2 - 32] == 2).all() and (right[PATCH // 2 + 32 :] == 0).all()
    torch.testing.assert_close(probs[:, :, PATCH:].sum(0), torch.ones((PATCH, PATCH)))
