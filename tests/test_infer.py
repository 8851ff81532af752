"""Sliding-window inference: seamless blending, tissue skipping, resume, reruns, real slides, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import torch
import zarr
from click.testing import CliRunner
from PIL import Image

from tissueseg.checkpoint import Predictor, Preprocessing
from tissueseg.colorize import recorded_scheme
from tissueseg.fingerprint import StaleOutput
from tissueseg.infer import blend_weights, make_grid, predict_files, predict_image
from tissueseg.io import InputError
from tissueseg.schemes import IGNORE, bcss5

from .conftest import modes
from .test_slide import write_pyramid


def tiny_predictor(seed: int = 0, mpp: float = 0.5, patch: int = 64) -> Predictor:
    """A fixed-weight 2-layer conv net: 5x5 receptive field, 5 classes."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 3, padding=1))
    return Predictor(net.eval(), bcss5(), Preprocessing(mpp, patch, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                     {"model": {"arch": "fcn"}})  # takes windows of any size, like an FCN


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (h, w, 3)), (0, 0), 3)
    return np.clip(np.array([190, 110, 170]) + noise, 0, 255).astype(np.uint8)


def whole_image_probs(pred: Predictor, rgb: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = pred.preprocess(torch.from_numpy(rgb[None]))
        return torch.softmax(pred.model(x), 1)[0].numpy()


def region(tmp_path: Path, rgb: np.ndarray, name: str = "region_MPP-0.5000.png") -> Path:
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return path


def test_grid_and_weights() -> None:
    g = make_grid(300, 100, 64, 0.5)
    assert (g.stride, g.nx, g.ny, g.bands) == (32, 9, 3, 4)
    assert g.band_rows(3) == (96, 100)
    assert g.first_row_touching(2) == 1  # window row 1 spans rows 32..96
    w = blend_weights(64)
    assert w.max() == pytest.approx(1.0, abs=0.01) and w.min() > 0 and np.allclose(w, w.T)
    with pytest.raises(ValueError):
        make_grid(10, 10, 64, 1.0)


def test_windowed_equals_whole_image_and_no_seams(tmp_path: Path) -> None:
    pred = tiny_predictor()
    rgb = texture(200, 264)
    res = predict_image(pred, region(tmp_path, rgb), tmp_path / "out", tissue=False, probabilities=True, quiet=True)
    labels = zarr.open_array(Path(res.out_dir) / "labels.zarr", mode="r")[:]
    probs = zarr.open_array(Path(res.out_dir) / "probabilities.zarr", mode="r")[:].astype(np.float64) / 255
    ref = whole_image_probs(pred, rgb)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    agree = (labels[inner[1:]] == ref.argmax(0)[inner[1:]]).mean()
    assert agree > 0.999
    assert np.abs(probs[inner] - ref[inner]).max() < 0.05
    # seams: on a constant image the probability map is flat away from the border
    flat = np.full((200, 264, 3), (190, 110, 170), dtype=np.uint8)
    res = predict_image(pred, region(tmp_path, flat, "flat_MPP-0.5000.png"), tmp_path / "out", tissue=False,
                        probabilities=True, quiet=True)
    p = zarr.open_array(Path(res.out_dir) / "probabilities.zarr", mode="r")[0].astype(np.float64)
    step = np.abs(np.diff(p[2:-2, 2:-2], axis=1))
    seam_cols = [x - 3 for x in range(32, 262, 32)]  # window edges (stride 32), in diff coordinates
    assert step[:, seam_cols].max() <= 1  # at most one uint8 step anywhere at a seam
    assert np.ptp(p[2:-2, 2:-2]) <= 2


def test_tissue_detection_skips_glass(tmp_path: Path) -> None:
    rgb = np.full((192, 256, 3), 245, dtype=np.uint8)  # 0.8 x 1 mm at 4 µm/px: left half tissue
    rgb[:, :128] = texture(192, 128)
    kw = dict(target_mpp=4.0, tissue=True, quiet=True)
    res = predict_image(tiny_predictor(), region(tmp_path, rgb, "region_MPP-4.0000.png"), tmp_path / "out", **kw)
    labels = zarr.open_array(Path(res.out_dir) / "labels.zarr", mode="r")[:]
    assert (labels[:, 140:] == IGNORE).all()
    assert (labels[:, :120] != IGNORE).mean() > 0.95
    assert res.windows < 5 * 7 and res.windows_run == res.windows
    assert sum(a["pixels"] for a in res.areas) == (labels != IGNORE).sum()
    png = np.asarray(Image.open(Path(res.out_dir) / "labels.png"))
    assert png.shape == (192, 256) and np.array_equal(png, labels)
    glass = predict_image(tiny_predictor(), region(tmp_path, rgb[:, 140:], "glass_MPP-4.0000.png"), tmp_path / "out",
                          **kw)
    assert glass.windows == 0 and sum(a["pixels"] for a in glass.areas) == 0
    assert (zarr.open_array(Path(glass.out_dir) / "labels.zarr", mode="r")[:] == IGNORE).all()


class Interrupt(Exception):
    pass


def test_resume_after_interruption_is_identical(tmp_path: Path) -> None:
    pred = tiny_predictor(seed=1)
    rgb = np.full((200, 120, 3), 245, dtype=np.uint8)
    rgb[20:190, 10:100] = texture(170, 90, seed=2)
    path = region(tmp_path, rgb)
    kw = dict(window=64, overlap=0.75, batch_size=8, probabilities=True, quiet=True)
    full = predict_image(pred, path, tmp_path / "a", **kw)

    def stop_after_7(band: int, counts: np.ndarray) -> None:
        if band == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        predict_image(pred, path, tmp_path / "b", on_band=stop_after_7, **kw)
    dest = tmp_path / "b" / path.stem
    assert not (dest / "summary.json").exists()
    assert json.loads((dest / "progress.json").read_text())["bands_done"] == 7
    resumed = predict_image(pred, path, tmp_path / "b", **kw)
    assert resumed.resumed_from_band == 7 and resumed.windows_run < full.windows_run
    for store in ("labels.zarr", "probabilities.zarr"):
        a = zarr.open_array(tmp_path / "a" / path.stem / store, mode="r")[:]
        b = zarr.open_array(dest / store, mode="r")[:]
        assert np.array_equal(a, b)
    assert resumed.areas == full.areas
    # finished: a rerun is skipped, --overwrite recomputes
    again = predict_image(pred, path, tmp_path / "b", **kw)
    assert again.already_done and again.areas == full.areas
    assert not predict_image(pred, path, tmp_path / "b", overwrite=True, **kw).already_done


def test_rerun_keeps_only_an_output_of_the_same_input_model_and_parameters(tmp_path: Path) -> None:
    import os

    pred = tiny_predictor(seed=1)
    path = region(tmp_path, texture(96, 96))
    kw = dict(window=64, quiet=True)
    first = predict_image(pred, path, tmp_path / "out", **kw)
    summary = json.loads((Path(first.out_dir) / "summary.json").read_text())
    assert summary["fingerprint"] == first.fingerprint and summary["scheme"] == bcss5().to_dict()
    assert predict_image(pred, path, tmp_path / "out", **kw).already_done
    with torch.no_grad():  # the same model object, trained further: other weights
        next(pred.model.parameters()).add_(0.5)
    changes = [
        (pred, {}),
        (tiny_predictor(seed=2), {}),  # another model
        (tiny_predictor(seed=1), {"overlap": 0.25}),  # other parameters
        (tiny_predictor(seed=1), {"tissue": True}),
    ]
    for model, extra in changes:
        with pytest.raises(StaleOutput, match=r"region_MPP-0.5000/summary.json: exists and was made from other inputs, model or "
                                              r"parameters .* pass --overwrite"):
            predict_image(model, path, tmp_path / "out", **kw, **extra)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the input changed
    with pytest.raises(StaleOutput):
        predict_image(tiny_predictor(seed=1), path, tmp_path / "out", **kw)
    assert json.loads((Path(first.out_dir) / "summary.json").read_text())["fingerprint"] == first.fingerprint
    redone = predict_image(tiny_predictor(seed=2), path, tmp_path / "out", overwrite=True, **kw)
    assert not redone.already_done and redone.fingerprint != first.fingerprint
    assert predict_image(tiny_predictor(seed=2), path, tmp_path / "out", **kw).already_done
    # a batch goes on: the stale one is skipped with the reason
    other = region(tmp_path, texture(64, 64, seed=3), "other_MPP-0.5000.png")
    batch = predict_files(tiny_predictor(seed=1), [path, other], tmp_path / "out", **kw)
    assert [Path(r.path).name for r in batch.ok] == [other.name] and "--overwrite" in batch.skipped[0][1]


def test_tissue_detection_defaults_to_slides_only(nct_mosaic, tmp_path: Path) -> None:
    """Real tiles as tissue pieces on glass: as a slide, glass is dropped and pale tissue (fat,
    mucus) kept; as a region, every pixel is predicted unless detection is forced on."""
    rgb, classes, names = nct_mosaic
    pred = tiny_predictor()
    kw = dict(target_mpp=2.0, window=64, quiet=True)
    slide = tmp_path / "mosaic.tiff"
    write_pyramid(slide, rgb, 0.5)
    png = region(tmp_path, rgb, "mosaic_MPP-0.5000.png")

    def labelled(res) -> np.ndarray:
        labels = zarr.open_array(Path(res.out_dir) / "labels.zarr", mode="r")[:]
        return labels != IGNORE

    where = cv2.resize(classes, (rgb.shape[1] // 4, rgb.shape[0] // 4), interpolation=cv2.INTER_NEAREST)
    as_slide = predict_image(pred, slide, tmp_path / "slide", **kw)
    assert as_slide.tissue_detection
    kept = labelled(as_slide)
    for k, name in enumerate(names):
        assert kept[where == k].mean() > (0.85 if name == "ADI" else 0.95), name
    assert kept[where == -1].mean() < 0.02
    as_region = predict_image(pred, png, tmp_path / "region", **kw)
    assert not as_region.tissue_detection and labelled(as_region).all()
    forced = predict_image(pred, png, tmp_path / "forced", tissue=True, **kw)
    assert np.array_equal(labelled(forced), kept)
    assert not predict_image(pred, slide, tmp_path / "off", tissue=False, **kw).tissue_detection


def test_real_region_is_predicted_everywhere(bcss_region_dir: Path, tmp_path: Path) -> None:
    (path,) = (bcss_region_dir / "rgbs_colorNormalized").iterdir()
    res = predict_image(tiny_predictor(), path, tmp_path, target_mpp=4.0, window=64, quiet=True)
    labels = np.asarray(Image.open(Path(res.out_dir) / "labels.png"))
    assert labels.shape == (2240, 3136) and (labels != IGNORE).all()
    assert sum(a["pixels"] for a in res.areas) == res.size[0] * res.size[1]
    assert recorded_scheme(Path(res.out_dir) / "labels.png") == bcss5()


def test_real_slides_end_to_end(slides_dir: Path, tmp_path: Path) -> None:
    pred = tiny_predictor()
    kw = dict(target_mpp=4.0, window=128, batch_size=16, quiet=True)
    cmu = predict_image(pred, slides_dir / "CMU-1-Small-Region.svs", tmp_path, **kw)
    assert cmu.size == (277, 370)  # 2220 x 2967 px at 0.499 µm/px, read at 4 µm/px
    dest = Path(cmu.out_dir)
    for name in ("labels.tiff", "thumbnail.png", "overlay.png", "tissue.png", "regions.geojson", "areas.csv",
                 "areas.json", "summary.json", "labels.png"):
        assert (dest / name).is_file(), name
    with openslide.OpenSlide(str(dest / "labels.tiff")) as s:
        assert s.dimensions == cmu.size
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(4.0)
    from shapely.geometry import shape

    features = json.loads((dest / "regions.geojson").read_text())["features"]
    assert features and all(shape(f["geometry"]).is_valid for f in features)
    xs = [c[0] for f in features for c in f["geometry"]["coordinates"][0]]
    assert max(xs) <= 2220 + 8 and max(xs) > 1000  # level-0 coordinates

    tcga = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(InputError, match="no resolution metadata; pass --mpp"):
        predict_image(pred, tcga, tmp_path, **kw)
    res = predict_image(pred, tcga, tmp_path, mpp=0.5, **kw)
    assert res.level == 1 and res.size == (555, 446)
    tissue_frac = sum(a["pixels"] for a in res.areas) / (555 * 446)
    assert 0.4 < tissue_frac < 0.9
    assert not (Path(res.out_dir) / "labels.png").exists()  # a pyramid, not a region


def test_every_output_follows_the_umask(tmp_path: Path, umask: int) -> None:
    res = predict_image(tiny_predictor(), region(tmp_path, texture(64, 96)), tmp_path / "out", probabilities=True,
                        quiet=True)
    found = modes(Path(res.out_dir))
    assert "summary.json" in found and "labels.zarr/zarr.json" in found and "probabilities.tiff" in found
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o777 if (Path(res.out_dir) / name).is_dir() else 0o666) & ~umask}
    assert not wrong


def test_predict_files_skips_bad_input(tmp_path: Path) -> None:
    good = region(tmp_path, texture(64, 64))
    bad = tmp_path / "bad_MPP-0.5000.png"
    bad.write_bytes(b"broken")
    result = predict_files(tiny_predictor(), [good, bad], tmp_path / "out", quiet=True)
    assert len(result.ok) == 1 and len(result.skipped) == 1 and "bad_MPP-0.5000.png" in result.skipped[0][1]


def checkpoint(path: Path, gate: dict | None = None) -> Path:
    """A small FCN checkpoint (random weights) for bcss5 at 0.5 µm/px, 64 px windows; ``gate``: the
    :class:`~tissueseg.checkpoint.Inference` fields of a class gate (a patch classifier of random weights)."""
    from tissueseg.checkpoint import Inference, save_checkpoint
    from tissueseg.models import ModelConfig, build_model

    config = {"model": {"arch": "fcn", "encoder": "resnet18", "weights": "none"}}
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate(config["model"]), 5)
    inference = None
    if gate is not None:
        classifier = {"model": {"arch": "classifier", "encoder": "tf_efficientnet_lite0", "weights": "none"}}
        state = build_model(ModelConfig.model_validate(classifier["model"]), 5).state_dict()
        inference = Inference(gate={"model": state, "config": classifier}, **gate)
    save_checkpoint(path, model=model, config=config, scheme=bcss5(),
                    preprocessing=Preprocessing(0.5, 64, (0.5,) * 3, (0.25,) * 3), inference=inference)
    return path


