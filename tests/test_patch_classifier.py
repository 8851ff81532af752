"""The multi-label patch classifier (stage 1 of the patch-label method) and its loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tissueseg.losses import multilabel, multilabel_sum
from tissueseg.models import encoders
from tissueseg.models.classifier import PatchClassifier, build_classifier, gap_logits

torch.set_num_threads(1)


@pytest.mark.parametrize(("output_stride", "reductions"), [(16, (8, 16, 16)), (None, (8, 16, 32)), (8, (8, 8, 8))])
def test_class_maps_at_every_depth_and_gap_logits(output_stride, reductions):
    model = build_classifier("tf_efficientnet_lite0", 4, weights="none", output_stride=output_stride).eval()
    assert isinstance(model, PatchClassifier) and model.reductions == reductions
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps, logits = model.forward_maps(x), model(x)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 64 // r, 96 // r) for r in reductions]
    per_depth = torch.stack([m.mean(dim=(2, 3)) for m in maps], dim=1)
    torch.testing.assert_close(gap_logits(maps), per_depth)
    torch.testing.assert_close(logits, per_depth.mean(dim=1))


def test_local_logits_of_a_window_larger_than_the_input_are_the_logits():
    model = build_classifier("tf_efficientnet_lite0", 4, weights="none").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        local, logits = model.local_logits(x, window=256), model(x)
    assert local.shape == (2, 4, 64, 96)
    torch.testing.assert_close(local, logits[:, :, None, None].expand_as(local))


def test_local_logits_average_the_class_maps_of_the_window_around_each_pixel():
    model = build_classifier("tf_efficientnet_lite0", 3, weights="none").eval()
    model.forward_maps = lambda x: [F.avg_pool2d(x, 8), F.avg_pool2d(x, 16)]  # class maps = the image's channels
    x = torch.zeros(1, 3, 64, 128)
    x[:, 0, :, :64] = 1.0  # class 0 on the left half only
    local = model.local_logits(x, window=32)
    assert float(local[0, 0, 32, :40].min()) > 0.99 and float(local[0, 0, 32, 88:].max()) < 0.01
    assert 0.3 < float(local[0, 0, 32, 64]) < 0.7  # on the edge: half the window
    assert float(local[0, 1:].abs().max()) == 0.0


def test_imagenet_weights_are_the_shipped_ones():
    model = build_classifier("tf_efficientnet_lite0", 3, weights="imagenet", depths=(1, 3))
    shipped = encoders.shipped_state_dict("tf_efficientnet_lite0")
    own = model.encoder.state_dict()
    assert len(model.heads) == 2 and model.reductions == (4, 16)
    for key in ("conv_stem.weight", "blocks.3.0.conv_pw.weight"):
        torch.testing.assert_close(own[key], shipped[key])


def test_bad_depths_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        build_classifier("tf_efficientnet_lite0", 3, weights="none", depths=(3, 2))
    with pytest.raises(ValueError, match="feature levels"):
        build_classifier("tf_efficientnet_lite0", 3, weights="none", depths=(2, 7))


def test_multilabel_loss_on_hand_made_maps():
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    fine = torch.zeros(2, 3, 4, 4)
    fine[0, 0, :2] = 8.0  # class 0 on half of image 0: mean 4
    fine[0, 2] = 2.0
    fine[1, 1, :, :1] = 12.0  # mean 3
    fine[:, :, 3, 3] -= 16.0  # absent classes pushed down at one pixel: mean -1
    fine[0, 0, 3, 3] += 16.0
    fine[0, 2, 3, 3] += 16.0
    fine[1, 1, 3, 3] += 16.0
    coarse = torch.full((2, 3, 2, 2), -5.0)
    coarse[0, 0] = coarse[0, 2] = coarse[1, 1] = 5.0
    pooled = torch.tensor([[4.0, -1.0, 2.0], [-1.0, 3.0, -1.0]])
    expected_fine = F.binary_cross_entropy_with_logits(pooled, labels)
    expected_coarse = F.binary_cross_entropy_with_logits(torch.where(labels > 0, 5.0, -5.0), labels)
    parts = multilabel_sum([fine, coarse], labels, weights=[1.0, 3.0])
    torch.testing.assert_close(parts.mean, 0.25 * expected_fine + 0.75 * expected_coarse)
    assert parts.count.item() == 6
    torch.testing.assert_close(parts.total / parts.count, parts.mean)
    torch.testing.assert_close(multilabel([fine], labels), expected_fine)
    wrong = multilabel([coarse], 1 - labels)
    assert wrong > 4.0 and multilabel([coarse], labels) < 0.01


def test_multilabel_loss_trains_every_pixel_of_a_present_class():
    maps = torch.zeros(1, 2, 3, 3, requires_grad=True)
    multilabel([maps], torch.tensor([[1.0, 0.0]])).backward()
    assert (maps.grad[0, 0] < 0).all() and (maps.grad[0, 1] > 0).all()


def test_multilabel_loss_refuses_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        multilabel_sum([torch.zeros(1, 2, 2, 2)], torch.ones(1, 2), weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="no class maps"):
        multilabel_sum([], torch.ones(1, 2))
