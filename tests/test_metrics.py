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
from tissueseg.io import InputError
from tissueseg.metrics import ConfusionAccumulator, confusion_matrix, evaluate_folders, plot_confusion, scores

TRUTH = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
PRED = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
# valid pixels (truth, pred): (0,0) (0,1) (1,1) (1,1) (0,2) (2,2) (2,0)
CM = np.array([[1, 1, 1], [0, 2, 0], [1, 0, 1]])


def test_confusion_matrix_numpy_torch_and_accumulator():
    assert confusion_matrix(PRED, TRUTH, 3).tolist() == CM.tolist()
    assert confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TRUTH), 3).dtype == np.int64
    acc = ConfusionAccumulator(3)
    acc.add(torch.from_numpy(PRED), torch.from_numpy(TRUTH))
    acc.add(PRED[:1], TRUTH[:1])
    assert acc.cm.tolist() == (CM + np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]])).tolist()
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([5]), np.array([0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, TRUTH[:1], 3)


def test_scores_hand_values_and_absent_class():
    cm = np.zeros((4, 4), np.int64)
    cm[:3, :3] = CM
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


def test_cli_evaluate_outputs_json_and_resume(tmp_path):
    pred, truth = _folders(tmp_path)
    out = tmp_path / "out"
    args = ["evaluate", str(pred), "--truth", str(truth), "--scheme", "bcss5", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(main, args + ["--json"])
    assert res.exit_code == 3, res.output  # finished, with 3 predictions not scored
    summary = json.loads(res.stdout)
    assert len(summary["skipped"]) == 2 and len(summary["unmatched_predictions"]) == 1
    assert summary["pairs"] == 1 and summary["per_class"]["tumor"]["support"] == 2
    assert {p.name for p in out.iterdir()} == {"metrics.json", "per_class.csv", "confusion.png"}
    assert (out / "per_class.csv").read_text().splitlines()[0] == "class,iou,dice,precision,recall,support"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 3 and "already evaluated" in again.output and "tumor" in again.output
    bad = CliRunner().invoke(main, ["evaluate", str(tmp_path / "none"), "--truth", str(truth), "--out", str(out),
                                    "--overwrite"])
    assert bad.exit_code == 1 and bad.output.startswith("error: ")
