"""Slide reading at a µm/px, level choice, thumbnails and tissue detection."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from tissueseg.io import InputError
from tissueseg.slide import (
    OpenSlideReader,
    TiffReader,
    open_image,
    plan_read,
    read_at,
    target_size,
    tissue_mask,
)


def he_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Pink/purple noise with the saturation of H&E tissue."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 170], dtype=np.float64)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (h, w)), (0, 0), 2)[..., None]
    return np.clip(base + noise * np.array([1.0, 1.2, 0.8]), 0, 255).astype(np.uint8)


def write_pyramid(path: Path, level0: np.ndarray, mpp: float, *, subifds: bool = False) -> np.ndarray:
    """A lossless tiled two-level pyramid (page chain, or SubIFDs); returns level 1."""
    level1 = cv2.resize(level0, (level0.shape[1] // 2, level0.shape[0] // 2), interpolation=cv2.INTER_AREA)
    res = 1e4 / mpp
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(128, 128), compression="zlib", photometric="rgb", resolution=(res, res),
                  resolutionunit="CENTIMETER", subifds=1 if subifds else None)
        tif.write(level1, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=1,
                  resolution=(res / 2, res / 2), resolutionunit="CENTIMETER")
    return level1


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    level0 = rng.integers(0, 256, (640, 768, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("pyr") / "pyr.tiff"
    return path, level0, write_pyramid(path, level0, 0.5)


def test_real_svs_small_region(slides_dir: Path) -> None:
    with open_image(slides_dir / "CMU-1-Small-Region.svs") as r:
        assert isinstance(r, OpenSlideReader)
        assert r.dimensions == (2220, 2967) and r.level_count == 1
        assert r.mpp == pytest.approx(0.499)
        assert plan_read(r, 2.0) == (0, pytest.approx(0.2495))
        assert target_size(r, 0.998) == (1110, 1484)
        win = read_at(r, 100, 200, 64, 32, 0.499)
        assert win.shape == (32, 64, 3) and win.dtype == np.uint8
        assert np.array_equal(win, r.read_region(100, 200, 64, 32, 0))


def test_real_svs_without_mpp(slides_dir: Path) -> None:
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with open_image(path) as r:
        assert r.mpp is None and r.level_count == 2
        with pytest.raises(InputError, match="no resolution metadata; pass --mpp"):
            plan_read(r, 1.0)
    with open_image(path, mpp=0.5) as r:
        assert r.dimensions == (4443, 3567) and r.level_dimensions[1] == (2221, 1783)
        level, scale = plan_read(r, 1.0)
        assert level == 1 and scale == pytest.approx(1.0, abs=1e-3)
        assert plan_read(r, 0.9)[0] == 0
        thumb = r.thumbnail(512)
        assert thumb.shape == (411, 512, 3)
        frac = tissue_mask(thumb, 0.5 * 4443 / 512).mean()
        assert 0.4 < frac < 0.9  # one section of tissue on glass


def test_plan_read_and_read_at_on_generated_pyramid(pyramid: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, level0, level1 = pyramid
    with open_image(path) as r:
        assert isinstance(r, TiffReader)
        assert r.level_dimensions == ((768, 640), (384, 320)) and r.level_downsamples == (1.0, 2.0)
        assert r.mpp == pytest.approx(0.5)
        assert plan_read(r, 0.5) == (0, 1.0)
        assert plan_read(r, 0.75) == (0, pytest.approx(2 / 3))
        assert plan_read(r, 1.0) == (1, 1.0)
        assert plan_read(r, 1.01) == (1, pytest.approx(1 / 1.01))  # within the tolerance
        assert plan_read(r, 2.0) == (1, 0.5)
        assert plan_read(r, 0.25) == (0, 2.0)
        # level 1 read directly
        assert np.array_equal(read_at(r, 10, 20, 50, 40, 1.0), level1[20:60, 10:60])
        # 2 um/px from level 1, equal to the downsampled full level
        quarter = cv2.resize(level1, (192, 160), interpolation=cv2.INTER_AREA)
        assert np.array_equal(read_at(r, 8, 4, 64, 48, 2.0), quarter[4:52, 8:72])
        assert np.array_equal(read_at(r, 0, 0, 192, 160, 2.0), quarter)
        # outside the image: white
        out = read_at(r, 380, 310, 16, 16, 1.0)
        assert np.array_equal(out[:10, :4], level1[310:, 380:])
        assert (out[10:] == 255).all() and (out[:, 4:] == 255).all()


def test_subifd_pyramid_read_with_tifffile(tmp_path: Path) -> None:
    level0 = he_texture(300, 400)
    level1 = write_pyramid(tmp_path / "sub.tif", level0, 0.25, subifds=True)
    with open_image(tmp_path / "sub.tif") as r:
        assert isinstance(r, TiffReader) and r.level_count == 2 and r.mpp == pytest.approx(0.25)
        assert np.array_equal(r.read_region(0, 0, 200, 150, 1), level1)
        assert np.array_equal(r.read_region(-10, -10, 20, 20, 0)[10:, 10:], level0[:10, :10])


def test_region_png_mpp_from_name_and_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255  # right half transparent -> white
    path = tmp_path / "TCGA-A1-A0SK-DX1_xmin1_ymin2_MPP-0.2500.png"
    Image.fromarray(rgba).save(path)
    with open_image(path) as r:
        assert r.mpp == 0.25 and r.dimensions == (30, 20)
        img = r.read_region(0, 0, 30, 20)
        assert (img[:, :15] == [200, 0, 0]).all() and (img[:, 15:] == 255).all()
    assert open_image(path, mpp=0.5).mpp == 0.5
    plain = tmp_path / "plain.png"
    Image.fromarray(rgba).save(plain)
    assert open_image(plain).mpp is None


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        open_image(tmp_path / "missing.svs")
    junk = tmp_path / "junk.tiff"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="junk.tiff"):
        open_image(junk)


def test_thumbnail_matches_downsampled_image(pyramid: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, level0, _ = pyramid
    with open_image(path) as r:
        thumb = r.thumbnail(96)
    assert thumb.shape == (80, 96, 3)
    expected = cv2.resize(level0, (96, 80), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - expected.astype(int)).mean() < 3


def test_tissue_mask_glass_tissue_and_blob() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(242 + rng.normal(0, 3, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, 8.0).any()
    tissue = he_texture(200, 300)
    assert tissue_mask(tissue, 8.0).mean() > 0.98
    yy, xx = np.mgrid[:200, :300]
    truth = ((yy - 100) / 70) ** 2 + ((xx - 120) / 90) ** 2 < 1
    truth |= (np.abs(yy - 60) < 25) & (np.abs(xx - 240) < 40)
    slide = np.where(truth[..., None], he_texture(200, 300, seed=3), glass)
    pred = tissue_mask(slide, 8.0)
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert iou > 0.9
    with pytest.raises(ValueError):
        tissue_mask(glass[..., 0], 8.0)


def test_tissue_mask_sizes_are_micrometres() -> None:
    """Glass inside tissue: a 150 µm gap (a fat cell) is tissue, a 1 mm hole (a lumen) is glass,
    whatever the field of view of the thumbnail."""
    def scene(side_um: float, hole_um: float, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        n, h = round(side_um / mpp), round(hole_um / mpp)
        rgb = he_texture(n, n)
        hole = np.zeros((n, n), dtype=bool)
        hole[n // 2 - h // 2 : n // 2 - h // 2 + h, n // 2 - h // 2 : n // 2 - h // 2 + h] = True
        rgb[hole] = 242
        return rgb, hole

    rgb, hole = scene(1000, 150, 1.0)  # a 1 mm region at 1 µm/px
    assert tissue_mask(rgb, 1.0)[hole].mean() > 0.99
    rgb, hole = scene(15000, 1000, 10.0)  # a 15 mm slide at 10 µm/px
    assert tissue_mask(rgb, 10.0)[hole].mean() < 0.01


def test_tissue_mask_keeps_pale_real_tissue_and_drops_glass(nct_mosaic) -> None:
    """Fat, mucus, stroma and mucosa kept, glass dropped (fat cells cut open by a tile edge
    facing glass are glass-like on every side but one: the few percent of fat lost)."""
    rgb, classes, names = nct_mosaic
    for factor, least in ((1, {"ADI": 0.85}), (4, {"ADI": 0.8})):  # thumbnails at 0.5 and 2 µm/px
        small = cv2.resize(rgb, (rgb.shape[1] // factor, rgb.shape[0] // factor), interpolation=cv2.INTER_AREA)
        where = classes[factor // 2 :: factor, factor // 2 :: factor]
        mask = tissue_mask(small, 0.5 * factor)
        for k, name in enumerate(names):
            assert mask[where == k].mean() > least.get(name, 0.95), (factor, name)
        assert mask[where == -1].mean() < 0.01


def test_tissue_mask_keeps_all_of_a_real_tissue_region(bcss_region_dir: Path) -> None:
    (path,) = (bcss_region_dir / "rgbs_colorNormalized").iterdir()
    with open_image(path) as r:
        for size in (2048, 256):
            thumb = r.thumbnail(size)
            assert tissue_mask(thumb, r.mpp * r.dimensions[0] / thumb.shape[1]).mean() > 0.99


def test_tissue_mask_on_generated_slide(tmp_path: Path) -> None:
    from tissueseg.synth import make_slide

    codes = make_slide(tmp_path / "slide.tiff", (1024, 1536), seed=3, mpp=0.5, tile=256)
    with open_image(tmp_path / "slide.tiff") as r:
        assert r.level_count >= 2 and r.mpp == pytest.approx(0.5)
        thumb = r.thumbnail(192)
        pred = tissue_mask(thumb, r.mpp * r.dimensions[0] / thumb.shape[1])
    truth = cv2.resize((codes > 0).astype(np.uint8), pred.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    assert (pred & truth).sum() / (pred | truth).sum() > 0.8