@pytest.mark.slow
def test_workers_load_the_checkpoint_once_each(tmp_path: Path, caplog) -> None:
    import logging

    from tissueseg.checkpoint import load_predictor
    from tissueseg.schemes import load_scheme, scheme_from_dict

    model = checkpoint(tmp_path / "m.pt")
    paths = [region(tmp_path, texture(64, 96, seed=i), f"r{i}_MPP-0.5000.png") for i in range(3)]
    bad = tmp_path / "bad_MPP-0.5000.png"
    bad.write_bytes(b"broken")
    spec = bcss5().to_dict()
    spec["classes"][0]["name"] = "tumour"
    renamed = scheme_from_dict(spec)
    with caplog.at_level(logging.DEBUG, logger="tissueseg"):
        pooled = predict_files(model, [*paths, bad], tmp_path / "pooled", workers=2, tissue=False, quiet=True,
                               scheme=renamed)
    loads = [r for r in caplog.records if r.getMessage().startswith(f"loaded {model}")]
    assert 1 <= len(loads) <= 2 and len({r.process for r in loads}) == len(loads)  # once per worker process
    assert [Path(r.path) for r in pooled.ok] == paths and "bad_MPP-0.5000.png" in pooled.skipped[0][1]
    assert pooled.ok[0].areas[0]["class"] == "tumour"
    single = predict_files(model, paths, tmp_path / "single", tissue=False, quiet=True)
    for a, b in zip(pooled.ok, single.ok):
        assert np.array_equal(np.asarray(Image.open(Path(a.out_dir) / "labels.png")),
                              np.asarray(Image.open(Path(b.out_dir) / "labels.png")))
    with pytest.raises(ValueError, match="checkpoint path"):
        predict_files(load_predictor(model), paths, tmp_path / "x", workers=2)
    with pytest.raises(ValueError, match="has 4 classes, the model 5"):
        predict_files(model, paths, tmp_path / "x", workers=2, scheme=load_scheme("bcss-wsss4"))


