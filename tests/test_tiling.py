import json
import random

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tissueseg import io
from tissueseg.cli import main
from tissueseg.manifest import (TileParams, find_dataset, load_manifest, manifest_mpp, pair_files, tile_dataset,
                                tile_image)
from tissueseg.schemes import IGNORE, bcss5, bcss22
from tissueseg.splits import BCSS_TEST_SITES, assign_splits, parse_bcss_name
from tissueseg.tiling import grid, image_labels, patch_fractions

REAL_MASK = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png"


# ---------------------------------------------------------------- grid

@pytest.mark.parametrize(
    "edge,xs,ys",
    [
        ("shift", [0, 2, 3], [0, 1]),  # last window moved back to the border
        ("drop", [0, 2], [0]),  # only full windows on the stride grid
        ("pad", [0, 2, 4], [0, 2]),  # until a window reaches the border, past it
    ],
)
def test_grid_known_corners_row_major(edge, xs, ys):
    corners = grid((5, 7), size=4, stride=2, edge=edge)
    expected = [(x, y) for y in ys for x in xs]
    assert corners.tolist() == [list(c) for c in expected]


def test_grid_region_smaller_than_window():
    assert grid((3, 10), 4, 2, "shift").tolist() == [[0, 0], [2, 0], [4, 0], [6, 0]]
    assert grid((3, 10), 4, 2, "drop").shape == (0, 2)
    assert grid((3, 3), 4, 2, "pad").tolist() == [[0, 0]]


@pytest.mark.parametrize("shape,size,stride", [((37, 53), 8, 5), ((16, 16), 16, 16), ((20, 9), 6, 6)])
def test_grid_shift_covers_every_pixel_inside_without_duplicates(shape, size, stride):
    corners = grid(shape, size, stride, "shift")
    covered = np.zeros(shape, bool)
    for x, y in corners:
        assert 0 <= x <= shape[1] - size and 0 <= y <= shape[0] - size
        covered[y : y + size, x : x + size] = True
    assert covered.all()
    assert len({tuple(c) for c in corners.tolist()}) == len(corners)


def test_grid_rejects_bad_parameters():
    with pytest.raises(ValueError, match="edge"):
        grid((10, 10), 4, 2, "wrap")
    with pytest.raises(ValueError, match="positive"):
        grid((10, 10), 4, 0)


def test_grid_on_real_bcss_mask(bcss_masks_dir):
    height, width = io.read_mask(bcss_masks_dir / REAL_MASK).shape
    assert (width, height) == (3394, 2467)
    corners = grid((height, width), 256, 128, "shift")
    xs, ys = np.unique(corners[:, 0]), np.unique(corners[:, 1])
    assert xs.tolist() == list(range(0, 3073, 128)) + [3138]
    assert ys.tolist() == list(range(0, 2177, 128)) + [2211]
    assert len(corners) == len(xs) * len(ys)
    covered = np.zeros((height, width), bool)
    for x, y in corners:
        covered[y : y + 256, x : x + 256] = True
    assert covered.all()
    dropped = grid((height, width), 256, 128, "drop")
    assert (dropped[:, 0] + 256 <= width).all() and (dropped[:, 1] + 256 <= height).all()
    assert np.unique(dropped[:, 0]).tolist() == list(range(0, 3073, 128))
    assert np.unique(dropped[:, 1]).tolist() == list(range(0, 2177, 128))


# ---------------------------------------------------------------- fractions

def _brute_fractions(labels, corners, size, k):
    rows = []
    for x, y in corners:
        crop = labels[max(y, 0) : y + size, max(x, 0) : x + size]
        counts = np.bincount(crop.ravel(), minlength=256)
        rows.append(np.append(counts[:k], size * size - counts[:k].sum()) / (size * size))
    return np.array(rows)


