"""Losses on tiny maps with values worked out by hand (numpy) in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tissueseg.losses import build_loss

# two classes on a 2x2 map, one image
MAPS = np.array([[[[1.0, 3.0], [0.0, -1.0]],
                  [[2.0, 0.0], [4.0, 1.0]]]])


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _bce(p_logit, y):
    return -(y * np.log(_sig(p_logit)) + (1 - y) * np.log(1 - _sig(p_logit)))


def _lsm(v):
    v = np.asarray(v, dtype=float)
    return v - np.log(np.exp(v).sum())


def test_ce_matches_hand_value_and_ignores_pixels():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    loss = build_loss("ce")(logits, target)
    assert loss.item() == pytest.approx(-_lsm([2.0, 0.0])[0])
    all_ignored = build_loss("ce")(logits, torch.full((1, 1, 2), 255))
    assert all_ignored.item() == 0.0


def test_ce_class_weights_weighted_mean():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    target = torch.tensor([[[0, 1]]])
    w = torch.tensor([1.0, 3.0])
    loss = build_loss("ce", class_weights=w)(logits, target)
    l0, l1 = -_lsm([2.0, 0.0])[0], -_lsm([0.0, 1.0])[1]
    assert loss.item() == pytest.approx((1 * l0 + 3 * l1) / 4)


def test_mil_max_value_and_gradient_only_at_maxima():
    maps = torch.tensor(MAPS, requires_grad=True)
    labels = torch.tensor([[1.0, 1.0]])
    loss = build_loss("mil-max")(maps, labels)
    # class 0 max at (0,1): scores (3, 0); class 1 max at (1,0): scores (0, 4)
    expected = (-_lsm([3.0, 0.0])[0] - _lsm([0.0, 4.0])[1]) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    nonzero = maps.grad[0].abs().sum(0) > 0
    assert nonzero.tolist() == [[False, True], [True, False]]


def test_mil_max_absent_class_and_background():
    maps = torch.tensor(MAPS, requires_grad=True)
    only1 = build_loss("mil-max")(maps, torch.tensor([[0.0, 1.0]]))
    assert only1.item() == pytest.approx(-_lsm([0.0, 4.0])[1])
    # background (class 0) always present even though its label is 0
    with_bg = build_loss("mil-max", background_index=0)(maps, torch.tensor([[0.0, 1.0]]))
    assert with_bg.item() == pytest.approx((-_lsm([3.0, 0.0])[0] - _lsm([0.0, 4.0])[1]) / 2)
    # an image with no present class is left out of the batch mean
    batch = torch.cat([maps, maps])
    mixed = build_loss("mil-max")(batch, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    assert mixed.item() == pytest.approx(only1.item())


def test_sigmoid_max_lse_topk_hand_values():
    maps = torch.tensor(MAPS)
    labels = torch.tensor([[1.0, 0.0]])
    flat = MAPS.reshape(2, 4)
    mx = flat.max(1)
    assert build_loss("sigmoid-max")(maps, labels).item() == pytest.approx(
        (_bce(mx[0], 1) + _bce(mx[1], 0)) / 2)
    r = 2.0
    lse = np.log(np.exp(r * flat).mean(1)) / r
    assert build_loss("lse", r=r)(maps, labels).item() == pytest.approx((_bce(lse[0], 1) + _bce(lse[1], 0)) / 2)
    top2 = np.sort(flat, 1)[:, -2:].mean(1)  # k=0.5 of 4 pixels -> 2
    assert build_loss("topk", k=0.5)(maps, labels).item() == pytest.approx((_bce(top2[0], 1) + _bce(top2[1], 0)) / 2)


def test_lse_is_stable_and_tends_to_max_and_mean():
    big = torch.full((1, 1, 4, 4), 500.0)
    big[0, 0, 0, 0] = 600.0
    loss = build_loss("lse", r=50.0)(big, torch.ones(1, 1))
    assert torch.isfinite(loss)
    from tissueseg.losses import lse_pool
    maps = torch.tensor(MAPS)
    assert torch.allclose(lse_pool(maps, 1000.0), maps.flatten(2).amax(2), atol=0.01)
    assert torch.allclose(lse_pool(maps, 1e-4), maps.flatten(2).mean(2), atol=1e-3)


def test_bce_losses_class_weights_and_background():
    maps = torch.tensor(MAPS)
    mx = MAPS.reshape(2, 4).max(1)
    w = torch.tensor([2.0, 0.0])
    loss = build_loss("sigmoid-max", class_weights=w, background_index=1)(maps, torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx((2 * _bce(mx[0], 1) + 0 * _bce(mx[1], 1)) / 2)


def test_bad_loss_settings():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("dice")
    with pytest.raises(ValueError, match="topk"):
        build_loss("topk", k=0.0)
    with pytest.raises(ValueError, match="sharpness"):
        build_loss("lse", r=-1)
    assert math.isfinite(build_loss("topk", k=1.0)(torch.zeros(1, 2, 3, 3), torch.ones(1, 2)).item())