def test_cli_predict(tmp_path: Path) -> None:
    from tissueseg.cli import main

    checkpoint(tmp_path / "m.pt")
    rgb = texture(96, 128)
    path = region(tmp_path, rgb, "img.png")
    runner = CliRunner()
    args = ["predict", str(path), "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "out"), "-q"]
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "img.png: no resolution metadata; pass --mpp" in res.output
    res = runner.invoke(main, [*args, "--mpp", "0.5", "--json", "--tissue-detection", "off"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["results"][0]["size"] == [128, 96] and not summary["skipped"]
    assert summary["results"][0]["scheme"]["name"] == "bcss5"
    assert (tmp_path / "out" / "img" / "labels.tiff").is_file()
    res = runner.invoke(main, [*args, "--mpp", "0.5", "--tissue-detection", "off"])
    assert res.exit_code == 0 and "done" in res.output
    res = runner.invoke(main, [*args, "--mpp", "0.5", "--tissue-detection", "on"])  # other options
    assert res.exit_code == 1 and "img/summary.json: exists and was made from other" in res.output
    # evaluate takes the scheme predict recorded, and refuses another one
    truth = tmp_path / "truth"
    truth.mkdir()
    Image.fromarray(np.full((96, 128), 2, np.uint8)).save(truth / "img.png")
    res = runner.invoke(main, ["evaluate", str(tmp_path / "out"), "--truth", str(truth), "--out",
                               str(tmp_path / "eval"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["scheme"] == "bcss5" and json.loads(res.output)["coverage"] == 1.0
    res = runner.invoke(main, ["evaluate", str(tmp_path / "out"), "--truth", str(truth), "--scheme", "bcss22",
                               "--out", str(tmp_path / "eval22")])
    assert res.exit_code == 1 and "img/labels.png: was predicted with scheme 'bcss5', not 'bcss22'" in res.output
    # two inputs with one stem would write one folder
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "img.png").write_bytes(path.read_bytes())
    res = runner.invoke(main, [*args, str(twin / "img.png"), "--mpp", "0.5"])
    assert res.exit_code == 1 and f"{path} and {twin / 'img.png'}: two inputs share the name 'img'" in res.output
    (tmp_path / "bad.png").write_bytes(b"broken")  # a batch with a bad input ends with exit code 3
    res = runner.invoke(main, [*args, str(tmp_path / "bad.png"), "--mpp", "0.5", "--tissue-detection", "off"])
    assert res.exit_code == 3 and "skipped" in res.output and "bad.png" in res.output


def test_inference_changes_keep_what_they_do_not_name_and_refuse_a_gate_the_model_lacks() -> None:
    from tissueseg.checkpoint import Inference, InferenceChanges

    gate = {"model": {}, "config": {}}
    local = Inference(flip_tta=True, gate=gate, gate_window=64, gate_power=4.0)
    assert InferenceChanges().apply(local) == local
    assert InferenceChanges(flip_tta=False).apply(local) == Inference(False, gate, gate_window=64, gate_power=4.0)
    assert InferenceChanges(gate_power=2.0).apply(local) == Inference(True, gate, gate_window=64, gate_power=2.0)
    assert InferenceChanges(gate_window=128).apply(local) == Inference(True, gate, gate_window=128, gate_power=4.0)
    assert InferenceChanges(gate_power=0.0).apply(local) == Inference(flip_tta=True)  # power 0: no gate
    window = Inference(gate=gate, gate_threshold=0.3)  # cam.gate: one gate per prediction window
    assert InferenceChanges(gate_window=32).apply(window) == Inference(gate=gate, gate_threshold=0.3, gate_window=32)
    with pytest.raises(ValueError, match="window gate"):
        InferenceChanges(gate_power=2.0).apply(window)
    assert InferenceChanges(flip_tta=True).apply(Inference()) == Inference(flip_tta=True)
    with pytest.raises(ValueError, match="no class gate"):
        InferenceChanges(gate_power=2.0).apply(Inference())
    with pytest.raises(ValueError, match="must be 0"):
        InferenceChanges(gate_power=-1.0)


def test_predict_changes_the_class_gate_of_a_checkpoint_without_retraining(tmp_path: Path) -> None:
    from tissueseg.checkpoint import InferenceChanges, load_predictor
    from tissueseg.cli import main

    gated = checkpoint(tmp_path / "gated.pt", gate={"gate_window": 32, "gate_power": 4.0})
    x = load_predictor(gated).preprocess(torch.from_numpy(texture(64, 64)[None]))
    plain = torch.softmax(load_predictor(checkpoint(tmp_path / "plain.pt")).model(x), 1).detach()
    for changes, window, power in [(None, 32, 4.0), (InferenceChanges(gate_power=1.0), 32, 1.0),
                                   (InferenceChanges(gate_window=16, gate_power=2.0), 16, 2.0)]:
        p = load_predictor(gated, changes=changes)
        expected = plain * p.gate.local_presence(x, window) ** power
        torch.testing.assert_close(p.probabilities(x), expected / expected.sum(1, keepdim=True))
    ungated = load_predictor(gated, changes=InferenceChanges(gate_power=0.0))
    assert ungated.gate is None
    torch.testing.assert_close(ungated.probabilities(x), plain)
    assert len({load_predictor(gated, changes=c).fingerprint() for c in (
        None, InferenceChanges(gate_power=1.0), InferenceChanges(gate_window=16), InferenceChanges(flip_tta=True))}) == 4

    path = region(tmp_path, texture(64, 96), "img_MPP-0.5000.png")
    runner = CliRunner()
    args = ["predict", str(path), "--tissue-detection", "off", "-q"]
    res = runner.invoke(main, [*args, "--model", str(gated), "--out", str(tmp_path / "a"), "--gate-power", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, [*args, "--model", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "img_MPP-0.5000" / "labels.png")),
                          np.asarray(Image.open(tmp_path / "b" / "img_MPP-0.5000" / "labels.png")))
    res = runner.invoke(main, [*args, "--model", str(gated), "--out", str(tmp_path / "a"), "--gate-power", "2"])
    assert res.exit_code == 1 and "summary.json: exists and was made from other" in res.output  # another gate
    res = runner.invoke(main, [*args, "--model", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "c"),
                               "--gate-window", "64", "--workers", "2"])
    assert res.exit_code == 1 and f"{tmp_path / 'plain.pt'}: the model has no class gate to change" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


def test_a_window_the_model_cannot_take_is_refused_before_any_work() -> None:
    from tissueseg.infer import predict_bands

    tiny = tiny_predictor()
    deeplab = Predictor(tiny.model, tiny.scheme, tiny.preprocessing, {"model": {"arch": "deeplabv3plus"}})
    reads = []
    grid = make_grid(80, 80, 40, 0.5)
    with pytest.raises(ValueError, match="window 40 is not a multiple of 16"):
        predict_bands(deeplab, lambda *a: reads.append(a), grid, np.zeros((80, 80), np.uint8))
    assert not reads
    predict_bands(tiny, lambda x, y, s: np.zeros((s, s, 3), np.uint8), grid, np.zeros((80, 80), np.uint8))


def test_read_error_reaches_the_caller(tmp_path: Path) -> None:
    from tissueseg.infer import predict_bands

    def broken(x: int, y: int, size: int) -> np.ndarray:
        if y > 0:
            raise OSError("tile decode failed")
        return np.zeros((size, size, 3), dtype=np.uint8)

    grid = make_grid(64, 256, 32, 0.5)
    labels = np.zeros((256, 64), dtype=np.uint8)
    with pytest.raises(OSError, match="tile decode failed"):
        predict_bands(tiny_predictor(), broken, grid, labels, batch_size=1)


def test_flip_tta_and_the_class_gate_of_a_checkpoint_shape_the_probabilities() -> None:
    from tissueseg.checkpoint import Inference

    tiny = tiny_predictor()
    x = tiny.preprocess(torch.from_numpy(texture(32, 48)[None]))
    plain = tiny.probabilities(x)
    tta = Predictor(tiny.model, tiny.scheme, tiny.preprocessing, tiny.config, Inference(flip_tta=True))
    with torch.no_grad():
        flipped = [torch.softmax(tiny.model(x.flip(d)), 1).flip(d) for d in (-1, -2)]
    torch.testing.assert_close(tta.probabilities(x), (plain + sum(flipped)) / 3)
    assert not torch.allclose(tta.probabilities(x), plain)  # the 3x3 kernels are not flip-symmetric

    class Gate(torch.nn.Module):  # image logits: classes 1 and 3 present, the others absent
        def forward(self, x):
            return torch.tensor([[-5.0, 5.0, -5.0, 5.0, -5.0]]).expand(len(x), 5)

    gated = Predictor(tiny.model, tiny.scheme, tiny.preprocessing, tiny.config,
                      Inference(gate={"model": {}, "config": {}}, gate_threshold=0.5), gate=Gate())
    p = gated.probabilities(x)
    assert torch.all(p[:, [0, 2, 4]] == 0)
    torch.testing.assert_close(p.sum(1), torch.ones_like(p[:, 0]))
    torch.testing.assert_close(p[:, 1] / p[:, 3], plain[:, 1] / plain[:, 3])


def test_the_local_gate_of_a_checkpoint_weighs_each_pixel_by_the_classifier_around_it() -> None:
    from tissueseg.checkpoint import Inference

    tiny = tiny_predictor()
    x = tiny.preprocess(torch.from_numpy(texture(32, 48)[None]))
    plain = tiny.probabilities(x)
    windows = []

    class Gate(torch.nn.Module):  # class 1 present on the left half only, class 2 nowhere, the others everywhere
        def local_presence(self, x, window):
            windows.append(window)
            logits = torch.full((len(x), 5, *x.shape[-2:]), 5.0)
            logits[:, 1, :, 24:] = -5.0
            logits[:, 2] = -5.0
            return torch.sigmoid(logits)

    gated = Predictor(tiny.model, tiny.scheme, tiny.preprocessing, tiny.config,
                      Inference(gate={"model": {}, "config": {}}, gate_window=16), gate=Gate())
    p = gated.probabilities(x)
    assert windows == [16]
    weight = Gate().local_presence(x, 16)
    expected = plain * weight
    torch.testing.assert_close(p, expected / expected.sum(1, keepdim=True))
    assert float(p[:, 2].max()) < 0.01 and float(p[:, 1, :, 24:].max()) < 0.01
    torch.testing.assert_close(p[:, 0] / p[:, 3], plain[:, 0] / plain[:, 3])

    class Even(torch.nn.Module):  # classes 0 and 1 equally likely (0.5) everywhere, the others certain
        def local_presence(self, x, window):
            presence = torch.ones((len(x), 5, *x.shape[-2:]))
            presence[:, :2] = 0.5
            return presence

    strong = Predictor(tiny.model, tiny.scheme, tiny.preprocessing, tiny.config,
                       Inference(gate={"model": {}, "config": {}}, gate_window=16, gate_power=3.0), gate=Even())
    expected = plain * Even().local_presence(x, 16) ** 3  # classes 0 and 1 weighed 1/8 against the others
    torch.testing.assert_close(strong.probabilities(x), expected / expected.sum(1, keepdim=True))
    assert strong.fingerprint() != Predictor(tiny.model, tiny.scheme, tiny.preprocessing, tiny.config,
                                             Inference(gate={"model": {}, "config": {}}, gate_window=16),
                                             gate=Even()).fingerprint()
