"""Datasets over the manifest: crops, labels, label-only samples, caching, augmentation, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tissueseg import io
from tissueseg.augment import Augment
from tissueseg.data import PatchDataset, RegionCache, StepSampler, balanced_weights, class_pixel_counts
from tissueseg.manifest import load_manifest, tile_dataset
from tissueseg.schemes import IGNORE, bcss5

SIZE = 32


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """Two regions (noise images, block masks of codes 0/1/2/3/9) tiled with padding at the edge."""
    root = tmp_path_factory.mktemp("regions")
    rng = np.random.default_rng(0)
    pairs, arrays = [], {}
    for i, (h, w) in enumerate([(80, 100), (64, 72)]):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        codes = rng.choice(np.array([0, 1, 2, 3, 9], np.uint8), size=(h // 8 + 1, w // 8 + 1))
        codes = np.kron(codes, np.ones((8, 8), np.uint8))[:h, :w]
        name = f"TCGA-A{i}-AAA{i}-DX1_xmin0_ymin0_MPP-0.2500"
        ip, mp = io.write_png(root / "img" / f"{name}.png", rgb), io.write_png(root / "mask" / f"{name}.png", codes)
        pairs.append((ip, mp))
        arrays[str(ip.resolve())] = (rgb, codes)
    tile_dataset(pairs, root / "tiles", bcss5(), size=SIZE, stride=24, edge="pad", min_roi=0.0, split="none",
                 quiet=True)
    df, meta = load_manifest(root / "tiles")
    return df, arrays, root


def _dataset(regions, tmp_path, **kw):
    df, _, _ = regions
    return PatchDataset(df, bcss5(), RegionCache(tmp_path / "cache"), **kw)


def test_crops_equal_the_source_pixels_and_masks_are_the_scheme_applied(regions, tmp_path):
    df, arrays, _ = regions
    ds = _dataset(regions, tmp_path, targets="masks")
    assert len(ds) == len(df) and (df["x"] + SIZE > df["width"]).any()  # some windows cross the border
    scheme = bcss5()
    for i in range(len(ds)):
        s = ds[i]
        rgb, codes = arrays[df["image_path"].iloc[i]]
        x, y = int(df["x"].iloc[i]), int(df["y"].iloc[i])
        expect_img = np.full((SIZE, SIZE, 3), 255, np.uint8)
        expect_lab = np.full((SIZE, SIZE), IGNORE, np.uint8)
        part = rgb[y : y + SIZE, x : x + SIZE]
        expect_img[: part.shape[0], : part.shape[1]] = part
        expect_lab[: part.shape[0], : part.shape[1]] = scheme.apply(codes[y : y + SIZE, x : x + SIZE])
        got = (s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(got, expect_img)
        np.testing.assert_array_equal(s["mask"].numpy(), expect_lab)
        assert s["mask"].dtype == torch.long and s["index"] == i
        np.testing.assert_array_equal(s["labels"].numpy(), df[[f"label_{n}" for n in scheme.names]].iloc[i])


def test_normalisation_and_recentred_patch_size(regions, tmp_path):
    df, arrays, _ = regions
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    ds = _dataset(regions, tmp_path, targets="masks", patch_size=16, normalize=(mean, std))
    s = ds[0]
    rgb, _ = arrays[df["image_path"].iloc[0]]
    x, y = int(df["x"].iloc[0]) + 8, int(df["y"].iloc[0]) + 8  # a 16 px window centred on the 32 px patch
    raw = torch.from_numpy(rgb[y : y + 16, x : x + 16]).permute(2, 0, 1).float() / 255
    expect = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert s["image"].shape == (3, 16, 16) and s["mask"].shape == (16, 16)
    torch.testing.assert_close(s["image"], expect)


def test_recentred_windows_stay_inside_the_region(regions, tmp_path):
    df, arrays, _ = regions
    ds = _dataset(regions, tmp_path, targets="masks", patch_size=48)
    shapes = df[["height", "width"]].to_numpy()
    windows = np.array([ds.window(i, tuple(shapes[i])) for i in range(len(ds))])
    x, y, w, h = windows.T
    assert (w == 48).all() and (h == 48).all()
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= shapes[:, 1]).all() and (y + h <= shapes[:, 0]).all()
    inside = (df["x"] - 8 >= 0) & (df["x"] + 40 <= df["width"]) & (df["y"] - 8 >= 0) & (df["y"] + 40 <= df["height"])
    np.testing.assert_array_equal(x[inside], df["x"][inside] - 8)  # centred where that fits
    i = int(np.flatnonzero(~inside)[0])  # at the border: region pixels, no padding
    rgb, _ = arrays[df["image_path"].iloc[i]]
    got = (ds[i]["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, rgb[y[i] : y[i] + 48, x[i] : x[i] + 48])


def test_stain_normaliser_is_applied_to_the_crop(regions, tmp_path):
    plain = _dataset(regions, tmp_path, targets="masks")[1]["image"]
    inverted = _dataset(regions, tmp_path, targets="masks", stain_normalizer=lambda rgb: 255 - rgb)[1]["image"]
    torch.testing.assert_close(inverted, 1 - plain)


def test_label_only_samples_never_read_a_mask(regions, tmp_path, monkeypatch):
    df, _, _ = regions
    scheme = bcss5()

    def refuse(path):
        raise AssertionError(f"a label-only dataset read the mask {path}")

    monkeypatch.setattr(io, "read_mask", refuse)
    ds = _dataset(regions, tmp_path, targets="labels")
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert "mask" not in batch
    np.testing.assert_array_equal(batch["labels"].numpy(), df[[f"label_{n}" for n in scheme.names]].to_numpy())
    with pytest.raises(AssertionError, match="read the mask"):  # the guard is live: full mode does read it
        _dataset(regions, tmp_path, targets="masks")[0]


def test_whole_image_table_without_coordinates(regions, tmp_path):
    """A BCSS-WSSS-style table (image_path + label_<class>) gives whole images and labels."""
    df, arrays, _ = regions
    table = df.drop_duplicates("image_path")[["image_path"] + [f"label_{n}" for n in bcss5().names]]
    ds = PatchDataset(table.iloc[:1], bcss5(), RegionCache(tmp_path / "c"), targets="labels")
    rgb, _ = arrays[table["image_path"].iloc[0]]
    s = ds[0]
    np.testing.assert_array_equal((s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), rgb)


def test_region_cache_decodes_once_and_notices_changed_files(regions, tmp_path, monkeypatch):
    _, arrays, root = regions
    path = next(iter(arrays))
    calls = []
    real = io.read_image
    monkeypatch.setattr(io, "read_image", lambda p: calls.append(p) or real(p))
    a = RegionCache(tmp_path / "cache").image(path)
    b = RegionCache(tmp_path / "cache").image(path)  # a fresh cache (another worker) reuses the file
    assert len(calls) == 1 and isinstance(b, np.memmap)
    np.testing.assert_array_equal(a, arrays[path][0])
    changed = tmp_path / "changed.png"
    io.write_png(changed, arrays[path][0])
    first = RegionCache(tmp_path / "cache").image(changed).copy()
    io.write_png(changed, 255 - arrays[path][0])
    second = RegionCache(tmp_path / "cache").image(changed)
    np.testing.assert_array_equal(second, 255 - first)


def test_augment_keeps_image_and_mask_aligned_and_reaches_all_orientations():
    h, w = 6, 10  # not square: rotations must turn the mask with the image
    mask = torch.arange(h * w).view(h, w) % 7
    image = torch.stack([mask.float() / 10, torch.arange(h * w).view(h, w) / (h * w), torch.zeros(h, w)])
    aug = Augment(flips=True, rot90=True, seed=3)
    seen = set()
    for index in range(64):
        img, m = aug(image.clone(), mask.clone(), index=index)
        torch.testing.assert_close(img[0], m.float() / 10)  # the image still shows its mask
        seen.add(tuple(img[1].flatten().tolist()))
    assert len(seen) == 8  # the eight flips/rotations of the square's symmetry group


def test_augment_is_a_function_of_seed_epoch_and_index():
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.randint(0, 4, (16, 16), generator=torch.Generator().manual_seed(1))
    aug = Augment(flips=True, rot90=True, color_jitter=0.3, seed=5)
    a = aug(image.clone(), mask.clone(), epoch=2, index=7)
    b = aug(image.clone(), mask.clone(), epoch=2, index=7)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    others = [aug(image.clone(), mask.clone(), epoch=e, index=i)[0] for e, i in [(3, 7), (2, 8)]]
    others.append(Augment(flips=True, rot90=True, color_jitter=0.3, seed=6)(image.clone(), mask.clone(), epoch=2,
                                                                            index=7)[0])
    assert all(not torch.allclose(a[0], o) for o in others)


def test_batches_are_the_same_with_any_number_of_workers(regions, tmp_path):
    ds = _dataset(regions, tmp_path, targets="masks", augment=Augment(color_jitter=0.2, seed=1))
    sampler = StepSampler(len(ds), 4, seed=0, start=0, stop=3)
    serial = list(DataLoader(ds, batch_sampler=sampler, num_workers=0))
    parallel = list(DataLoader(ds, batch_sampler=sampler, num_workers=2))
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_step_sampler_resumes_mid_epoch_and_shards_the_global_batch():
    full = list(StepSampler(10, 4, seed=1, start=0, stop=7))
    assert list(StepSampler(10, 4, seed=1, start=3, stop=7)) == full[3:]
    epoch0 = [k for batch in full for k in batch][:10]
    assert sorted(i for i, e in epoch0) == list(range(10)) and {e for _, e in epoch0} == {0}
    ranks = [list(StepSampler(10, 4, seed=1, start=0, stop=7, rank=r, world=2)) for r in range(2)]
    for step, batch in enumerate(full):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
    assert list(StepSampler(10, 4, seed=2, start=0, stop=7)) != full
    with pytest.raises(ValueError, match="multiple"):
        StepSampler(10, 3, seed=0, start=0, stop=1, world=2)


def test_balanced_sampling_draws_a_rare_class_more_often():
    import pandas as pd

    scheme = bcss5()
    fr = np.zeros((100, 5))
    fr[:, 0] = 1.0
    fr[:5] = [0.2, 0, 0, 0.8, 0]  # class "necrosis" only in 5 of 100 patches
    df = pd.DataFrame({f"frac_{n}": fr[:, i] for i, n in enumerate(scheme.names)} | {"size": 10})
    w = balanced_weights(df, scheme, "fractions")
    drawn = [i for batch in StepSampler(100, 50, seed=0, start=0, stop=20, weights=w) for i, _ in batch]
    share = np.isin(drawn, np.arange(5)).mean()
    assert share > 0.35  # about half the draws instead of 5 %
    np.testing.assert_allclose(class_pixel_counts(df, scheme), fr.sum(0) * 100)
