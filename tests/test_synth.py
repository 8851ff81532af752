import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage.color import rgb2hed

from tissueseg import synth
from tissueseg.cli import main
from tissueseg.io import read_image, read_mask

NAME = re.compile(r"^TCGA-([A-Z0-9]{2})-([A-Z0-9]{4})-DX1_xmin(\d+)_ymin(\d+)_MPP-0\.2500$")


def _stripes(codes, w=192):
    lay = np.zeros((w, w * len(codes)), np.uint8)
    for i, c in enumerate(codes):
        lay[:, i * w : (i + 1) * w] = c
    return lay


def _is_window(big, small):
    """Whether uint8 ``small`` is a crop of ``big`` (candidates found by its busiest row)."""
    h, w = small.shape
    r = int(np.argmax((np.diff(small, axis=1) != 0).sum(axis=1)))
    target = small[r].tobytes()
    for y in range(big.shape[0] - h + 1):
        row = big[y + r].tobytes()
        x = row.find(target)
        while x >= 0:
            if np.array_equal(big[y : y + h, x : x + w], small):
                return True
            x = row.find(target, x + 1)
    return False


def _mean_hed(rgb, lay, code):
    return rgb2hed(rgb)[lay == code].mean(axis=0)


def test_random_layout_is_seeded_and_has_every_code_and_a_roi_border():
    a = synth.random_layout((512, 512), seed=3)
    assert a.dtype == np.uint8 and a.shape == (512, 512)
    assert np.array_equal(a, synth.random_layout((512, 512), seed=3))
    assert not np.array_equal(a, synth.random_layout((512, 512), seed=4))
    for seed in range(5):
        lay = synth.random_layout((512, 512), seed=seed)
        assert set(np.unique(lay)) == {0, 1, 2, 3, 4, 9}
        border = np.concatenate([lay[0], lay[-1], lay[:, 0], lay[:, -1]])
        assert (border == 0).any()  # outside_roi touches the border, like a BCSS ROI cut
    lay = synth.random_layout((600, 700), seed=1, codes=(2, 6, 18), roi=False)
    assert set(np.unique(lay)) == {2, 6, 18}


