"""Weak-label layouts on generated files named as the published datasets name them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tissueseg.io import InputError
from click.testing import CliRunner

from tissueseg.cli import main
from tissueseg.manifest import load_manifest, manifest_mpp
from tissueseg.schemes import IGNORE, bcss_wsss4
from tissueseg.weaklabels import WEAK_SCHEMES, parse_name, read_weak_dataset, read_weak_folder, read_weak_mask

ROI = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"


def _rgb(path, size=8):
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(path)


def _pmask(path, arr, palette):
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(palette)
    img.save(path)


WSSS_PALETTE = [255, 0, 0, 0, 255, 0, 0, 0, 255, 153, 0, 255, 255, 255, 255]


def test_bcss_wsss_training_names(tmp_path):
    _rgb(tmp_path / f"{ROI}+0[1101].png")
    _rgb(tmp_path / "TCGA-EW-A1PB-DX1_xmin57214_ymin25940_MPP-0.2500+12[0010].png")
    (tmp_path / "notes.txt").write_text("x")
    table = read_weak_folder(tmp_path, "bcss-wsss")
    assert list(table.columns) == ["image_path", "image_id", "slide_id", "label_tumor", "label_stroma",
                                   "label_lymphocytic_infiltrate", "label_necrosis"]
    row = table.set_index("image_id").loc[f"{ROI}+0[1101]"]
    assert row.slide_id == "TCGA-A1-A0SK-DX1"
    assert [row.label_tumor, row.label_stroma, row.label_lymphocytic_infiltrate, row.label_necrosis] == [1, 1, 0, 1]
    assert sorted(table.label_lymphocytic_infiltrate.tolist()) == [0, 1]
    assert table.label_tumor.dtype == np.uint8


def test_bcss_wsss_val_folder_labels_from_masks(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    name = f"{ROI}+3.png"
    _rgb(tmp_path / "img" / name, 4)
    arr = np.array([[0, 0, 4, 4], [2, 2, 4, 4], [0, 0, 4, 4], [0, 0, 4, 4]])
    _pmask(tmp_path / "mask" / name, arr, WSSS_PALETTE)
    table = read_weak_folder(tmp_path, "bcss-wsss")
    assert table.loc[0, ["label_tumor", "label_stroma", "label_lymphocytic_infiltrate", "label_necrosis"]].tolist() \
        == [1, 0, 1, 0]
    mask = read_weak_mask(table.loc[0, "mask_path"], "bcss-wsss")
    assert mask.dtype == np.uint8
    assert (mask[:, 2:] == IGNORE).all() and mask[1, 0] == 2 and mask[0, 0] == 0


def test_luad_histoseg_names_and_scheme(tmp_path):
    _rgb(tmp_path / "1031280-2300-27920-[1 0 0 1].png")
    _rgb(tmp_path / "22-A-100-200-[0 1 1 0].png")
    table = read_weak_folder(tmp_path, "luad-histoseg").set_index("image_id")
    names = WEAK_SCHEMES["luad-histoseg"].names
    assert names == ["tumor_epithelium", "necrosis", "lymphocyte", "tumor_associated_stroma"]
    assert table.loc["1031280-2300-27920-[1 0 0 1]", [f"label_{n}" for n in names]].tolist() == [1, 0, 0, 1]
    assert table.loc["22-A-100-200-[0 1 1 0]", "slide_id"] == "22-A"
    assert WEAK_SCHEMES["luad-histoseg"].colors[0].tolist() == [205, 51, 51]
    assert WEAK_SCHEMES["bcss-wsss"].names == bcss_wsss4().names  # the BCSS-WSSS classes on the mask indices
    assert WEAK_SCHEMES["bcss-wsss"].apply(np.array([[0, 1, 2, 3, 4]], np.uint8)).tolist() == [[0, 1, 2, 3, IGNORE]]


def test_bad_names_and_masks(tmp_path):
    with pytest.raises(InputError, match="four 0/1"):
        parse_name(f"{ROI}+0[1201].png", "bcss-wsss")
    with pytest.raises(InputError, match="LUAD-HistoSeg"):
        parse_name("p-1-2-[1 0 1].png", "luad-histoseg")
    with pytest.raises(ValueError, match="layout"):
        parse_name("x.png", "camelyon")
    bad = tmp_path / "m.png"
    _pmask(bad, np.array([[0, 7]]), WSSS_PALETTE)
    with pytest.raises(InputError, match=r"codes \[7\] .*expected 0..4"):
        read_weak_mask(bad, "luad-histoseg")
    _rgb(tmp_path / f"{ROI}+1.png")
    with pytest.raises(InputError, match="no image labels"):
        read_weak_folder(tmp_path, "bcss-wsss")


def _published(root, layout_names, val_masks):
    """A dataset in the published layout: training/ (labels in the names), val/img + val/mask."""
    (root / "training").mkdir(parents=True)
    for name in layout_names:
        _rgb(root / "training" / name)
    (root / "val" / "img").mkdir(parents=True)
    (root / "val" / "mask").mkdir()
    for name, arr in val_masks.items():
        _rgb(root / "val" / "img" / name, arr.shape[0])
        _pmask(root / "val" / "mask" / name, arr, WSSS_PALETTE)


def test_a_published_dataset_reads_into_a_manifest_with_its_splits(tmp_path):
    arr = np.array([[0] * 8] * 2 + [[1] * 8] * 2 + [[4] * 8] * 4)  # 16 tumour, 16 stroma, 32 background
    _published(tmp_path / "wsss", [f"{ROI}+0[1101].png", f"{ROI}+1[0100].png"], {f"{ROI}+0.png": arr})
    table = read_weak_dataset(tmp_path / "wsss", "bcss-wsss")
    assert table["split"].tolist() == ["train", "train", "val"]
    assert (table["size"] == 8).all() and (table["x"] == 0).all() and (table["mpp"] == 0.25).all()
    val = table.iloc[2]
    assert val["frac_tumor"] == val["frac_stroma"] == 0.25 and val["roi_fraction"] == 0.5
    assert [val[f"label_{n}"] for n in bcss_wsss4().names] == [1, 1, 0, 0]
    assert np.isnan(table.iloc[0]["frac_tumor"]) and not isinstance(table.iloc[0]["mask_path"], str)
    out = tmp_path / "tiles"
    res = CliRunner().invoke(main, ["tile", str(tmp_path / "wsss"), "--layout", "bcss-wsss", "--out", str(out),
                                    "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    df, meta = load_manifest(out)
    assert meta["counts"]["splits"] == {"train": 2, "val": 1} and manifest_mpp(df[df["split"] == "train"]) == 0.25
    assert meta["params"]["scheme"]["name"] == "bcss-wsss-masks" and meta["params"]["stride"] == 8


def test_a_layout_without_resolution_needs_mpp(tmp_path):
    (tmp_path / "luad" / "training").mkdir(parents=True)
    _rgb(tmp_path / "luad" / "training" / "p1-0-0-[1 0 0 1].png")
    with pytest.raises(InputError, match="µm/px"):
        read_weak_dataset(tmp_path / "luad", "luad-histoseg")
    assert read_weak_dataset(tmp_path / "luad", "luad-histoseg", mpp=1.0)["mpp"].tolist() == [1.0]


def test_the_real_bcss_wsss_sample_reads_as_published(bcss_wsss_dir):
    table = read_weak_dataset(bcss_wsss_dir, "bcss-wsss")
    assert table["split"].value_counts().to_dict() == {"train": 238, "val": 14}
    train = table[table["split"] == "train"]
    assert train["slide_id"].value_counts().to_dict() == {"TCGA-A1-A0SK-DX1": 140, "TCGA-A1-A0SP-DX1": 98}
    labels = train[[f"label_{n}" for n in bcss_wsss4().names]].astype(str).agg("".join, axis=1)
    assert labels.value_counts()["1100"] == 91 and labels.value_counts()["0001"] == 36  # as its README counts
    val = table[table["split"] == "val"]
    assert (val["frac_tumor"] == 0).all() and (val["frac_necrosis"] == 0).all()  # stroma, lymphocytes, glass
    assert (val[["frac_stroma", "frac_lymphocytic_infiltrate"]].sum(axis=1) > 0).all()