@pytest.mark.parametrize("edge", ["shift", "drop", "pad"])
def test_patch_fractions_equal_bincount_per_patch(edge):
    rng = np.random.default_rng(1)
    k = 5
    labels = rng.integers(0, k, size=(61, 47), dtype=np.uint8)
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    labels[:, :10] = 3  # a class with long runs
    corners = grid(labels.shape, 16, 7, edge)
    got = patch_fractions(labels, corners, 16, k)
    assert got.dtype == np.float32 and got.shape == (len(corners), k + 1)
    np.testing.assert_allclose(got, _brute_fractions(labels, corners, 16, k), atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_patch_fractions_count_outside_as_ignore_and_reject_stray_values():
    labels = np.zeros((3, 3), np.uint8)
    got = patch_fractions(labels, np.array([[0, 0], [2, 2]]), 4, 2)
    np.testing.assert_allclose(got, [[9 / 16, 0, 7 / 16], [1 / 16, 0, 15 / 16]])
    with pytest.raises(ValueError, match=r"\[7\]"):
        patch_fractions(np.full((4, 4), 7, np.uint8), np.array([[0, 0]]), 2, 5)


def test_patch_fractions_on_real_mask(bcss_masks_dir):
    scheme = bcss22()
    labels = scheme.apply(io.read_mask(bcss_masks_dir / REAL_MASK))
    corners = grid(labels.shape, 256, 128, "pad")[::7]
    got = patch_fractions(labels, corners, 256, scheme.num_classes)
    np.testing.assert_allclose(got, _brute_fractions(labels, corners, 256, scheme.num_classes), atol=1e-6)


def test_image_labels_use_the_roi_fraction():
    # class 0: 3% of the patch but 6% of its ROI (half the patch is ignore)
    fractions = np.array([[0.03, 0.47, 0.5], [0.03, 0.97, 0.0], [0.0, 0.0, 1.0]], np.float32)
    assert image_labels(fractions, 0.05).tolist() == [[True, True], [False, True], [False, False]]


# ---------------------------------------------------------------- names, pairing, splits

def test_parse_bcss_name():
    info = parse_bcss_name("TCGA-A2-A0SX-DX1_xmin53791_ymin56683_MPP-0.2500")
    assert info == {"slide_id": "TCGA-A2-A0SX-DX1", "patient_id": "TCGA-A2-A0SX", "site": "A2",
                    "xmin": 53791, "ymin": 56683, "mpp": 0.25}
    other = parse_bcss_name("slide7_region2")
    assert other["slide_id"] == "slide7_region2" and other["site"] is None and other["xmin"] is None


def _touch_png(path, shape=(4, 4)):
    io.write_png(path, np.zeros(shape, np.uint8))


def test_pair_files_by_stem_not_order(tmp_path):
    stems = [f"r{i}" for i in range(6)]
    random.Random(0).shuffle(stems)
    for s in stems[:5]:
        _touch_png(tmp_path / "img" / f"{s}.png")
    for s in stems[1:]:
        _touch_png(tmp_path / "msk" / f"{s}_mask.png")
    _touch_png(tmp_path / "msk" / "zz_extra_mask.png")
    pairs, lone_images, lone_masks = pair_files(tmp_path / "img", tmp_path / "msk", mask_suffix="_mask")
    assert [(i.stem, m.stem) for i, m in pairs] == [(s, f"{s}_mask") for s in sorted(stems[1:5])]
    assert [f.stem for f in lone_images] == [stems[0]]
    assert sorted(f.stem for f in lone_masks) == sorted([f"{stems[5]}_mask", "zz_extra_mask"])


def test_find_dataset(tmp_path):
    (tmp_path / "rgbs_colorNormalized").mkdir()
    (tmp_path / "masks").mkdir()
    assert find_dataset(tmp_path) == (tmp_path / "rgbs_colorNormalized", tmp_path / "masks")
    with pytest.raises(io.InputError, match="masks"):
        find_dataset(tmp_path / "rgbs_colorNormalized")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_splits_by_slide_never_share_a_slide(seed):
    slides = [f"TCGA-{site}-{p:04d}-DX1" for site in ("A1", "A2", "EW", "OL") for p in range(5)]
    df = pd.DataFrame({"slide_id": np.repeat(slides, 3), "site": np.repeat([s[5:7] for s in slides], 3)})
    split = assign_splits(df, "slide", val_fraction=0.2, test_fraction=0.1, seed=seed)
    per_slide = split.groupby(df["slide_id"]).nunique()
    assert (per_slide == 1).all()
    sides = split.groupby(df["slide_id"]).first().value_counts()
    assert sides.to_dict() == {"train": 14, "val": 4, "test": 2}
    assert split.equals(assign_splits(df, "slide", 0.2, 0.1, seed=seed))  # deterministic
    sites = assign_splits(df, "bcss-sites", val_fraction=0.25, seed=seed)
    assert (sites[df["site"].isin(BCSS_TEST_SITES)] == "test").all()
    assert set(sites[~df["site"].isin(BCSS_TEST_SITES)]) == {"train", "val"}
    assert (sites.groupby(df["slide_id"]).nunique() == 1).all()
    assert (assign_splits(df, "none") == "train").all()


# ---------------------------------------------------------------- tile_image / tile_dataset

def _region(path_img, path_mask, shape, seed):
    """A region whose mask has codes 0 (outside ROI), 1, 2 and 3 in blocks, image = f(code)."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=(shape[0] // 8 + 1, shape[1] // 8 + 1))
    codes = np.kron(codes, np.ones((8, 8), np.uint8))[: shape[0], : shape[1]]
    rgb = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    io.write_png(path_img, rgb)
    io.write_png(path_mask, codes)
    return rgb, codes


def _dataset(root, names, shape=(70, 90)):
    arrays = {}
    for i, name in enumerate(names):
        arrays[name] = _region(root / "rgbs_colorNormalized" / f"{name}.png", root / "masks" / f"{name}.png",
                               shape, seed=i)
    return arrays


NAMES = [
    "TCGA-A1-A0SK-DX1_xmin1_ymin2_MPP-0.2500",
    "TCGA-A2-A0D2-DX1_xmin3_ymin4_MPP-0.2500",
    "TCGA-A2-A0D2-DX1_xmin5_ymin6_MPP-0.2500",
    "TCGA-EW-A1OV-DX1_xmin7_ymin8_MPP-0.2500",
    "TCGA-OL-A5D6-DX1_xmin9_ymin10_MPP-0.2500",
]


def test_tile_image_rows_match_grid_and_roi_filter(tmp_path):
    scheme = bcss22()
    rgb, codes = _region(tmp_path / "a.png", tmp_path / "m.png", (50, 70), seed=3)
    df = tile_image(tmp_path / "a.png", tmp_path / "m.png", scheme, mpp=0.25, size=16, stride=8, min_roi=0.6,
                    label_threshold=0.1)
    labels = scheme.apply(codes)
    corners = grid(labels.shape, 16, 8)
    fr = _brute_fractions(labels, corners, 16, scheme.num_classes)
    keep = 1 - fr[:, -1] >= 0.6
    assert df[["x", "y"]].to_numpy().tolist() == corners[keep].tolist()
    np.testing.assert_allclose(df["roi_fraction"], 1 - fr[keep, -1], atol=1e-6)
    frac_cols = [f"frac_{n}" for n in scheme.names]
    label_cols = [f"label_{n}" for n in scheme.names]
    np.testing.assert_allclose(df[frac_cols].sum(axis=1) + (1 - df["roi_fraction"]), 1, atol=1e-5)
    roi_share = fr[keep, :-1] / (1 - fr[keep, -1:])
    assert (df[label_cols].to_numpy() == (roi_share >= 0.1)).all()
    assert (df["n_labels"] == df[label_cols].sum(axis=1)).all()
    assert df["image_path"].iloc[0] == str((tmp_path / "a.png").resolve())
    assert (df["width"] == 70).all() and (df["height"] == 50).all() and df["frac_tumor"].dtype == np.float32


def test_tile_image_rejects_size_mismatch_and_unknown_codes(tmp_path):
    io.write_png(tmp_path / "a.png", np.zeros((20, 30, 3), np.uint8))
    io.write_png(tmp_path / "m.png", np.ones((20, 31), np.uint8))
    with pytest.raises(io.InputError, match="30x20 but its mask m.png is 31x20"):
        tile_image(tmp_path / "a.png", tmp_path / "m.png", bcss22(), mpp=0.25, size=8, stride=8)
    io.write_png(tmp_path / "m.png", np.full((20, 30), 40, np.uint8))
    with pytest.raises(io.InputError, match=r"m.png: codes \[40\]"):
        tile_image(tmp_path / "a.png", tmp_path / "m.png", bcss22(), mpp=0.25, size=8, stride=8)


def test_tile_dataset_manifest_patches_resume_and_skips(tmp_path, monkeypatch):
    root, out = tmp_path / "data", tmp_path / "out"
    arrays = _dataset(root, NAMES)
    io.write_png(root / "rgbs_colorNormalized" / "bad_MPP-0.25.png", np.zeros((10, 10, 3), np.uint8))
    io.write_png(root / "masks" / "bad_MPP-0.25.png", np.ones((12, 10), np.uint8))
    pairs, _, _ = pair_files(*find_dataset(root))
    scheme = bcss5()
    result = tile_dataset(pairs, out, scheme, size=32, stride=16, split="bcss-sites", val_fraction=0.5,
                          patches=True, quiet=True)
    assert result.images == 5 and result.resumed == 0
    assert [item for item, _ in result.skipped] == [str(pairs[-1][0])] and "10x12" in result.skipped[0][1]
    df, meta = load_manifest(out)
    assert len(df) == result.patches == meta["counts"]["patches"]
    assert meta["params"]["size"] == 32 and meta["params"]["scheme"] == scheme.to_dict()
    # rows per image = grid windows that pass the ROI filter
    for name, (rgb, codes) in arrays.items():
        labels = scheme.apply(codes)
        corners = grid(labels.shape, 32, 16)
        fr = patch_fractions(labels, corners, 32, scheme.num_classes)
        assert (df["image_id"] == name).sum() == int((1 - fr[:, -1] >= 0.5).sum())
    frac_cols = [f"frac_{n}" for n in scheme.names]
    np.testing.assert_allclose(df[frac_cols].sum(axis=1), df["roi_fraction"], atol=1e-5)
    # patch files hold the right crops
    row = df.iloc[len(df) // 2]
    rgb, codes = arrays[row["image_id"]]
    name = f"{row['image_id']}_x{row['x']}_y{row['y']}.png"
    crop = (slice(row["y"], row["y"] + 32), slice(row["x"], row["x"] + 32))
    assert (io.read_image(out / "patches" / "images" / name) == rgb[crop]).all()
    assert (io.read_mask(out / "patches" / "masks" / name) == scheme.apply(codes[crop])).all()
    palette = Image.open(out / "patches" / "palette" / name)
    assert palette.mode == "P" and (np.asarray(palette) == scheme.apply(codes[crop])).all()
    assert len(list((out / "patches" / "images").iterdir())) == len(df)
    assert not list(out.rglob("*.part*"))
    # splits: no slide on two sides; BCSS test sites are test
    assert (df.groupby("slide_id")["split"].nunique() == 1).all()
    assert set(df.loc[df["site"].isin(["EW", "OL"]), "split"]) == {"test"}
    assert set(df.loc[~df["site"].isin(["EW", "OL"]), "split"]) == {"train", "val"}
    assert pd.read_csv(out / "manifest.csv").shape == df.shape
    # rerun: nothing is tiled again, same manifest
    calls = []
    monkeypatch.setattr("tissueseg.manifest.tile_image", lambda *a, **k: calls.append(a) or pd.DataFrame())
    again = tile_dataset(pairs, out, scheme, size=32, stride=16, split="bcss-sites", val_fraction=0.5,
                         patches=True, quiet=True)
    assert calls == [pairs[-1]] and again.resumed == 5 and again.patches == result.patches
    assert load_manifest(out)[0].equals(df)
    with pytest.raises(ValueError, match="size"):
        tile_dataset(pairs, out, scheme, size=64, stride=16, split="bcss-sites", val_fraction=0.5, quiet=True)


def test_cli_tile_json_and_overwrite(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    _dataset(root, NAMES[:3], shape=(40, 50))
    io.write_png(root / "masks" / "lonely.png", np.ones((4, 4), np.uint8))
    args = ["tile", str(root), "--out", str(out), "--size", "32", "--stride", "16", "--test-fraction", "0", "--json",
            "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 3, res.output  # finished; one input (the lonely mask) not used
    summary = json.loads(res.output)
    assert summary["images"] == 3 and summary["unmatched"][0]["problem"] == "mask without image"
    assert summary["patches"] == len(load_manifest(out)[0]) > 0
    res = CliRunner().invoke(main, args[:-2] + ["--size", "48"])
    assert res.exit_code == 1 and "error:" in res.output and "--overwrite" in res.output
    (root / "masks" / "lonely.png").unlink()
    res = CliRunner().invoke(main, args + ["--size", "48", "--overwrite"])
    assert res.exit_code == 0 and load_manifest(out)[1]["params"]["size"] == 48
    assert "Example" in CliRunner().invoke(main, ["tile", "--help"]).output


def test_pad_patches_are_filled_past_the_border(tmp_path):
    scheme = bcss22()
    rgb, codes = _region(tmp_path / "a.png", tmp_path / "m.png", (20, 30), seed=4)
    codes[:] = 2
    io.write_png(tmp_path / "m.png", codes)
    df = tile_image(tmp_path / "a.png", tmp_path / "m.png", scheme, mpp=0.25, size=16, stride=16, edge="pad",
                    min_roi=0.1, patches_out=tmp_path / "p")
    assert df[["x", "y"]].to_numpy().tolist() == [[0, 0], [16, 0], [0, 16], [16, 16]]
    assert df["roi_fraction"].tolist() == [1.0, 14 * 16 / 256, 16 * 4 / 256, 14 * 4 / 256]
    image = io.read_image(tmp_path / "p" / "images" / "a_x16_y16.png")
    mask = io.read_mask(tmp_path / "p" / "masks" / "a_x16_y16.png")
    assert (image[:4, :14] == rgb[16:, 16:]).all() and (image[4:] == 255).all() and (image[:, 14:] == 255).all()
    assert (mask[:4, :14] == 1).all() and (mask[4:] == IGNORE).all() and (mask[:, 14:] == IGNORE).all()


@pytest.mark.parametrize("kwargs,match", [({"val_fraction": 1.2}, "val_fraction"), ({"edge": "wrap"}, "edge"),
                                          ({"min_roi": 2.0}, "min_roi"), ({"split": "patient"}, "split")])
def test_tile_dataset_rejects_bad_parameters_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tile_dataset([], tmp_path / "out", bcss22(), **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape,edge,codes,reason", [
    ((20, 40), "drop", 1, "region is 40x20 px, smaller than one 32 px patch: edge drop keeps no partial patch"),
    ((12, 40), "shift", 1, "region is 40x12 px, smaller than one 32 px patch: the padded patch has under 0.5"),
    ((40, 64), "shift", 0, "none of its 6 patches has 0.5 of its pixels labelled"),  # code 0: outside the ROI
])
def test_a_region_that_gives_no_patch_is_skipped_with_its_reason(tmp_path, shape, edge, codes, reason):
    io.write_png(tmp_path / "a.png", np.full(shape + (3,), 180, np.uint8))
    io.write_png(tmp_path / "m.png", np.full(shape, codes, np.uint8))
    with pytest.raises(io.InputError, match=f"a.png: {reason}"):
        tile_image(tmp_path / "a.png", tmp_path / "m.png", bcss22(), size=32, stride=16, edge=edge, mpp=0.25)
    assert len(tile_image(tmp_path / "a.png", tmp_path / "m.png", bcss22(), size=8, stride=8, edge=edge,
                          min_roi=0.0, mpp=0.25)) > 0


def test_cli_tile_reports_a_region_smaller_than_a_patch_and_exits_3(tmp_path):
    root = tmp_path / "data"
    _dataset(root, NAMES[:2], shape=(40, 50))
    small = "TCGA-A2-A0D2-DX1_xmin9_ymin9_MPP-0.2500"
    _region(root / "rgbs_colorNormalized" / f"{small}.png", root / "masks" / f"{small}.png", (20, 24), seed=9)
    res = CliRunner().invoke(main, ["tile", str(root), "--out", str(tmp_path / "out"), "--size", "32",
                                    "--stride", "16", "--edge", "drop", "--split", "none", "--quiet"])
    assert res.exit_code == 3, res.output
    assert f"skipped {root / 'rgbs_colorNormalized' / small}.png: region is 24x20 px, smaller than one 32 px" \
           in res.output
    assert "2 images tiled" in res.output and load_manifest(tmp_path / "out")[0]["image_id"].nunique() == 2


# ---------------------------------------------------------------- resolution and splits, checked before work


def test_tile_records_each_regions_mpp_and_never_guesses(tmp_path):
    """µm/px from the name, from the PNG's resolution metadata, or from the option; an image
    that says nothing is skipped with its reason, not tiled at a guessed resolution."""
    root = tmp_path / "data"
    _dataset(root, [NAMES[0], "plain"], shape=(40, 50))
    rgb = io.read_image(root / "rgbs_colorNormalized" / "plain.png")
    Image.fromarray(rgb).save(root / "rgbs_colorNormalized" / "with-dpi.png", dpi=(25400 / 0.5, 25400 / 0.5))
    io.write_png(root / "masks" / "with-dpi.png", io.read_mask(root / "masks" / "plain.png"))
    pairs, _, _ = pair_files(*find_dataset(root))
    result = tile_dataset(pairs, tmp_path / "t", bcss5(), size=32, stride=16, split="none", quiet=True)
    df, _ = load_manifest(tmp_path / "t")
    assert df.groupby("image_id")["mpp"].first().to_dict() == {NAMES[0]: 0.25, "with-dpi": 0.5}
    assert [r for _, r in result.skipped] and "µm/px" in result.skipped[0][1] and "plain" in result.skipped[0][0]
    with pytest.raises(ValueError, match="several"):
        manifest_mpp(df)
    forced = tile_dataset(pairs, tmp_path / "f", bcss5(), size=32, stride=16, split="none", mpp=0.3, quiet=True)
    assert not forced.skipped and manifest_mpp(load_manifest(tmp_path / "f")[0]) == 0.3
    with pytest.raises(ValueError, match="records no µm/px"):
        manifest_mpp(df.drop(columns="mpp"))


def test_a_split_that_leaves_nothing_to_train_is_refused_before_any_work(tmp_path):
    root = tmp_path / "data"
    _dataset(root, NAMES[:2], shape=(40, 50))  # two patients
    pairs, _, _ = pair_files(*find_dataset(root))
    with pytest.raises(ValueError, match="leaves none for training"):
        tile_dataset(pairs, tmp_path / "out", bcss5(), size=32, split="slide", val_fraction=0.3,
                     test_fraction=0.3, quiet=True)
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(main, ["tile", str(root), "--out", str(tmp_path / "cli"), "--quiet"])
    assert res.exit_code == 1 and "leaves none for training" in res.output


def test_tile_defaults_are_one_set_for_the_cli_the_api_and_the_pipeline():
    from tissueseg.cli.tile import command
    from tissueseg.pipeline import PipelineConfig

    cli = {p.name: p.default for p in command.params}
    for name, info in TileParams.model_fields.items():
        assert cli[name] == info.default, name
    assert PipelineConfig(out="o", data={"root": "r"}).tile == TileParams()
