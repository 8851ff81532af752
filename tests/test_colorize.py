import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from tissueseg import io
from tissueseg.cli import main
from tissueseg.colorize import colorize, colorize_files, legend, overlay, recorded_scheme
from tissueseg.schemes import IGNORE, bcss5, bcss22


def _labels(shape=(12, 17), k=21, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, shape).astype(np.uint8)
    labels[:3, :4] = IGNORE
    return labels


def test_palette_png_round_trip_keeps_indices_and_scheme_colours(tmp_path):
    s = bcss22()
    labels = _labels()
    path = io.write_png(tmp_path / "c.png", colorize(labels, s))
    back = Image.open(path)
    assert back.mode == "P"
    np.testing.assert_array_equal(np.asarray(back), labels)
    pal = np.array(back.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(pal[: s.num_classes], s.colors)
    assert tuple(pal[IGNORE]) == (0, 0, 0)


def test_colorize_refuses_indices_outside_the_scheme():
    with pytest.raises(ValueError, match=r"\[7\]"):
        colorize(np.full((2, 2), 7, np.uint8), bcss5())


def test_overlay_blends_exactly_and_leaves_ignore_pixels():
    s = bcss22()
    rgb = np.array([[[200, 100, 0], [10, 20, 30]]], dtype=np.uint8)
    labels = np.array([[0, IGNORE]], dtype=np.uint8)  # class 0 = tumor (128, 0, 0)
    out = overlay(rgb, labels, s, alpha=0.4)
    # 0.6 * 200 + 0.4 * 128 = 171.2 ; 0.6 * 100 = 60 ; 0
    assert out[0, 0].tolist() == [171, 60, 0]
    assert out[0, 1].tolist() == [10, 20, 30]
    np.testing.assert_array_equal(overlay(rgb, labels, s, alpha=0.0), rgb)
    assert overlay(rgb, labels, s, alpha=1.0)[0, 0].tolist() == [128, 0, 0]


def test_legend_has_one_swatch_per_listed_class_only():
    s = bcss22()
    img = np.asarray(legend(s, present=[0, 1, 2]))
    assert img.shape[0] > 50 and img.shape[1] > 100
    for color in [s.colors[0], s.colors[1], s.colors[2]]:
        blobs, n = ndimage.label((img == color).all(axis=2))
        sizes = np.bincount(blobs.ravel())[1:]
        assert (sizes > 100).sum() == 1, color
    assert not (img == s.colors[5]).all(axis=2).any()  # blood not present, not drawn


@pytest.fixture
def mask_folder(tmp_path):
    d = tmp_path / "masks"
    d.mkdir()
    good = {}
    for i, name in enumerate(["a", "b"]):
        codes = np.random.default_rng(i).integers(0, 22, (20, 30)).astype(np.uint8)
        Image.fromarray(codes, "L").save(d / f"{name}.png")
        good[name] = codes
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    bad = np.full((20, 30), 40, np.uint8)
    Image.fromarray(bad, "L").save(d / "badcodes.png")
    return d, good


def test_batch_writes_good_masks_and_skips_bad_ones_with_reasons(mask_folder, tmp_path):
    d, good = mask_folder
    out = tmp_path / "out"
    s = bcss22()
    result = colorize_files([d], out, s, quiet=True)
    assert sorted(p.stem for p, _ in result.results) == ["a", "b"]
    reasons = dict(result.skipped)
    assert len(reasons) == 2
    assert any("corrupt.png" in r and "decode" in r for r in reasons.values())
    assert any("badcodes.png" in r and "[40]" in r for r in reasons.values())
    assert all("\n" not in r for r in reasons.values())
    for name, codes in good.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}.png")), s.apply(codes))
    assert (out / "legend.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "legend.png"]  # no .part leftovers


def test_batch_overlays_pair_by_stem_and_skip_missing_or_mismatched_images(mask_folder, tmp_path):
    d, good = mask_folder
    images = tmp_path / "images"
    images.mkdir()
    rgb = np.full((20, 30, 3), 200, np.uint8)
    Image.fromarray(rgb).save(images / "a.jpg", quality=100)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(images / "b.png")
    out = tmp_path / "out"
    s = bcss22()
    result = colorize_files([d / "a.png", d / "b.png", d / "corrupt.png"], out, s, images=images, quiet=True)
    assert [p.name for p, _ in result.results] == ["a.png"]
    reasons = " | ".join(r for _, r in result.skipped)
    assert "b.png" in reasons and "5x5" in reasons
    ov = np.asarray(Image.open(out / "a_overlay.png"))
    expected = overlay(io.read_image(images / "a.jpg"), s.apply(good["a"]), s, 0.4)
    np.testing.assert_array_equal(ov, expected)
    assert not (out / "b.png").exists()  # nothing written for a skipped mask

    (images / "a.jpg").unlink()
    result = colorize_files([d / "a.png"], tmp_path / "o2", s, images=images, quiet=True)
    assert not result.results and "a.png" in result.skipped[0][1] and "no image" in result.skipped[0][1]


def test_cli_missing_input_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["colorize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]


def test_cli_keeps_its_own_outputs_and_refuses_others_unless_overwrite(mask_folder, tmp_path):
    d, good = mask_folder
    out = tmp_path / "out"
    args = ["colorize", str(d / "a.png"), "--out", str(out), "--quiet", "--json", "--scheme", "bcss22"]
    first = json.loads(CliRunner().invoke(main, args).output)
    assert first["written"] == 1 and first["skipped"] == []
    second = json.loads(CliRunner().invoke(main, args).output)
    assert second["written"] == 0 and second["kept"] == 1
    other = CliRunner().invoke(main, [*args, "--scheme", "bcss5"])  # another scheme made a.png
    reason = json.loads(other.output)["skipped"][0]["reason"]
    assert f"{out / 'a.png'}: exists and was made from other inputs" in reason and "--overwrite" in reason
    (out / "a.png").write_bytes(b"sentinel")  # a file colorize did not write
    assert json.loads(CliRunner().invoke(main, args).output)["skipped"]
    assert (out / "a.png").read_bytes() == b"sentinel"
    third = json.loads(CliRunner().invoke(main, [*args, "--overwrite"]).output)
    assert third["written"] == 1
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), bcss22().apply(good["a"]))
    assert recorded_scheme(out / "a.png") == bcss22()


def test_masks_or_images_sharing_a_stem_are_refused(mask_folder, tmp_path):
    d, _ = mask_folder
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "a.png").write_bytes((d / "a.png").read_bytes())
    with pytest.raises(ValueError, match=rf"{d / 'a.png'} and {twin / 'a.png'}: two masks share the name 'a'"):
        colorize_files([d / "a.png", twin], tmp_path / "out", bcss22(), quiet=True)
    images = tmp_path / "images"
    images.mkdir()
    for suffix in (".jpg", ".png"):
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(images / f"a{suffix}")
    with pytest.raises(ValueError, match=r"a.jpg and .*a.png: two images share the name 'a'"):
        colorize_files([d / "a.png"], tmp_path / "out", bcss22(), images=images, quiet=True)
