"""End to end: method ``cam`` (labels of whole patches -> classifier -> CAM pseudo-masks ->
DeepLabv3+) against the sigmoid-max MIL baseline, at the same label granularity.

Both learn from the image labels of the same non-overlapping 64 px patches of the same
generated regions, through ``tissueseg.train.train``, with the same number of optimiser
steps x batch (cam's two stages together), and are scored on held-out generated regions.
Small on purpose (CI): bench/quality.py has the real comparison.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tissueseg import io, synth
from tissueseg.checkpoint import load_predictor, read_checkpoint
from tissueseg.config import CamConfig, TrainConfig
from tissueseg.manifest import load_manifest, tile_dataset
from tissueseg.models import encoders
from tissueseg.metrics import confusion_matrix, scores
from tissueseg.schemes import IGNORE, load_scheme
from tissueseg.supervision.cam import CLASSIFIER_DIR, classifier_config
from tissueseg.train import train

SIZE, PATCH, CODES = 256, 64, (1, 2, 3, 9)
STAGE1, STAGE2, BATCH = 60, 100, 4

pytestmark = pytest.mark.usefixtures("one_thread")


def _region(seed: int) -> tuple[np.ndarray, np.ndarray]:
    layout = synth.random_layout((SIZE, SIZE), seed, codes=CODES, scale=0.35, roi=False)
    return synth.make_region((SIZE, SIZE), seed, layout=layout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    scheme = load_scheme("bcss5")
    pairs = []
    for i in range(6):
        rgb, codes = _region(200 + i)
        pairs.append((io.write_png(root / "img" / f"r{i}.png", rgb), io.write_png(root / "msk" / f"r{i}.png", codes)))
    tile_dataset(pairs, root / "patches", scheme, size=PATCH, stride=PATCH, edge="pad", min_roi=0.0, split="none",
                 mpp=0.25, quiet=True)
    held = [_region(17 + i) for i in range(2)]
    return root, scheme, [(rgb, scheme.apply(codes)) for rgb, codes in held]


def _config(manifest: Path, out: Path, method: str, steps: int, **sections) -> TrainConfig:
    data = {"method": method, "data": {"manifest": str(manifest), "stain_jitter": 0.0},
            "run": {"steps": steps, "batch_size": BATCH, "seed": 0, "out": str(out), "val_every": steps,
                    "checkpoint_every": steps}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return TrainConfig.model_validate(data)


@torch.no_grad()
def _miou(checkpoint: Path, held: list[tuple[np.ndarray, np.ndarray]]) -> float:
    p = load_predictor(checkpoint)
    k = p.scheme.num_classes
    cm = sum(confusion_matrix(p.probabilities(p.preprocess(torch.from_numpy(rgb)[None])).argmax(1)[0].numpy(),
                              labels, k) for rgb, labels in held)
    return scores(cm, p.scheme.names)["miou"]


@pytest.mark.slow
def test_cam_beats_sigmoid_max_from_the_labels_of_the_same_patches(data, tmp_path):
    root, _, held = data
    cam = train(_config(root / "patches", tmp_path / "cam", "cam", STAGE2, cam={"classifier_steps": STAGE1}),
                quiet=True)
    mil = train(_config(root / "patches", tmp_path / "mil", "mil", STAGE1 + STAGE2, loss={"name": "sigmoid-max"},
                        model={"arch": "fcn"}), quiet=True)
    inference = load_predictor(cam.best).inference  # the local gate is on by default
    assert (inference.gate_window, inference.gate_power) == (CamConfig().local_gate, CamConfig().local_gate_power)
    cam_miou, baseline = _miou(cam.best, held), _miou(mil.best, held)
    print(f"cam {cam_miou:.3f}, sigmoid-max {baseline:.3f}")
    assert cam_miou > baseline + 0.1, (cam_miou, baseline)


def test_cam_trains_stage_one_then_learns_from_its_pseudo_masks_without_reading_masks(data, tmp_path, monkeypatch):
    root, scheme, _ = data
    df, _ = load_manifest(root / "patches")
    train_masks = set(df["mask_path"])
    real = io.read_mask

    def guarded(path):
        assert str(path) not in train_masks, f"method cam read the mask {path}"
        return real(path)

    monkeypatch.setattr(io, "read_mask", guarded)
    starts = []
    monkeypatch.setattr(encoders, "init_encoder", lambda model, classifier: starts.append(
        {k: v.clone() for k, v in classifier.encoder.state_dict().items()}))
    cfg = _config(root / "patches", tmp_path / "w", "cam", 2, model={"weights": "none"},
                  cam={"classifier_steps": 2, "gate": 0.3, "local_gate": None, "tta": "none", "flip_tta": True,
                       "init_encoder": True})
    result = train(cfg, quiet=True)
    stage1 = read_checkpoint(tmp_path / "w" / CLASSIFIER_DIR / "last.pt")
    assert stage1["config"]["model"]["arch"] == "classifier" and stage1["state"]["step"] == 2
    assert len(starts) == 1  # stage 2 started from the trained classifier's encoder
    torch.testing.assert_close(starts[0]["conv_stem.weight"], stage1["model"]["encoder.conv_stem.weight"])
    previews = sorted((tmp_path / "w" / "pseudo-masks").glob("*.png"))
    assert [p.stem for p in previews] == [f"r{i}" for i in range(6)]
    for path, rows in df.groupby("image_path"):  # the pseudo-mask never holds a class the patch's labels lack
        mask = np.asarray(io.read_mask(tmp_path / "w" / "pseudo-masks" / f"{Path(path).stem}.png"))
        for _, row in rows.iterrows():
            allowed = {i for i, n in enumerate(scheme.names) if row[f"label_{n}"]} | {IGNORE}
            window = mask[row["y"] : row["y"] + PATCH, row["x"] : row["x"] + PATCH]
            assert set(np.unique(window)) <= allowed
    p = load_predictor(result.best)
    assert p.inference.flip_tta and p.inference.gate_threshold == 0.3 and p.inference.gate_window is None
    gate = p.gate.state_dict()  # the gate is the trained classifier itself
    assert gate.keys() == stage1["model"].keys()
    for name, value in stage1["model"].items():
        torch.testing.assert_close(gate[name], value, rtol=0, atol=0)
    probs = p.probabilities(p.preprocess(torch.from_numpy(data[2][0][0][None, :64, :64])))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 64))


def test_cam_refuses_overlapping_patches(data, tmp_path):
    root, scheme, _ = data
    pairs = [(p, root / "msk" / p.name) for p in sorted((root / "img").glob("*.png"))]
    tile_dataset(pairs, tmp_path / "t", scheme, size=64, stride=32, split="none", mpp=0.25, quiet=True)
    with pytest.raises(ValueError, match="stride 32 != size 64"):
        train(_config(tmp_path / "t", tmp_path / "o", "cam", 1, model={"weights": "none"}), quiet=True)


def test_stage_one_config_ignores_the_pseudo_mask_and_prediction_options(tmp_path):
    def stage1(**cam) -> dict:
        return classifier_config(SimpleNamespace(cfg=_config(tmp_path / "m", tmp_path / "o", "cam", 5, cam=cam))).to_dict()

    base = stage1(classifier_steps=3)
    assert base == stage1(classifier_steps=3, prototypes=0, tta="d4", gate=0.4, local_gate=None, refine_radius=4,
                          flip_tta=True)
    assert base == stage1(classifier_steps=3, local_gate=32, local_gate_power=2.0, mosaics=0.5, presence_power=2.0,
                          local_presence_power=0.5)
    assert base["run"]["steps"] == 3 and base["model"]["arch"] == "classifier"
    assert base != stage1(classifier_steps=4) and base != stage1(classifier_steps=3, balanced=False)


def test_overwrite_keeps_a_stage_one_finished_on_the_same_config_and_data(data, tmp_path):
    root = data[0]

    def run(steps: int, classifier_steps: int, prototypes: int) -> int:
        """Train with --overwrite; the step stage 1's last.pt was written at (its mtime in ns)."""
        train(_config(root / "patches", tmp_path / "w", "cam", steps, model={"weights": "none"},
                      cam={"classifier_steps": classifier_steps, "tta": "none", "prototypes": prototypes}),
              quiet=True, overwrite=True)
        return (tmp_path / "w" / CLASSIFIER_DIR / "last.pt").stat().st_mtime_ns

    first = run(2, 2, 3)
    assert run(3, 2, 0) == first  # other stage-2 and pseudo-mask options: the classifier is kept
    assert run(3, 3, 0) != first  # another stage-1 config: trained again
    assert read_checkpoint(tmp_path / "w" / CLASSIFIER_DIR / "last.pt")["state"]["step"] == 3


