"""End to end: the default weak method (label grid) against the sigmoid-max MIL baseline.

Both learn from image labels only, on the same generated regions, with the same budget
(steps x batch), and are scored on a held-out generated region. Small on purpose (CI):
numbers are far below bench/quality.py's. Measured (seed 0): label grid 0.571 mIoU,
sigmoid-max 0.120; with 40 steps of 64 px crops on 16 px cells, 0.306 vs 0.149. The
thresholds (> 0.4 and > baseline + 0.15) fail when the weak method does not learn.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tissueseg import io, synth
from tissueseg.checkpoint import load_predictor
from tissueseg.config import TrainConfig
from tissueseg.losses import build_loss
from tissueseg.manifest import tile_dataset
from tissueseg.metrics import confusion_matrix, scores
from tissueseg.models import ModelConfig, build_model, normalization
from tissueseg.schemes import load_scheme
from tissueseg.weak import labelgrid
from tissueseg.weak.fit import crops, fit, predict_probs
from tissueseg.weak.pipeline import train_weak

SIZE, CELL, CROP, STEPS, BATCH = 256, 32, 96, 60, 4
CODES = (1, 2, 3, 9)


def _region(seed: int) -> tuple[np.ndarray, np.ndarray]:
    layout = synth.random_layout((SIZE, SIZE), seed, codes=CODES, scale=0.35, roi=False)
    return synth.make_region((SIZE, SIZE), seed, layout=layout)


def _miou(model: torch.nn.Module, norm, rgb: np.ndarray, labels: np.ndarray, k: int) -> float:
    pred = predict_probs(model, rgb, norm).argmax(0).numpy()
    return scores(confusion_matrix(pred, labels, k), [str(i) for i in range(k)])["miou"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("weak")
    scheme = load_scheme("bcss5")
    pairs = []
    for i in range(3):
        rgb, codes = _region(100 + i)
        pairs.append((io.write_png(root / "img" / f"r{i}.png", rgb), io.write_png(root / "msk" / f"r{i}.png", codes)))
    tile_dataset(pairs, root / "tiles", scheme, size=CELL, stride=CELL, edge="pad", min_roi=0.0, split="none",
                 quiet=True)
    test_rgb, test_codes = _region(7)
    return root, scheme, pairs, test_rgb, scheme.apply(test_codes)


@pytest.mark.slow
def test_label_grid_beats_sigmoid_max(data):
    torch.set_num_threads(2)
    root, scheme, pairs, test_rgb, test_labels = data
    k = scheme.num_classes
    cfg = TrainConfig.model_validate({
        "data": {"manifest": str(root / "tiles" / "manifest.parquet"), "patch_size": CROP},
        "run": {"steps": STEPS, "batch_size": BATCH, "seed": 0, "out": str(root / "weak")},
    })
    result = train_weak(cfg, quiet=True)
    predictor = load_predictor(result.checkpoint)
    weak = _miou(predictor.model, (predictor.mean, predictor.std), test_rgb, test_labels, k)

    torch.manual_seed(0)  # the baseline: FCN + sigmoid-max on crop labels, same data and budget
    cfg_fcn = ModelConfig(arch="fcn")
    fcn, norm = build_model(cfg_fcn, k), normalization(cfg_fcn)
    regions = [(io.read_image(img), labelgrid.encode(labelgrid.cell_labels(scheme.apply(io.read_mask(m)), CROP, k)))
               for img, m in pairs]
    mil = build_loss("sigmoid-max")
    fit(fcn, crops(regions, CROP, BATCH, 0, align=CROP),
        lambda model, x, bits: mil(model.forward_maps(x), labelgrid.decode(bits[:, :1, :1], k)[:, :, 0, 0].float()),
        STEPS, norm, quiet=True)
    baseline = _miou(fcn, norm, test_rgb, test_labels, k)
    print(f"label grid {weak:.3f}, sigmoid-max {baseline:.3f}")
    assert weak > 0.4, (weak, baseline)
    assert weak > baseline + 0.15, (weak, baseline)


def test_train_weak_refuses_bad_manifests_and_keeps_outputs(data, tmp_path):
    root, scheme, pairs, *_ = data
    tile_dataset(pairs, tmp_path / "t", scheme, size=32, stride=16, split="none", quiet=True)
    cfg = TrainConfig.model_validate({"data": {"manifest": str(tmp_path / "t" / "manifest.parquet")},
                                      "run": {"steps": 1, "out": str(tmp_path / "o")}})
    with pytest.raises(ValueError, match="stride"):
        train_weak(cfg, quiet=True)
    cfg = TrainConfig.model_validate({"data": {"manifest": str(root / "tiles" / "manifest.parquet"), "patch_size": 24},
                                      "run": {"steps": 1, "out": str(tmp_path / "o")}})
    with pytest.raises(ValueError, match="multiple"):
        train_weak(cfg, quiet=True)
    (tmp_path / "o" / "best.pt").write_bytes(b"keep")
    cfg = TrainConfig.model_validate({"data": {"manifest": str(root / "tiles" / "manifest.parquet")},
                                      "run": {"steps": 1, "out": str(tmp_path / "o")}})
    with pytest.raises(FileExistsError):
        train_weak(cfg, quiet=True)
    assert (tmp_path / "o" / "best.pt").read_bytes() == b"keep"


def test_train_command_runs_the_default_weak_method(data, tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from tissueseg.cli import main

    root = data[0]
    config = Path(__file__).resolve().parents[1] / "configs" / "weak.yaml"
    res = CliRunner().invoke(main, ["train", str(config), "--manifest", str(root / "tiles"), "--out",
                                    str(tmp_path / "w"), "--steps", "2", "--weights", "none", "--quiet", "--json",
                                    "--set", "run.batch_size=2", "--set", "data.patch_size=64"])
    assert res.exit_code == 0, res.output
    predictor = load_predictor(tmp_path / "w" / "best.pt")
    assert predictor.config["loss"]["name"] == "label-grid" and predictor.config["weak"]["cell"] == CELL
    assert predictor.patch_size == 64 and predictor.scheme.names == data[1].names
    with pytest.raises(ValueError, match="label-grid is trained by"):
        from tissueseg.train import train

        train(TrainConfig.model_validate({"data": {"manifest": str(root / "tiles")}, "loss": {"name": "label-grid"}}))
