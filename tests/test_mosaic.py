"""Mosaics from single-label patches: exact masks, deterministic with the seed, usable as a Dataset."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tissueseg.data import StepSampler
from tissueseg.schemes import IGNORE, ClassDef, ClassScheme
from tissueseg.weak import mosaic

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)


def _scheme() -> ClassScheme:
    return ClassScheme("rgb", tuple(ClassDef(n, tuple(int(v) for v in c), (i + 1,))
                                    for i, (n, c) in enumerate(zip(("red", "green", "blue"), COLOURS))))


def _region() -> tuple[np.ndarray, np.ndarray]:
    """A 96 x 128 region of three coloured classes with noise (class from colour), and its labels."""
    labels = np.zeros((96, 128), np.uint8)
    labels[:, 40:] = 1
    labels[48:, 80:] = 2
    rng = np.random.default_rng(0)
    rgb = np.clip(COLOURS[labels].astype(int) + rng.integers(-20, 21, (96, 128, 3)), 0, 255).astype(np.uint8)
    return rgb, labels


def _manifest(labels: np.ndarray, size: int) -> pd.DataFrame:
    h, w = labels.shape
    rows = []
    for y in range(0, h, size):
        for x in range(0, w, size):
            win = labels[y : y + size, x : x + size]
            rows.append({"image_path": "r", "x": x, "y": y, "size": size, "width": w, "height": h,
                         **{f"label_{n}": int((win == i).any()) for i, n in enumerate(("red", "green", "blue"))}})
    return pd.DataFrame(rows)


def _class_of(rgb: np.ndarray) -> np.ndarray:
    return np.abs(rgb[..., None, :].astype(int) - COLOURS.astype(int)).sum(-1).argmin(-1)


def test_single_label_sources_are_clipped_to_the_region():
    rgb, labels = _region()
    src = mosaic.single_label_sources(_manifest(labels, 40), _scheme())
    # 40 px grid over 96 x 128: columns 0, 40, 80, 120; rows 0, 40, 80
    assert set(map(tuple, src[["x", "y", "class"]].to_numpy())) == {(0, 0, 0), (0, 40, 0), (0, 80, 0), (40, 0, 1),
                                                                     (40, 40, 1), (80, 0, 1), (120, 0, 1),
                                                                     (40, 80, 1), (80, 80, 2), (120, 80, 2)}
    row = src[(src["x"] == 120) & (src["y"] == 80)].iloc[0]
    assert (row["w"], row["h"]) == (8, 16)


def test_pure_sources_hold_one_class_and_no_ignore():
    _, labels = _region()
    labels = labels.copy()
    labels[0:4, 0:4] = IGNORE
    src = mosaic.pure_sources(labels, 16, "r")
    for _, r in src.iterrows():
        win = labels[r["y"] : r["y"] + 16, r["x"] : r["x"] + 16]
        assert (win == r["class"]).all()
    assert not ((src["x"] == 0) & (src["y"] == 0)).any()  # the ignored corner
    assert not ((src["x"] == 32) & (src["y"] == 0)).any()  # straddles the boundary at 40
    assert len(src) == 6 * 8 - 1 - 6  # 48 windows, minus the corner and the x=32 column (other edges on the grid)


def test_mosaic_masks_are_exact_and_sampling_is_deterministic():
    rgb, labels = _region()
    src = mosaic.single_label_sources(_manifest(labels, 40), _scheme())
    ds = mosaic.Mosaics(src, {"r": rgb}.__getitem__, size=64, tile=16, length=10, seed=3)
    image, mask = ds.arrays(4, epoch=1)
    np.testing.assert_array_equal(_class_of(image), mask)  # every pixel's colour is its mask's class
    assert len(np.unique(mask)) >= 2
    again = mosaic.Mosaics(src, {"r": rgb}.__getitem__, size=64, tile=16, length=10, seed=3)
    np.testing.assert_array_equal(again.arrays(4, epoch=1)[0], image)
    assert not np.array_equal(ds.arrays(5, epoch=1)[0], image)
    assert not np.array_equal(ds.arrays(4, epoch=2)[0], image)
    other = mosaic.Mosaics(src, {"r": rgb}.__getitem__, size=64, tile=16, length=10, seed=4)
    assert not np.array_equal(other.arrays(4, epoch=1)[0], image)


def test_balanced_mosaics_give_every_class_its_share():
    rgb, labels = _region()
    src = mosaic.single_label_sources(_manifest(labels, 40), _scheme())  # blue: 2 of 10 sources
    ds = mosaic.Mosaics(src, {"r": rgb}.__getitem__, size=64, tile=16, length=40, seed=0)
    counts = np.bincount(np.concatenate([ds.arrays(i)[1].ravel() for i in range(40)]), minlength=3)
    assert (counts / counts.sum() > 0.25).all()


def test_white_pixels_of_mosaics_are_ignored():
    rgb, labels = _region()
    rgb = rgb.copy()
    rgb[:, :40] = 245  # the red class is glass-white
    src = mosaic.single_label_sources(_manifest(labels, 40), _scheme())
    ds = mosaic.Mosaics(src, {"r": rgb}.__getitem__, size=64, tile=16, length=4, seed=0, white=200)
    image, mask = ds.arrays(0)
    assert ((mask == IGNORE) == (image.min(axis=-1) > 200)).all() and (mask == IGNORE).any()


def test_mosaic_refuses_sources_smaller_than_a_tile():
    src = pd.DataFrame([("r", 0, 0, 8, 8, 0)], columns=mosaic.SOURCE_COLUMNS)
    with pytest.raises(ValueError, match="at least 16x16"):
        mosaic.Mosaics(src, {"r": np.zeros((8, 8, 3), np.uint8)}.__getitem__, size=32, tile=16)


def test_mosaic_batches_make_the_end_of_every_global_batch_mosaics():
    steps = lambda start=0, rank=0, world=1: StepSampler(10, 8, seed=3, start=start, stop=4,  # noqa: E731
                                                         rank=rank, world=world)
    plain, mixed = list(steps()), list(mosaic.MosaicBatches(steps(), 0.5, offset=10))
    assert len(mixed) == 4
    for step, (a, b) in enumerate(zip(plain, mixed)):
        assert b[:4] == a[:4]  # the first half: the sampler's patches
        assert b[4:] == [(10 + 8 * step + p, 0) for p in range(4, 8)]  # the rest: mosaics numbered by position
    ranks = [list(mosaic.MosaicBatches(steps(rank=r, world=2), 0.5, offset=10)) for r in range(2)]
    for step, batch in enumerate(mixed):  # two processes take every other key of the same global batch
        assert ranks[0][step] == batch[0::2] and ranks[1][step] == batch[1::2]
    assert list(mosaic.MosaicBatches(steps(start=2), 0.5, offset=10)) == mixed[2:]  # a resumed run continues
    assert list(mosaic.MosaicBatches(steps(), 0.0, offset=10)) == plain
    with pytest.raises(ValueError, match="share 1"):
        mosaic.MosaicBatches(steps(), 1, offset=10)


def test_with_mosaics_serves_patches_and_mosaics_through_the_patch_pipeline():
    from tissueseg.data import PatchDataset

    rgb, labels = _region()
    df = _manifest(labels, 32)
    scheme = _scheme()
    patches = PatchDataset(df, scheme, SimpleNamespace(image={"r": rgb}.__getitem__), targets="masks",
                           label_source={"r": labels}.__getitem__, normalize=((0.5,) * 3, (0.25,) * 3))
    mosaics = mosaic.Mosaics(mosaic.single_label_sources(df, scheme), {"r": rgb}.__getitem__, size=32, tile=16,
                                   seed=2)
    ds = mosaic.WithMosaics(patches, mosaics)
    for key in [(0, 0), (3, 1)]:  # patch keys: the patches' own samples
        a, b = ds[key], patches[key]
        torch.testing.assert_close(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["labels"], b["labels"])
    n = len(patches)
    sample = ds[(n + 5, 0)]
    image, mask = mosaics.arrays(5)  # mosaic key n + 5: mosaic 5, normalised like the patches
    torch.testing.assert_close(sample["image"], (torch.from_numpy(image).permute(2, 0, 1) / 255.0 - 0.5) / 0.25)
    np.testing.assert_array_equal(sample["mask"].numpy(), mask)
    assert (_class_of(image) == mask).all() and sample["index"] == n + 5
    assert sample["labels"].tolist() == [float(c in np.unique(mask)) for c in range(3)]
    torch.testing.assert_close(pickle.loads(pickle.dumps(ds))[(n + 5, 0)]["image"], sample["image"])  # for workers