def test_one_kind_of_class_gate_at_a_time(tmp_path):
    with pytest.raises(ValueError, match="cam.gate and cam.local_gate"):
        _config(tmp_path / "m", tmp_path / "o", "cam", 5, cam={"gate": 0.4})
    assert _config(tmp_path / "m", tmp_path / "o", "cam", 5, cam={"gate": 0.4, "local_gate": None}).cam.gate == 0.4


def test_cam_mixes_mosaics_of_single_label_patches_into_stage_two(data, tmp_path, monkeypatch):
    from tissueseg.weak import mosaic

    root = data[0]
    drawn = []
    arrays = mosaic.Mosaics.arrays

    def spy(self, index, epoch=0):
        rgb, mask = arrays(self, index, epoch)
        drawn.append((self.size, self.tile, mask))
        return rgb, mask

    monkeypatch.setattr(mosaic.Mosaics, "arrays", spy)
    cam = {"classifier_steps": 1, "tta": "none", "prototypes": 0, "local_gate": None}
    train(_config(root / "patches", tmp_path / "w", "cam", 3, model={"weights": "none"}, cam={**cam, "mosaics": 0.5}),
          quiet=True)
    assert len(drawn) == 3 * BATCH // 2  # half of every batch of 4
    assert all(size == PATCH and tile == PATCH // 2 for size, tile, _ in drawn)  # tiles: half the window
    singles = load_manifest(root / "patches")[0]
    names = [f"label_{n}" for n in data[1].names]
    present = set(np.flatnonzero(singles.loc[singles[names].sum(axis=1) == 1, names].sum(axis=0).to_numpy()))
    assert set(np.unique(np.concatenate([m.ravel() for _, _, m in drawn]))) <= present  # classes of single-label patches
    with pytest.raises(ValueError, match="patches.*cam.mosaics: mosaic size 64 is not a multiple of the tile 48"):
        train(_config(root / "patches", tmp_path / "v", "cam", 1, model={"weights": "none"},
                      cam={**cam, "mosaics": 0.5, "mosaic_tile": 48}), quiet=True)
    assert not (tmp_path / "v" / CLASSIFIER_DIR / "last.pt").exists()  # refused before stage 1 trained
