"""Every command on real pixels: the BCSS region of TCGA-A1-A0SK in ../shared (mask and H&E).

Expected values come from the files themselves by independent means (``np.unique`` on the
mask, the grid arithmetic of a 3136 x 2240 region, the BCSS-WSSS patch names of the same
pixels), never from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from tissueseg.cli import main
from tissueseg.manifest import load_manifest
from tissueseg.schemes import bcss5, bcss22, bcss_wsss4

NAME = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"
WIDTH, HEIGHT = 3136, 2240


@pytest.fixture(scope="module")
def region(bcss_region_dir: Path) -> tuple[Path, Path, np.ndarray]:
    """``(image, mask, codes)`` of the real region."""
    image = bcss_region_dir / "rgbs_colorNormalized" / f"{NAME}.png"
    mask = bcss_region_dir / "masks" / f"{NAME}.png"
    return image, mask, np.asarray(Image.open(mask))


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts of a shift-edge grid: on the stride, the last one moved back to the border."""
    starts = list(range(0, length - size + 1, stride))
    return starts + [length - size] if starts[-1] + size < length else starts


def _run(*args: str) -> dict:
    res = CliRunner().invoke(main, [*args, "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_stats_counts_every_code_of_the_real_mask(region, tmp_path):
    _, mask, codes = region
    values, counts = np.unique(codes, return_counts=True)
    summary = _run("stats", str(mask), "--scheme", "bcss22", "--out", str(tmp_path / "s22"))
    pixels = {row["class"]: row["pixels"] for row in summary["classes"]}
    assert {bcss22().names[v - 1]: int(c) for v, c in zip(values, counts)} == {k: v for k, v in pixels.items() if v}
    assert summary["labelled_pixels"] == WIDTH * HEIGHT and summary["ignored_pixels"] == 0
    five = _run("stats", str(mask), "--scheme", "bcss5", "--out", str(tmp_path / "s5"))
    share = {row["class"]: row["proportion"] for row in five["classes"]}
    assert share["other"] == pytest.approx(counts[values == 9][0] / codes.size)  # fat is "other" in bcss5
    assert share["inflammatory"] == pytest.approx(counts[values == 3][0] / codes.size)


def test_tile_cuts_the_grid_a_3136_by_2240_region_has(region, tmp_path):
    image, mask, codes = region
    _run("tile", "--images", str(image.parent), "--masks", str(mask.parent), "--out", str(tmp_path / "t"),
         "--size", "256", "--stride", "128", "--split", "none", "--scheme", "bcss5")
    df, meta = load_manifest(tmp_path / "t")
    xs, ys = _starts(WIDTH, 256, 128), _starts(HEIGHT, 256, 128)
    assert len(df) == len(xs) * len(ys) == 24 * 17 and (df["roi_fraction"] == 1).all()
    assert sorted(zip(df["y"], df["x"])) == sorted((y, x) for y in ys for x in xs)
    assert (df["mpp"] == 0.25).all()
    row = df[(df["x"] == 1280) & (df["y"] == 640)].iloc[0]
    patch = bcss5().apply(codes[640:896, 1280:1536])
    for i, name in enumerate(bcss5().names):
        assert row[f"frac_{name}"] == pytest.approx((patch == i).mean(), abs=1e-6)


def test_224_px_patch_labels_match_the_bcss_wsss_names_of_the_same_pixels(region, bcss_wsss_dir, tmp_path):
    """The 140 BCSS-WSSS training patches of A0SK are this region's 224 px grid (column-major, 10
    a column); their [abcd] flags say "class covers more than 1 % of the patch"."""
    image, mask, _ = region
    _run("tile", "--images", str(image.parent), "--masks", str(mask.parent), "--out", str(tmp_path / "t"),
         "--size", "224", "--stride", "224", "--split", "none", "--scheme", "bcss-wsss4", "--label-threshold", "0.01")
    df, _ = load_manifest(tmp_path / "t")
    assert len(df) == 140
    ours = {(int(x), int(y)): "".join(str(int(r[f"label_{n}"])) for n in bcss_wsss4().names)
            for x, y, (_, r) in zip(df["x"], df["y"], df.iterrows())}
    agree = 0
    for path in (bcss_wsss_dir / "training").glob(f"{NAME}+*.png"):
        index, flags = int(path.stem.split("+")[1].split("[")[0]), path.stem.split("[")[1].rstrip("]")
        agree += ours[(224 * (index // 10), 224 * (index % 10))] == flags
    assert agree >= 138  # the region's README: 138 of 140 (both misses at about 1 %)


def test_colorize_writes_the_real_mask_in_the_palette_and_an_overlay(region, tmp_path):
    image, mask, codes = region
    summary = _run("colorize", str(mask), "--images", str(image.parent), "--scheme", "bcss22",
                   "--out", str(tmp_path / "c"))
    assert summary["written"] == 1
    palette = Image.open(tmp_path / "c" / f"{NAME}.png")
    assert palette.mode == "P" and (np.asarray(palette) == bcss22().apply(codes)).all()
    overlay = np.asarray(Image.open(tmp_path / "c" / f"{NAME}_overlay.png"))
    assert overlay.shape == (HEIGHT, WIDTH, 3) and (tmp_path / "c" / "legend.png").is_file()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small FCN (random weights) as a bcss5 checkpoint at 1 µm/px: predictions cover every pixel."""
    from tissueseg.checkpoint import Preprocessing, save_checkpoint
    from tissueseg.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = {"model": {"arch": "fcn", "encoder": "resnet18", "weights": "none", "output_stride": 32}}
    model = build_model(ModelConfig.model_validate(config["model"]), 5)
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_checkpoint(path, model=model, config=config, scheme=bcss5(),
                    preprocessing=Preprocessing(1.0, 256, (0.5,) * 3, (0.25,) * 3))
    return path


def test_predict_then_evaluate_scores_every_labelled_pixel_of_the_real_region(region, checkpoint, tmp_path,
                                                                              one_thread):
    image, mask, codes = region
    summary = _run("predict", str(image), "--model", str(checkpoint), "--out", str(tmp_path / "p"))
    result = summary["results"][0]
    assert result["size"] == [WIDTH // 4, HEIGHT // 4] and not result["tissue_detection"]
    labels = np.asarray(Image.open(tmp_path / "p" / NAME / "labels.png"))
    assert labels.shape == (HEIGHT, WIDTH) and labels.max() < 5  # every pixel of a region is predicted
    scores = _run("evaluate", str(tmp_path / "p"), "--truth", str(mask.parent), "--out", str(tmp_path / "e"))
    assert scores["scheme"] == "bcss5" and scores["coverage"] == 1.0
    assert scores["pixels"] == codes.size
    expected = np.bincount(bcss5().apply(codes).ravel(), minlength=5)
    assert [scores["per_class"][n]["support"] for n in bcss5().names] == expected[:5].tolist()


def test_run_on_the_real_region(bcss_region_dir, tmp_path, one_thread):
    """The whole pipeline on the real region (one region: no split, it predicts what it trained on)."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "out": "out", "data": {"root": str(bcss_region_dir)}, "samples": 2,
        "tile": {"size": 256, "stride": 256, "split": "none"},
        "predict": {"split": "train", "window": 512, "overlap": 0.0},
        "train": {"full": {"model": {"arch": "fcn", "encoder": "resnet18", "weights": "none",
                                     "output_stride": 32}, "run": {"steps": 2, "batch_size": 2}}}}))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "c.yaml"), "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["patches"] == {"train": len(_starts(WIDTH, 256, 256)) * len(_starts(HEIGHT, 256, 256))}
    metrics = json.loads((tmp_path / "out" / "eval" / "full" / "metrics.json").read_text())
    assert metrics["pairs"] == 1 and metrics["coverage"] == 1.0 and metrics["pixels"] == WIDTH * HEIGHT
    assert (tmp_path / "out" / "report.html").is_file()
