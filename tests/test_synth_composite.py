"""Composite mode of tissueseg.synth: real class textures laid into layouts."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from tissueseg import synth
from tissueseg.assets import TEXTURES
from tissueseg.cli import main
from tissueseg.io import InputError, read_image, read_mask
from tissueseg.synth.composite import FEATHER_PX, STAIN_JITTER
from tissueseg.synth.stain import remix, unmix
from tissueseg.synth.textures import CLASS_DENSITY

from .conftest import _shared


def _flat(code, scale):
    """The flat colour of ``scale`` times a class's measured mean stain densities."""
    rgb = remix(np.float32(scale) * CLASS_DENSITY[code].astype(np.float32), np.zeros(3, np.float32))
    return tuple(int(v) for v in np.clip(np.rint(rgb), 0, 255))


# flat crops, 1.4x too dense: the bank is scaled back to the measured densities, and a
# pixel's haematoxylin density says which bank it came from (tumour 0.61, stroma 0.23)
HUES = {1: _flat(1, 1.4), 2: _flat(2, 1.4)}
SPLIT = 0.42


def _bank(folder, sizes=(96, 120, 150), codes=HUES, mpp=0.25):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for code, rgb in codes.items():
        for k, side in enumerate(sizes):
            name = f"{code}-{k}.png"
            Image.fromarray(np.full((side, side + 10, 3), rgb, np.uint8)).save(folder / name)
            rows.append({"file": name, "code": code, "mpp": mpp})
    with open(folder / "provenance.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "code", "mpp"])
        w.writeheader()
        w.writerows(rows)
    return folder


def _hue_of(rgb):
    """Which of the two flat banks a pixel comes from, by its haematoxylin density."""
    return np.where(unmix(rgb)[0][..., 0] > SPLIT, 1, 2)


def _layout():
    lay = np.full((256, 384), 4, np.uint8)  # necrosis: no texture in the bank -> procedural
    lay[:, :128] = 1
    lay[:, 128:256] = 2
    lay[200:, :] = 20  # dcis: tumour's stand-in, so the tumour bank
    return lay


def test_every_pixel_takes_its_own_class_texture_away_from_boundaries(tmp_path):
    bank = synth.load_bank(_bank(tmp_path / "bank"))
    assert bank.codes == {1, 2}
    lay = _layout()
    rgb = synth.composite_he(lay, 3, bank, bank_share=1.0)
    assert rgb.shape == (*lay.shape, 3) and rgb.dtype == np.uint8
    margin = int(np.ceil(4 * FEATHER_PX))
    procedural = synth.render_he(lay, 3)
    for code, bank_code in ((1, 1), (2, 2), (20, 1)):
        inner = ndimage.binary_erosion(lay == code, iterations=margin, border_value=1)
        assert inner.sum() > 1000
        assert (_hue_of(rgb[inner]) == bank_code).all()
        dens = unmix(rgb[inner])[0]  # scaled to the measured densities, up to the stain jitter
        assert np.abs(dens / CLASS_DENSITY[bank_code] - 1).max() < 4 * np.hypot(*STAIN_JITTER)
    inner = ndimage.binary_erosion(lay == 4, iterations=margin, border_value=1)
    assert np.array_equal(rgb[inner], procedural[inner])  # no bank texture: procedural


def test_boundaries_blend_over_a_few_pixels(tmp_path):
    bank = synth.load_bank(_bank(tmp_path / "bank"))
    lay = _layout()
    rgb = synth.composite_he(lay, 0, bank, bank_share=1.0)
    profile = unmix(rgb[20:180])[0][..., 0].mean(axis=0)  # haematoxylin across the tumour | stroma edge
    assert profile[120] > 0.5 and profile[136] < 0.33  # pure a few sigma away
    assert 0.3 < profile[127] < 0.55 and 0.3 < profile[128] < 0.55  # mixed at the edge
    assert profile[118:138].argmin() > profile[118:138].argmax()  # one transition


def test_bank_share_picks_whole_connected_areas(tmp_path):
    bank = synth.load_bank(_bank(tmp_path / "bank"))
    lay = np.full((240, 480), 4, np.uint8)
    for k in range(24):  # 24 separate tumour squares
        y, x = 10 + 80 * (k // 6), 10 + 80 * (k % 6)
        lay[y : y + 60, x : x + 60] = 1
    procedural = synth.render_he(lay, 1)
    assert np.array_equal(synth.composite_he(lay, 1, bank, bank_share=0.0), procedural)
    rgb = synth.composite_he(lay, 1, bank, bank_share=0.5)
    from_bank = []
    for k in range(24):
        y, x = 10 + 80 * (k // 6), 10 + 80 * (k % 6)
        inner = (slice(y + 10, y + 50), slice(x + 10, x + 50))
        same = np.array_equal(rgb[inner], procedural[inner])
        assert same or (_hue_of(rgb[inner]) == 1).all()  # one rendering per area, never a mix
        from_bank.append(not same)
    assert 4 <= sum(from_bank) <= 20


def test_composite_is_seeded(tmp_path):
    bank = synth.load_bank(_bank(tmp_path / "bank"))
    lay = _layout()
    a = synth.composite_he(lay, 5, bank)
    assert a.tobytes() == synth.composite_he(lay, 5, bank).tobytes()
    assert a.tobytes() != synth.composite_he(lay, 6, bank).tobytes()


def test_quilt_covers_the_canvas_with_transformed_crops():
    rng = np.random.default_rng(0)
    gradient = np.tile(np.linspace(30, 220, 80).astype(np.uint8)[None, :, None], (60, 1, 3))
    out = synth.quilt([gradient, np.full((100, 70, 3), 128, np.uint8)], (300, 500), rng)
    assert out.shape == (300, 500, 3) and np.isfinite(out).all()
    assert out.min() >= 20 and out.max() <= 240  # colours of the crops (stain-jittered), no black gaps
    rows = np.abs(np.diff(out[..., 0], axis=0)).mean()
    cols = np.abs(np.diff(out[..., 0], axis=1)).mean()
    assert rows > 0.3 and cols > 0.3  # the gradient crop lies both ways: rotated
    big = np.full((300, 300, 3), 128, np.uint8)  # leaves far apart: small ones can miss the canvas
    for shape in ((1, 1), (5, 300), (300, 7), (40, 40), (97, 1000)):  # smaller, thinner than the crops
        for seed in range(5):
            out = synth.quilt([gradient, big, big], shape, np.random.default_rng(seed))
            assert out.shape == (*shape, 3) and out.min() >= 20 and out.max() <= 240


def test_builtin_bank_loads_at_region_resolution():
    bank = synth.resolve_textures("builtin")
    assert bank.codes == {1, 2, 3, 9}
    with open(TEXTURES / "provenance.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(len(v) for v in bank.crops.values()) == len(rows)
    for row in rows:  # files at 0.5 µm/px come out twice as large
        src = read_image(TEXTURES / row["file"])
        f = float(row["mpp"]) / synth.REGION_MPP
        assert any(c.shape[:2] == (round(src.shape[0] * f), round(src.shape[1] * f)) for c in bank.crops[int(row["code"])])
    assert synth.resolve_textures("none") is None


def test_bad_banks_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no provenance.csv"):
        synth.load_bank(tmp_path)
    bad = _bank(tmp_path / "bad", codes={30: (1, 2, 3)})
    with pytest.raises(InputError, match="not a BCSS code"):
        synth.load_bank(bad)
    small = _bank(tmp_path / "small", sizes=(20,))
    with pytest.raises(InputError, match="at least 32 px"):
        synth.load_bank(small)


def test_make_region_and_dataset_take_the_textures_setting(tmp_path):
    lay = _layout()
    bank_dir = _bank(tmp_path / "bank")
    rgb, mask = synth.make_region(lay.shape, 2, layout=lay, textures=bank_dir)
    assert np.array_equal(mask, lay)
    assert np.array_equal(rgb, synth.composite_he(lay, 2, synth.load_bank(bank_dir.resolve())))
    rgb, _ = synth.make_region(lay.shape, 2, layout=lay, textures="none")
    assert np.array_equal(rgb, synth.render_he(lay, 2))
    out = tmp_path / "data"
    pairs = synth.make_dataset(out, n=2, size=128, seed=1, textures="none", quiet=True)
    assert json.loads((out / "synth.json").read_text())["textures"] == "none"
    with pytest.raises(ValueError, match="other textures"):
        synth.make_dataset(out, n=2, size=128, seed=1, textures="builtin", quiet=True)
    again = synth.make_dataset(out, n=2, size=128, seed=1, textures="builtin", overwrite=True, quiet=True)
    rgb, _ = synth.make_region((128, 128), synth.region_seed(1, 0), textures="builtin")
    assert again == pairs and np.array_equal(read_image(again[0][0]), rgb)


def test_cli_textures_option(tmp_path):
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "a"), "--n", "1", "--size", "64",
                                       "--textures", "none", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["textures"] == "none"
    bad = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "b"), "--textures", str(tmp_path)])
    assert bad.exit_code != 0 and "provenance.csv" in bad.output


@pytest.fixture(scope="module")
def bcss_region_dir():
    """The real BCSS region of slide TCGA-A1-A0SK with its mask (the transfer evaluation region)."""
    return _shared("bcss/region-a0sk")


def _class_od(rgb, mask, code):
    sel = ndimage.binary_erosion(mask == code, iterations=12)
    return -np.log((rgb[sel].astype(float) + 1) / 256).mean(axis=0)


def test_generated_colour_per_class_is_near_the_real_regions(bcss_region_dir):
    """Mean optical density per class of generated regions (default textures) against the
    real region TCGA-A1-A0SK (never a texture source): within 25 % per channel."""
    stem = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"
    real_rgb = read_image(bcss_region_dir / "rgbs_colorNormalized" / f"{stem}.png")
    real_mask = read_mask(bcss_region_dir / "masks" / f"{stem}.png")
    gen = [synth.make_region((512, 512), seed) for seed in range(3)]
    for code in (1, 2, 4):
        real = _class_od(real_rgb, real_mask, code)
        ours = np.mean([_class_od(rgb, mask, code) for rgb, mask in gen], axis=0)
        assert np.abs(ours / real - 1).max() < 0.25, (code, ours, real)
