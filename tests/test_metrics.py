"""Metrics on hand-computed confusion matrices, folder evaluation and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tissueseg.cli import main
from tissueseg.colorize import colorize_files, write_label_png
from tissueseg.io import InputError
from tissueseg.metrics import ConfusionAccumulator, confusion_matrix, evaluate_folders, plot_confusion, scores
from tissueseg.schemes import bcss5, bcss22, bcss_wsss4, bcss_wsss_masks

TRUTH = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
PRED = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
# valid pixels (truth, pred): (0,0) (0,1) (1,1) (1,1) (0,2) (2,2) (2,0); last column: no prediction
CM = np.array([[1, 1, 1, 0], [0, 2, 0, 0], [1, 0, 1, 0]])


def test_confusion_matrix_numpy_torch_and_accumulator():
    assert confusion_matrix(PRED, TRUTH, 3).tolist() == CM.tolist()
    assert confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TRUTH), 3).dtype == np.int64
    acc = ConfusionAccumulator(3)
    acc.add(torch.from_numpy(PRED), torch.from_numpy(TRUTH))
    acc.add(PRED[:1], TRUTH[:1])
    assert acc.cm.tolist() == (CM + np.array([[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]])).tolist()
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([5]), np.array([0]), 3)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0]), np.array([3]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, TRUTH[:1], 3)


def test_a_labelled_pixel_without_prediction_is_a_miss():
    truth = np.zeros((100, 100), np.uint8)
    pred = np.full_like(truth, 255)
    pred[0, 0] = 0  # one pixel predicted (right), 9,999 predicted as nothing
    s = scores(confusion_matrix(pred, truth, 2), ["a", "b"])
    assert s["miou"] == pytest.approx(1e-4) and s["per_class"]["a"]["recall"] == pytest.approx(1e-4)
    assert s["coverage"] == pytest.approx(1e-4) and s["pixel_accuracy"] == pytest.approx(1e-4)
    assert s["per_class"]["a"]["precision"] == 1.0 and s["pixels"] == 10_000
    # per class: a missing prediction counts against the true class only; unlabelled pixels never count
    truth = np.array([0, 0, 1, 1, 255, 255])
    pred = np.array([0, 255, 1, 255, 255, 1])
    cm = confusion_matrix(pred, truth, 2)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 1]]
    s = scores(cm, ["a", "b"])
    assert s["per_class"]["a"]["iou"] == pytest.approx(0.5) and s["per_class"]["b"]["iou"] == pytest.approx(0.5)
    assert s["per_class"]["b"]["coverage"] == pytest.approx(0.5) and s["coverage"] == pytest.approx(0.5)
    acc = ConfusionAccumulator(2)  # training uses the same definition
    acc.add(torch.from_numpy(pred), torch.from_numpy(truth))
    assert acc.cm.tolist() == cm.tolist()


def test_scores_hand_values_and_absent_class():
    cm = np.zeros((4, 4), np.int64)
    cm[:3, :3] = CM[:, :3]
    s = scores(cm, ["a", "b", "c", "d"])
    iou = [1 / 4, 2 / 3, 1 / 3]
    for name, v in zip("abc", iou):
        assert s["per_class"][name]["iou"] == pytest.approx(v)
    assert s["per_class"]["a"]["dice"] == pytest.approx(2 / 5)
    assert s["per_class"]["a"]["precision"] == pytest.approx(1 / 2)
    assert s["per_class"]["a"]["recall"] == pytest.approx(1 / 3)
    assert s["per_class"]["b"]["support"] == 2
    assert math.isnan(s["per_class"]["d"]["iou"]) and s["classes_scored"] == ["a", "b", "c"]
    assert s["miou"] == pytest.approx(np.mean(iou))
    assert s["mdice"] == pytest.approx(np.mean([2 / 5, 4 / 5, 2 / 4]))
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)
    assert s["fwiou"] == pytest.approx(3 / 7 * 1 / 4 + 2 / 7 * 2 / 3 + 2 / 7 * 1 / 3)
    # predicted but absent from truth: IoU 0, counts in the mean
    s2 = scores(np.array([[1, 1], [0, 0]]), ["x", "y"])
    assert s2["per_class"]["y"]["iou"] == 0 and s2["miou"] == pytest.approx(0.25)
    assert s["coverage"] == 1.0 and s["per_class"]["a"]["coverage"] == 1.0  # a (K, K) matrix: all predicted
    with pytest.raises(ValueError, match="does not match"):
        scores(np.zeros((2, 4)), ["x", "y"])


def test_plot_confusion_writes_png(tmp_path):
    path = plot_confusion(CM, ["a", "b", "c"], tmp_path / "cm.png")
    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] > 200
    assert len(np.unique(np.asarray(img.convert("L")))) > 10


def _write(path, arr, mode="L"):
    Image.fromarray(arr.astype(np.uint8), mode=mode).save(path)


def _folders(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    # bcss5 codes: tumor 1, stroma 2, inflammatory 3, necrosis 4, other 9; 0 ignored
    _write(truth / "r1.png", np.array([[1, 1, 2, 2], [3, 0, 4, 9]]))
    _write(pred / "r1.png", np.array([[0, 0, 1, 0], [2, 1, 3, 4]]))
    _write(truth / "r2.png", np.array([[1, 1]]))
    _write(pred / "r2.png", np.array([[0, 1, 1]]))  # size mismatch -> skipped
    _write(pred / "extra.png", np.array([[0]]))
    (pred / "broken.png").write_bytes(b"not a png")
    (truth / "broken.png").write_bytes(b"x")
    return pred, truth


def test_evaluate_folders_codes_and_skips(tmp_path):
    pred, truth = _folders(tmp_path)
    r = evaluate_folders(pred, truth, "bcss5")
    assert r["pairs"] == 1 and len(r["skipped"]) == 2
    assert any("r2.png" in s and "differs" in s for s in r["skipped"])
    assert r["unmatched_predictions"] == [str(pred / "extra.png")]
    cm = np.array(r["confusion"])
    assert cm.sum() == 7 and cm[0, 0] == 2 and cm[1, 1] == 1 and cm[1, 0] == 1 and cm[4, 4] == 1
    assert r["pixel_accuracy"] == pytest.approx(6 / 7)
    with pytest.raises(InputError):
        evaluate_folders(pred, tmp_path / "nope", "bcss5")


def test_evaluate_reads_the_predict_layout(tmp_path):
    pred, truth = _folders(tmp_path)
    flat = evaluate_folders(pred, truth, "bcss5")
    nested = tmp_path / "nested"
    for p in pred.iterdir():  # predict writes <out>/<stem>/labels.png
        (nested / p.stem).mkdir(parents=True)
        p.rename(nested / p.stem / "labels.png")
    r = evaluate_folders(nested, truth, "bcss5")
    assert r["confusion"] == flat["confusion"] and r["pairs"] == flat["pairs"] == 1
    assert r["unmatched_predictions"] == [str(nested / "extra" / "labels.png")]


def test_evaluate_wsss_convention_ignores_background(tmp_path):
    pred, truth = tmp_path / "p", tmp_path / "t"
    pred.mkdir(), truth.mkdir()
    mask = Image.fromarray(np.array([[0, 1, 4, 4]], np.uint8), mode="P")
    mask.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 153, 0, 255, 255, 255, 255])
    mask.save(truth / "a+0.png")
    _write(pred / "a+0.png", np.array([[0, 0, 3, 2]]))
    r = evaluate_folders(pred, truth, convention="wsss")
    assert r["names"] == ["tumor", "stroma", "lymphocytic_infiltrate", "necrosis"]
    assert np.array(r["confusion"]).sum() == 2 and r["pixel_accuracy"] == 0.5


def test_wsss_convention_scores_models_of_either_bcss_wsss_scheme_and_refuses_others(tmp_path):
    truth = tmp_path / "t"
    truth.mkdir()
    mask = Image.fromarray(np.array([[0, 1, 2, 4]], np.uint8), mode="P")
    mask.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 153, 0, 255, 255, 255, 255])
    mask.save(truth / "a+0.png")
    labels = np.array([[0, 1, 1, 3]], np.uint8)
    for scheme in (bcss_wsss_masks(), bcss_wsss4()):  # trained on the dataset's masks, or on BCSS codes
        pred = tmp_path / scheme.name
        write_label_png(pred / "a+0.png", labels, scheme)
        r = evaluate_folders(pred, truth, convention="wsss")
        assert np.array(r["confusion"])[:, :4].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    write_label_png(tmp_path / "bcss5" / "a+0.png", labels, bcss5())
    with pytest.raises(InputError, match="bcss5"):
        evaluate_folders(tmp_path / "bcss5", truth, convention="wsss")


def test_per_image_table_and_coverage(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    codes = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])  # bcss5: tumor 1, stroma 2
    _write(truth / "full.png", codes)
    _write(pred / "full.png", np.array([[0, 0, 1, 1], [0, 0, 1, 1]]))
    _write(truth / "half.png", codes)
    _write(pred / "half.png", np.array([[0, 0, 1, 1], [255, 255, 255, 255]]))  # bottom row: no prediction
    r = evaluate_folders(pred, truth, "bcss5", out=tmp_path / "out")
    assert r["coverage"] == pytest.approx(12 / 16) and r["miou"] == pytest.approx(6 / 8)
    rows = {row["image"]: row for row in r["per_image"]}
    assert rows["full"]["miou"] == 1.0 and rows["full"]["coverage"] == 1.0 and rows["full"]["pixels"] == 8
    assert rows["half"]["miou"] == pytest.approx(0.5) and rows["half"]["coverage"] == pytest.approx(0.5)
    assert rows["half"]["pixel_accuracy"] == pytest.approx(0.5) and rows["half"]["iou"]["tumor"] == pytest.approx(0.5)
    assert math.isnan(rows["half"]["iou"]["necrosis"])
    lines = (tmp_path / "out" / "per_image.csv").read_text().splitlines()
    assert lines[0] == ("image,prediction,truth,pixels,coverage,miou,pixel_accuracy,iou_tumor,iou_stroma,"
                        "iou_inflammatory,iou_necrosis,iou_other")
    assert lines[2].startswith("half,") and ",8,0.500000,0.500000,0.500000,0.500000,0.500000,,," in lines[2]


def test_scheme_comes_from_the_predictions(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    codes = np.array([[1, 2, 3], [4, 9, 20]], np.uint8)
    _write(truth / "r.png", codes)
    colorize_files([truth / "r.png"], pred, bcss5(), quiet=True)  # palette PNG of bcss5 classes, scheme recorded
    r = evaluate_folders(pred, truth)
    assert r["scheme"] == "bcss5" and r["pixel_accuracy"] == 1.0
    with pytest.raises(InputError, match=r"r.png: was predicted with scheme 'bcss5', not 'bcss22'"):
        evaluate_folders(pred, truth, "bcss22")
    assert evaluate_folders(pred, truth, "bcss5")["miou"] == 1.0
    bare = tmp_path / "bare"
    bare.mkdir()
    _write(bare / "r.png", np.asarray(Image.open(pred / "r.png")))  # same labels, nothing recorded
    with pytest.raises(InputError, match=r"bare/r.png: records no class scheme; pass --scheme"):
        evaluate_folders(bare, truth)
    _write(truth / "s.png", codes)
    write_label_png(pred / "s.png", bcss22().apply(codes), bcss22())
    with pytest.raises(InputError, match=r"s.png: records scheme 'bcss22' but .*r.png records 'bcss5'"):
        evaluate_folders(pred, truth)
    res = CliRunner().invoke(main, ["evaluate", str(bare), "--truth", str(truth), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "records no class scheme; pass --scheme" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_model_of_the_wsss_masks_is_scored_on_bcss_codes_with_the_schemes_classes(tmp_path):
    from tissueseg.schemes import bcss_wsss4, bcss_wsss_masks

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    codes = np.array([[1, 1, 2, 2], [3, 4, 9, 0]], np.uint8)  # BCSS: tumour, stroma, lymphocytes, necrosis, ignored
    _write(truth / "r.png", codes)
    labels = bcss_wsss4().apply(codes)
    labels[0, 0] = 1  # one tumour pixel called stroma
    write_label_png(pred / "r.png", labels, bcss_wsss_masks())  # predicted class indices, the WSSS masks' scheme
    with pytest.raises(InputError, match=r"codes \[9\] are not in scheme .bcss-wsss-masks."):  # the masks' indices
        evaluate_folders(pred, truth)
    r = evaluate_folders(pred, truth, "bcss-wsss4")
    assert r["scheme"] == "bcss-wsss4" and r["pixel_accuracy"] == pytest.approx(5 / 6)
    assert r["per_class"]["tumor"]["iou"] == pytest.approx(0.5) and r["per_class"]["necrosis"]["iou"] == 1.0


def test_duplicate_stems_are_refused(tmp_path):
    pred, truth = _folders(tmp_path)
    (pred / "r1").mkdir()
    _write(pred / "r1" / "labels.png", np.zeros((2, 4)))  # the predict layout, same stem as r1.png
    with pytest.raises(ValueError, match=r"pred/r1/labels.png and .*pred/r1.png: two prediction files share the "
                                         r"name 'r1', which pairs them"):
        evaluate_folders(pred, truth, "bcss5")


def test_cli_evaluate_outputs_json_and_rerun_policy(tmp_path):
    pred, truth = _folders(tmp_path)
    out = tmp_path / "out"
    args = ["evaluate", str(pred), "--truth", str(truth), "--scheme", "bcss5", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(main, args + ["--json"])
    assert res.exit_code == 3, res.output  # finished, with 3 predictions not scored
    summary = json.loads(res.stdout)
    assert summary["pairs"] == 1 and summary["per_class"]["tumor"]["support"] == 2 and summary["coverage"] == 1.0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "per_class.csv", "per_image.csv", "confusion.png"}
    assert (out / "per_class.csv").read_text().splitlines()[0] == "class,iou,dice,precision,recall,coverage,support"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 3 and "already evaluated" in again.output and "tumor" in again.output
    assert "coverage 1.000" in again.output
    # other inputs: refused without --overwrite, recomputed with it
    _write(pred / "r1.png", np.array([[0, 0, 1, 0], [2, 1, 255, 255]]))
    stale = CliRunner().invoke(main, args)
    assert stale.exit_code == 1 and f"{out / 'metrics.json'}: exists and was made from other" in stale.output
    assert "--overwrite" in stale.output and json.loads((out / "metrics.json").read_text())["coverage"] == 1.0
    redo = CliRunner().invoke(main, [*args, "--overwrite", "--json"])
    assert redo.exit_code == 3 and json.loads(redo.stdout)["coverage"] == pytest.approx(5 / 7)
    bad = CliRunner().invoke(main, ["evaluate", str(tmp_path / "none"), "--truth", str(truth), "--out", str(out),
                                    "--overwrite"])
    assert bad.exit_code == 1 and bad.output.startswith("error: ")
