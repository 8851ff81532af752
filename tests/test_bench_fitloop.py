"""bench/fitloop.py: the bench's crop sampler, label-set losses and TTA, on hand-made inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fitloop import crop_bits, crops, decode, encode, labelset_loss, predict_probs, presence_loss  # noqa: E402


def test_encode_decode_round_trip_and_crop_bits():
    g = np.array([[[1, 0, 0], [1, 1, 0]], [[0, 0, 1], [0, 0, 0]]], np.uint8)
    bits = encode(g)
    assert bits.tolist() == [[1, 3], [4, 0]]
    back = decode(torch.from_numpy(bits)[None], 3)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(back, g.astype(bool))
    c = crop_bits(bits, 2, x=-1, y=1, w=4, h=4)  # one column left of the region, rows 1..4
    assert c.tolist() == [[0, 1, 1, 3], [0, 4, 4, 0], [0, 4, 4, 0], [0, 0, 0, 0]]


def test_labelset_loss_is_cross_entropy_on_pure_cells_and_ignores_zero():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    bits = (1 << target).long()
    bits[0, 0] = 0  # ignored row
    expected = F.cross_entropy(logits, target.masked_fill(bits == 0, 255), ignore_index=255)
    assert torch.allclose(labelset_loss(logits, bits), expected, atol=1e-6)


def test_labelset_loss_on_a_mixed_set_by_hand():
    logits = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    p = np.exp([1.0, 2.0, 0.5]) / np.exp([1.0, 2.0, 0.5]).sum()
    assert labelset_loss(logits, torch.tensor([[[0b011]]])).item() == pytest.approx(-np.log(p[0] + p[1]), rel=1e-5)
    assert labelset_loss(logits, torch.tensor([[[0b111]]])).item() == pytest.approx(0.0, abs=1e-6)


def test_presence_loss_by_hand_and_its_gradient():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    with torch.no_grad():
        logits[0, 0] = torch.tensor([[3.0, 1.0], [0.0, -1.0]])
    bits = torch.full((1, 2, 2), 0b11)
    lp = torch.log_softmax(logits.detach(), 1)[0].reshape(2, 4).numpy()
    loss = presence_loss(logits, bits, cell=2, k=0.5)  # top 2 of 4 pixels per class
    expected = -np.mean([np.sort(lp[0])[-2:].mean(), np.sort(lp[1])[-2:].mean()])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    top1 = presence_loss(logits, bits, cell=2, k=0.25)  # class 0 peaks at (0, 0), class 1 at (1, 1)
    assert top1.item() == pytest.approx(-(lp[0].max() + lp[1].max()) / 2, rel=1e-5)
    top1.backward()
    g = logits.grad[0].abs().sum(0)
    assert g[0, 0] > 0 and g[1, 1] > 0 and g[0, 1] == 0 and g[1, 0] == 0  # only the pooled pixels learn
    assert presence_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long), cell=2).item() == 0.0
    with pytest.raises(ValueError, match="multiple"):
        presence_loss(torch.zeros(1, 2, 3, 3), torch.ones(1, 3, 3, dtype=torch.long), cell=2)


def test_crops_are_aligned_consistent_and_seeded():
    h, w = 32, 48
    yy, xx = np.mgrid[:h, :w]
    cells = (yy // 8) * 10 + xx // 8  # cell id of every pixel
    rgb = np.stack([cells, cells, cells], -1).astype(np.uint8)
    grid = np.arange(4 * 6).reshape(4, 6)
    grid = (grid // 6) * 10 + grid % 6  # the same ids, one per 8-px cell
    it = crops([(rgb, grid)], size=16, batch=6, seed=3, align=8)
    img, tgt = next(it)
    assert img.shape == (6, 16, 16, 3) and tgt.shape == (6, 16, 16)
    np.testing.assert_array_equal(img[..., 0], tgt)  # the grid expanded to pixels follows the image
    for t in tgt:  # aligned: every 8x8 block holds one cell id
        assert all(len(np.unique(t[i:i + 8, j:j + 8])) == 1 for i in (0, 8) for j in (0, 8))
    again, _ = next(crops([(rgb, grid)], size=16, batch=6, seed=3, align=8))
    np.testing.assert_array_equal(img, again)


def test_predict_probs_tta_sums_to_one_and_matches_an_equivariant_model():
    model = torch.nn.Conv2d(3, 4, kernel_size=1)
    rgb = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    p = predict_probs(model, rgb, norm, tta=True)
    assert p.shape == (4, 16, 24)
    assert torch.allclose(p.sum(0), torch.ones(16, 24), atol=1e-5)
    assert torch.allclose(p, predict_probs(model, rgb, norm, tta=False), atol=1e-5)
