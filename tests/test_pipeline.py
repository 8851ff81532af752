"""The main job end to end: `tissueseg demo` on a tiny budget, up-to-date stages, the report in a browser."""

import json

import pytest
import yaml
from click.testing import CliRunner

from tissueseg.cli import main
from tissueseg.pipeline import load_pipeline_config, run_pipeline

from .browser import check_in_browser

TINY = ["--regions", "4", "--size", "384", "--slide-size", "1024", "--steps", "3", "--quiet"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--json", *TINY], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout[res.stdout.index("{"):])


@pytest.mark.slow
def test_demo_writes_every_stage_and_a_report_that_renders(demo):
    out, summary = demo
    per_model = ("train", "predict", "evaluate", "predict-regions", "evaluate-regions", "slides")
    assert set(summary["stages"]) == {"stats", "colorize", "tile", "tile:weak"} | {
        f"{stage}:{name}" for stage in per_model for name in ("full", "weak")}
    assert summary["models"]["weak"]["method"] == "cam"  # from the labels of whole 128 px patches
    assert (out / "train" / "weak" / "classifier" / "last.pt").is_file()
    for name in ("full", "weak"):
        metrics = json.loads((out / "eval" / name / "metrics.json").read_text())
        assert metrics["pairs"] >= 1 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
        assert summary["models"][name]["miou"] == pytest.approx(metrics["miou"])
        real = json.loads((out / "eval-regions" / name / "metrics.json").read_text())  # the packaged real crop
        assert real["pairs"] == 1 and real["coverage"] == 1.0 and real["pixels"] == 1024 * 1024
        assert summary["models"][name]["regions_miou"] == pytest.approx(real["miou"])
        slide = out / "slides" / name / "synth_slide"
        assert (slide / "labels.tiff").is_file() and (slide / "regions.geojson").is_file()
    assert (out / "stats" / "proportions.png").is_file() and (out / "tiles" / "manifest.parquet").is_file()
    html = (out / "report.html").read_text()
    for section in ("Dataset class proportions", "Sample patches", "Training curves", "Held-out evaluation",
                    "Predictions on held-out regions", "Real H&amp;E: a BCSS crop", "tissue, truth and predictions",
                    "Whole-slide predictions", "Configuration", "Versions"):
        assert section in html
    assert "src=\"file:" not in html
    result = check_in_browser(out / "report.html", out / "report.png")
    assert result["bad"] == [] and result["n"] >= 15


@pytest.mark.slow
def test_rerun_redoes_only_what_changed(demo):
    out, _ = demo
    cfg = load_pipeline_config(out / "demo.yaml")
    again = run_pipeline(cfg, quiet=True, log=lambda m: None)
    assert set(again["stages"].values()) == {"up to date"}
    cfg.train["weak"].run.steps = 2
    changed = run_pipeline(cfg, quiet=True, log=lambda m: None)
    redone = {k for k, v in changed["stages"].items() if v != "up to date"}
    assert redone == {"train:weak", "predict:weak", "evaluate:weak", "predict-regions:weak", "evaluate-regions:weak",
                      "slides:weak"}
    ledger = json.loads((out / "pipeline.json").read_text())  # as if Ctrl-C had stopped the full model's training
    ledger["train:full"] = "running:" + ledger["train:full"]
    (out / "pipeline.json").write_text(json.dumps(ledger))
    logs: list[str] = []
    resumed = run_pipeline(cfg, quiet=True, log=logs.append)
    assert "[train:full] resuming" in logs
    assert {k for k, v in resumed["stages"].items() if v != "up to date"} == {"train:full"}


@pytest.mark.slow
def test_a_demo_rerun_with_one_changed_parameter_redoes_what_depends_on_it(demo):
    out, _ = demo
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--json", *TINY[:-3], "--steps", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    stages = json.loads(res.stdout[res.stdout.index("{"):])["stages"]
    redone = {k for k, v in stages.items() if v != "up to date"}
    assert {k.split(":")[0] for k in redone} == {"train", "predict", "evaluate", "predict-regions", "evaluate-regions",
                                                 "slides"}  # the data, stats and tiles stay


def test_pipeline_config_paths_and_errors(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"out": "runs/x", "data": {"root": "BCSS"},
                                                     "predict": {"slides": ["s.svs"]}}))
    cfg = load_pipeline_config(tmp_path / "c.yaml", ["tile.size=512"])
    assert cfg.out == tmp_path / "runs" / "x" and cfg.data.root == tmp_path / "BCSS"
    assert cfg.predict.slides == [tmp_path / "s.svs"] and cfg.tile.size == 512
    assert set(cfg.train) == {"full", "weak"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"out": "x", "data": {"root": "a"}, "tile": {"size": -1}}))
    with pytest.raises(ValueError, match=r"bad.yaml: tile.size: "):
        load_pipeline_config(tmp_path / "bad.yaml")
    (tmp_path / "nodata.yaml").write_text(yaml.safe_dump({"out": "x", "data": {}}))
    with pytest.raises(ValueError, match=r"nodata.yaml: data: give data.root"):
        load_pipeline_config(tmp_path / "nodata.yaml")