def test_render_he_is_seeded_uint8_rgb():
    lay = synth.random_layout((256, 320), seed=0)
    rgb = synth.render_he(lay, seed=5)
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 320, 3)
    assert rgb.tobytes() == synth.render_he(lay, seed=5).tobytes()
    assert rgb.tobytes() != synth.render_he(lay, seed=6).tobytes()
    with pytest.raises(ValueError, match="BCSS codes"):
        synth.render_he(np.full((8, 8), 30, np.uint8), 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classes_differ_the_way_h_and_e_do(seed):
    codes = (0, 1, 2, 3, 4, 6, 9)
    lay = _stripes(codes)
    rgb = synth.render_he(lay, seed)
    h = {c: _mean_hed(rgb, lay, c)[0] for c in codes}
    e = {c: _mean_hed(rgb, lay, c)[1] for c in codes}
    # the nuclear classes above stroma and necrosis (real BCSS, rgb2hed H: lymphocytes 0.060,
    # tumour 0.040-0.045, necrosis 0.021, stroma 0.015-0.017)
    assert min(h[1], h[3]) > max(h[2], h[4])
    assert e[6] > e[2] and e[6] > e[4]  # red cells are the most eosinophilic
    lum = {c: rgb[lay == c].mean() for c in codes}
    assert min(lum[0], lum[9]) > max(lum[c] for c in (1, 2, 3, 4, 6))  # glass and fat brightest
    assert lum[0] > 235
    # texture, not flat colour: tumour and lymphocytes have dark nuclei on a lighter ground
    for c in (1, 3):
        v = rgb[lay == c].mean(axis=1)
        assert np.percentile(v, 95) - np.percentile(v, 5) > 60
    # H&E-like: tissue is pink to purple (red and blue above green)
    for c in (1, 2, 3, 4):
        r, g, b = rgb[lay == c].mean(axis=0)
        assert r > g and b > g


def test_stain_varies_between_seeds_but_stays_h_and_e():
    lay = _stripes((1, 2))
    means = np.array([synth.render_he(lay, s)[lay == 1].mean(axis=0) for s in range(6)])
    assert means.std(axis=0).max() > 3  # per-image stain variation
    assert (means[:, 0] > means[:, 1]).all() and (means[:, 2] > means[:, 1]).all()


def test_stand_in_codes_render_like_their_stand_in():
    lay = _stripes((20, 1))  # dcis renders as tumour
    rgb = synth.render_he(lay, 0)
    a, b = rgb[lay == 20].reshape(-1, 3).mean(0), rgb[lay == 1].reshape(-1, 3).mean(0)
    assert np.abs(a - b).max() < 12


def test_make_region_returns_image_and_its_layout():
    rgb, mask = synth.make_region((300, 400), seed=2)
    assert rgb.shape == (300, 400, 3) and mask.shape == (300, 400)
    assert np.array_equal(mask, synth.random_layout((300, 400), 2))
    given = _stripes((3, 9), w=100)
    rgb, mask = synth.make_region(given.shape, 1, layout=given)
    assert np.array_equal(mask, given)
    assert rgb[given == 9].mean() > rgb[given == 3].mean() + 40
    with pytest.raises(ValueError, match="does not match"):
        synth.make_region((10, 10), 0, layout=given)


def test_layout_from_real_mask_keeps_its_layout(bcss_masks_dir):
    path = sorted(bcss_masks_dir.glob("*.png"))[2]  # TCGA-A2-A0SX: holds 6, 7, 18 too
    real = read_mask(path)
    whole = synth.layout_from_mask(real)
    same = np.isin(real, synth.TEXTURE_CODES)
    assert np.array_equal(whole[same], real[same])
    assert np.array_equal(whole[real == 18], np.full((real == 18).sum(), synth.STAND_INS[18]))
    assert set(np.unique(whole)) <= set(synth.TEXTURE_CODES)
    crop = synth.layout_from_mask(real, (512, 640), seed=1)
    assert crop.shape == (512, 640)
    assert np.array_equal(crop, synth.layout_from_mask(real, (512, 640), seed=1))
    assert _is_window(whole, crop)
    with pytest.raises(ValueError, match="larger than the mask"):
        synth.layout_from_mask(real, (real.shape[0] + 1, 10))


def test_make_dataset_writes_bcss_layout_and_resumes(tmp_path):
    pairs = synth.make_dataset(tmp_path, n=6, size=192, seed=7, quiet=True)
    assert len(pairs) == 6
    sites = []
    for i, (rgb_path, mask_path) in enumerate(pairs):
        assert rgb_path.parent.name == "rgbs_colorNormalized" and mask_path.parent.name == "masks"
        assert rgb_path.name == mask_path.name
        m = NAME.match(rgb_path.stem)
        assert m, rgb_path.stem
        sites.append(m.group(1))
        assert Image.open(mask_path).mode == "L"
        rgb, mask = synth.make_region((192, 192), synth.region_seed(7, i))
        assert np.array_equal(read_mask(mask_path), mask)
        assert np.array_equal(read_image(rgb_path), rgb)
    assert set(sites) & set(synth.TEST_SITES) and set(sites) & set(synth.TRAIN_SITES)
    assert len({p[0].stem for p in pairs}) == 6
    assert not list(tmp_path.rglob("*.part*"))
    before = {p: p.stat().st_mtime_ns for pair in pairs for p in pair}
    again = synth.make_dataset(tmp_path, n=6, size=192, seed=7, quiet=True)
    assert again == pairs
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # skipped, not rewritten


def test_make_dataset_with_real_layouts(tmp_path, bcss_masks_dir):
    files = sorted(bcss_masks_dir.glob("*.png"))[:2]
    pairs = synth.make_dataset(tmp_path, n=3, size=256, seed=0, layouts=files, quiet=True)
    for i, (_, mask_path) in enumerate(pairs):
        real = synth.layout_from_mask(read_mask(files[i % 2]))
        assert _is_window(real, read_mask(mask_path))


def test_make_slide_opens_with_openslide_and_tifffile(tmp_path):
    openslide = pytest.importorskip("openslide")
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "s.tiff"
    mask = synth.make_slide(path, (1600, 2200), seed=1, mpp=0.5, tile=256)
    assert mask.shape == (100, 138) and mask.dtype == np.uint8
    assert np.array_equal(read_mask(tmp_path / "s_mask.png"), mask)
    assert (mask == 0).mean() > 0.3 and set(np.unique(mask)) == {0, 1, 2, 3, 4, 9}
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count >= 2
        assert s.level_dimensions[0] == (2200, 1600)
        for a, b in zip(s.level_dimensions, s.level_dimensions[1:]):
            assert b == ((a[0] + 1) // 2, (a[1] + 1) // 2)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        # a tissue block (lymphocytes) and a glass block, read back at level 0
        for code, dark in ((3, True), (0, False)):
            ys, xs = np.nonzero(mask == code)
            inner = [(y, x) for y, x in zip(ys, xs) if (mask[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] == code).all()]
            y, x = inner[len(inner) // 2]
            px = np.asarray(s.read_region((x * 16 - 16, y * 16 - 16), 0, (48, 48)).convert("RGB")).reshape(-1, 3)
            r, g, b = px.mean(axis=0)
            if dark:
                assert px.mean() < 200 and r > g and b > g
            else:
                assert px.mean() > 235
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) >= 2 and tf.pages[0].is_tiled and tf.pages[0].shape == (1600, 2200, 3)


def test_slide_tiles_join_without_seams(tmp_path):
    """The same slide written with two tile sizes has the same layout: no tile grid."""
    a = synth.make_slide(tmp_path / "a.tiff", (700, 900), seed=2, tile=128)
    b = synth.make_slide(tmp_path / "b.tiff", (700, 900), seed=2, tile=512)
    assert np.array_equal(a, b)


def test_cli_writes_dataset_and_json_summary(tmp_path):
    import json

    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--n", "2", "--size", "128", "--json",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["regions"] == 2
    assert len(list((tmp_path / "masks").glob("*.png"))) == 2
    bad = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--slide", "big"])
    assert bad.exit_code != 0 and "WIDTHxHEIGHT" in bad.output