@pytest.mark.parametrize("train,message", [
    ({"full": {"run": {"stepz": 5}}}, "train.full.run.stepz: Extra inputs are not permitted"),
    ({"full": {"model": {"arch": "unet"}}}, "train.full.model.arch: Input should be"),
    ({"weak": {"method": "weakest"}}, "train.weak.method: Input should be"),
    ({"full": {"data": {"patch_size": 200}}}, "train.full: patch size 200 is not a multiple of 16"),
    ({"full": {"run": {"out": "elsewhere"}}}, "train.full: data.manifest and run.out are set by the pipeline"),
])
def test_model_specs_are_validated_before_any_stage_runs(tmp_path, train, message):
    """A typo in a model's training config fails when the config is read, not after tiling."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"out": "out", "data": {"root": "data"}, "train": train}))
    with pytest.raises(ValueError) as err:
        load_pipeline_config(tmp_path / "c.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'c.yaml'}: {message}"), str(err.value)


def test_weak_is_the_default_weak_method_and_learns_from_non_overlapping_patches(tmp_path):
    from tissueseg.pipeline import DEFAULT_WEAK_METHOD, LABEL_GRID_CELL

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "out": "out", "data": {"root": "data"}, "tile": {"size": 256, "stride": 128},
        "train": {"full": {}, "weak": {"method": "weak"}, "mil": {"method": "mil", "loss": {"name": "lse"}}}}))
    cfg = load_pipeline_config(tmp_path / "c.yaml")
    assert cfg.train["weak"].method == DEFAULT_WEAK_METHOD
    assert cfg.train["full"].tiling(cfg.tile) == cfg.tile
    weak, mil = cfg.train["weak"].tiling(cfg.tile), cfg.train["mil"].tiling(cfg.tile)
    expected_weak = LABEL_GRID_CELL if DEFAULT_WEAK_METHOD == "label-grid" else 256
    assert (weak.size, weak.stride, weak.edge) == (expected_weak, expected_weak, "pad")
    assert (mil.size, mil.stride, mil.edge) == (256, 256, "pad")


def test_run_reports_a_folder_without_pairs(tmp_path):
    (tmp_path / "data" / "rgbs_colorNormalized").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"out": "out", "data": {"root": "data"}}))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "c.yaml"), "--quiet"])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "folder holds no image files" in res.output


def test_run_on_a_published_patch_label_dataset(bcss_wsss_dir, tmp_path, one_thread):
    """``data.layout``: the real BCSS-WSSS sample as downloaded; a weak model trains on training/'s
    labels and is scored on val/'s masks."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "out": "out", "data": {"root": str(bcss_wsss_dir), "layout": "bcss-wsss"}, "samples": 2,
        "predict": {"split": "val", "max_regions": 3},
        "train": {"mil": {"method": "mil", "loss": {"name": "lse"}, "model": {"arch": "fcn", "weights": "none"},
                          "run": {"steps": 2, "batch_size": 2, "val_every": 2}}}}))
    cfg = load_pipeline_config(tmp_path / "c.yaml")
    assert cfg.scheme == "bcss-wsss-masks"
    summary = run_pipeline(cfg, quiet=True, log=lambda m: None)
    assert summary["patches"] == {"train": 238, "val": 14}
    metrics = json.loads((tmp_path / "out" / "eval" / "mil" / "metrics.json").read_text())
    assert metrics["pairs"] == 3 and metrics["names"] == ["tumor", "stroma", "lymphocytic_infiltrate", "necrosis"]
    with pytest.raises(ValueError, match="method full cannot train on it"):
        load_pipeline_config(tmp_path / "c.yaml", ["train.mil.method=full", "train.mil.loss.name=ce"])
