"""The whole pipeline from one config: stats, colorize, tile, train, predict, evaluate, report.

:func:`run_pipeline` runs the stages in order; each stage has a key (a hash of its
parameters, its inputs' sizes and modification times, and the keys of the stages it
reads from) recorded in ``<out>/pipeline.json``, and a stage whose key is unchanged and
whose outputs exist is skipped. A second run after a change therefore redoes only what
the change affects, and a killed run resumes (the stages themselves resume too).
:func:`run_demo` generates a dataset and a slide first, then runs the same pipeline.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import io
from .fingerprint import file_stamps as _fingerprint, key as _key
from .schemes import load_scheme

Log = Callable[[str], None]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    root: Path | None = Field(None, description="one BCSS-style folder: rgbs_colorNormalized/ (or images/) + masks/")
    images: Path | None = None
    masks: Path | None = None
    image_suffix: str = ""
    mask_suffix: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.root is None) == (self.images is None or self.masks is None):
            raise ValueError("give data.root, or data.images and data.masks")
        return self


class TileSection(_Section):
    size: int = Field(256, gt=0)
    stride: int = Field(128, gt=0)
    edge: Literal["shift", "drop", "pad"] = "shift"
    min_roi: float = Field(0.5, ge=0, le=1)
    label_threshold: float = Field(0.05, gt=0, le=1)
    split: Literal["slide", "bcss-sites", "none"] = "slide"
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0


class PredictSection(_Section):
    split: str = Field("test", description="regions of this manifest split are predicted and evaluated")
    max_regions: int | None = Field(None, gt=0)
    slides: list[Path] = Field(default_factory=list, description="whole-slide images to predict")
    slide_mpp: float | None = Field(None, gt=0, description="µm/px of slides that carry none")
    window: int | None = Field(None, gt=0)
    overlap: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(8, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class PipelineConfig(_Section):
    out: Path
    data: DataSection
    scheme: str = "bcss5"
    workers: int = Field(1, ge=1)
    scheduler: str | None = None
    tile: TileSection = Field(default_factory=TileSection)
    train: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"full": {}, "weak": {"method": "weak"}},
        description="models to train: name -> training config (sections model, loss, data, optim, run; "
                    "'method: weak' trains from image labels with the default weak method)")
    predict: PredictSection = Field(default_factory=PredictSection)
    samples: int = Field(6, ge=0, description="sample patches shown in the report")


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML; relative paths are relative to the file. Errors name the file and field."""
    from .config import apply_overrides, read_yaml, validate

    path = Path(path)
    data = apply_overrides(read_yaml(path, "a mapping at the top level"), list(overrides))
    cfg = validate(PipelineConfig, data, str(path))
    base = path.resolve().parent
    fix = lambda p: p if p is None or p.is_absolute() else base / p  # noqa: E731
    cfg.out = fix(cfg.out)
    cfg.data.root, cfg.data.images, cfg.data.masks = fix(cfg.data.root), fix(cfg.data.images), fix(cfg.data.masks)
    cfg.predict.slides = [fix(p) for p in cfg.predict.slides]
    return cfg


# ----------------------------------------------------------------------------- stage bookkeeping


class _Ledger:
    """``pipeline.json``: the key each stage last finished with (``running:<key>`` while it runs)."""

    def __init__(self, path: Path):
        self.path = path
        self.keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def fresh(self, stage: str, key: str, outputs: Sequence[Path]) -> bool:
        return self.keys.get(stage) == key and all(Path(p).exists() for p in outputs)

    def done(self, stage: str, key: str) -> None:
        self.keys[stage] = key
        io.write_json(self.path, self.keys)

    def start(self, stage: str, key: str) -> bool:
        """Mark ``stage`` running; True when it must start over (not the same interrupted run)."""
        restart = self.keys.get(stage) != f"running:{key}"
        self.done(stage, f"running:{key}")
        return restart


# ----------------------------------------------------------------------------- the pipeline


def run_pipeline(cfg: PipelineConfig, *, quiet: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Run every stage of ``cfg`` (skipping those that are up to date); return a summary dict."""
    from .colorize import colorize_files
    from .manifest import find_dataset, load_manifest, pair_files
    from .stats import dataset_stats

    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = io.check_output_dir(cfg.out)
    scheme = load_scheme(cfg.scheme)
    ledger = _Ledger(out / "pipeline.json")
    summary: dict[str, Any] = {"out": str(out), "stages": {}}
    t_start = time.time()

    def stage(name: str, key: str, outputs: Sequence[Path], fn: Callable[[bool], Any]) -> bool:
        """Run ``fn(restart)`` unless up to date; ``restart`` is False when resuming the same stage."""
        if ledger.fresh(name, key, outputs):
            log(f"[{name}] up to date")
            summary["stages"][name] = "up to date"
            return False
        restart = ledger.start(name, key)
        log(f"[{name}] {'running' if restart else 'resuming'}")
        t0 = time.time()
        fn(restart)
        ledger.done(name, key)
        summary["stages"][name] = f"done in {time.time() - t0:.0f} s"
        return True

    if cfg.data.root is not None:
        images_dir, masks_dir = find_dataset(cfg.data.root)
    else:
        images_dir, masks_dir = cfg.data.images, cfg.data.masks
    pairs, lone_images, lone_masks = pair_files(images_dir, masks_dir, cfg.data.image_suffix, cfg.data.mask_suffix)
    if not pairs:
        raise ValueError(f"{images_dir}: no image/mask pairs (matched by file stem) with {masks_dir}")
    for p in [*lone_images, *lone_masks]:
        log(f"unmatched (no partner with the same stem): {p}")
    data_key = _key(_fingerprint([p for pair in pairs for p in pair]))
    masks = [m for _, m in pairs]

    # stats
    stats_dir = out / "stats"
    stats_key = _key(data_key, scheme.to_dict())
    stage("stats", stats_key, [stats_dir / "stats.json"],
          lambda _: dataset_stats(masks, scheme, workers=cfg.workers, scheduler=cfg.scheduler, quiet=quiet)
          .write(stats_dir, overwrite=True))

    # colorize a few regions (report samples)
    color_dir = out / "colorize"
    shown = pairs[: max(cfg.samples, 1)]

    def _colorize(_: bool) -> None:
        shutil.rmtree(color_dir, ignore_errors=True)
        colorize_files([m for _, m in shown], color_dir, scheme, images=images_dir, workers=cfg.workers,
                       quiet=quiet, overwrite=True)

    stage("colorize", _key(stats_key, [str(m) for _, m in shown]), [color_dir / "legend.png"], _colorize)

    # tile
    tiles_dir = out / "tiles"
    tile_key = _key(data_key, scheme.to_dict(), cfg.tile.model_dump())
    stage("tile", tile_key, [tiles_dir / "manifest.parquet"],
          lambda restart: _tile(cfg, tiles_dir, scheme, pairs=pairs, overwrite=restart, quiet=quiet))
    manifest, _ = load_manifest(tiles_dir)
    summary["patches"] = {str(k): int(v) for k, v in manifest["split"].value_counts().items()}

    # held-out regions
    held = manifest.loc[manifest["split"] == cfg.predict.split, ["image_path", "mask_path"]].drop_duplicates()
    held = held.sort_values("image_path")
    if cfg.predict.max_regions:
        held = held.head(cfg.predict.max_regions)
    if held.empty:
        log(f"no regions in split {cfg.predict.split!r}: nothing to predict and evaluate")
    held_images = [Path(p) for p in held["image_path"]]
    held_masks = {Path(i).stem: Path(m) for i, m in zip(held["image_path"], held["mask_path"])}

    models: dict[str, dict[str, Any]] = {}
    for name, train_spec in cfg.train.items():
        models[name] = _model_stages(name, train_spec, cfg, out, scheme, pairs, tile_key, tiles_dir, held_images,
                                     held_masks, stage, quiet)
    summary["models"] = {n: m["summary"] for n, m in models.items()}

    from .pipeline_report import build_report

    report = build_report(cfg, out, scheme, shown, color_dir, stats_dir, tiles_dir, models)
    summary["report"] = str(report)
    summary["seconds"] = round(time.time() - t_start, 1)
    io.write_json(out / "summary.json", summary)
    return summary


def _model_stages(name: str, spec: dict[str, Any], cfg: PipelineConfig, out: Path, scheme: Any, pairs: list,
                  tile_key: str, tiles_dir: Path, held_images: list[Path], held_masks: dict[str, Path],
                  stage: Callable[..., bool], quiet: bool) -> dict[str, Any]:
    """Train one model, predict the held-out regions and slides with it, evaluate it."""
    from .checkpoint import load_predictor
    from .infer import predict_files
    from .metrics import evaluate_folders, json_safe, per_class_csv, plot_confusion

    spec = dict(spec)
    method = spec.pop("method", "full")
    manifest = tiles_dir / "manifest.parquet"
    if method == "weak":  # the default weak method learns from the labels of small patches
        cell = int(spec.pop("cell", WEAK_CELL))
        cells_dir = out / f"tiles-{cell}"
        tile_key = _key(tile_key, cell)
        stage(f"tile:{name}", tile_key, [cells_dir / "manifest.parquet"],
              lambda restart: _tile(cfg, cells_dir, scheme, pairs=pairs, size=cell, stride=cell, edge="pad",
                                    overwrite=restart, quiet=quiet))
        manifest = cells_dir / "manifest.parquet"
    train_dir = out / "train" / name
    train_key = _key(tile_key, method, spec)
    stage(f"train:{name}", train_key, [train_dir / "best.pt"],
          lambda restart: _train(method, spec, manifest, train_dir, restart, quiet))
    result: dict[str, Any] = {"method": method, "train_dir": train_dir, "summary": {"method": method}}
    predictor = None

    def _predictor():
        nonlocal predictor
        if predictor is None:
            predictor = load_predictor(train_dir / "best.pt")
        return predictor

    pred_dir = out / "predict" / name
    pred_kw = dict(window=cfg.predict.window, overlap=cfg.predict.overlap, batch_size=cfg.predict.batch_size,
                   device=cfg.predict.device)
    pred_key = _key(train_key, _fingerprint(held_images), cfg.predict.model_dump(exclude={"slides", "slide_mpp"}))
    if held_images:
        def _predict_regions(restart: bool) -> None:
            if restart:
                shutil.rmtree(pred_dir, ignore_errors=True)
            res = predict_files(_predictor(), held_images, pred_dir, workers=1, quiet=quiet, tissue=False, **pred_kw)
            if res.skipped:
                raise ValueError("; ".join(r for _, r in res.skipped))

        stage(f"predict:{name}", pred_key, [pred_dir / p.stem / "summary.json" for p in held_images],
              _predict_regions)
        eval_dir = out / "eval" / name

        def _evaluate(_: bool) -> None:
            truth = eval_dir / "truth"  # the held-out masks under their image's stem (masks may carry a suffix)
            shutil.rmtree(truth, ignore_errors=True)
            truth.mkdir(parents=True)
            for stem, mask in held_masks.items():
                (truth / f"{stem}.png").symlink_to(mask)
            res = evaluate_folders(pred_dir, truth, scheme, truth_format="codes", quiet=True)
            io.write_json(eval_dir / "metrics.json", json_safe(res))
            io.write_text(eval_dir / "per_class.csv", per_class_csv(res))
            plot_confusion(np.asarray(res["confusion"]), scheme.names, eval_dir / "confusion.png")

        stage(f"evaluate:{name}", _key(pred_key), [eval_dir / "metrics.json"], _evaluate)
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        result.update(eval_dir=eval_dir, metrics=metrics, pred_dir=pred_dir)
        result["summary"].update(miou=metrics.get("miou"), pixel_accuracy=metrics.get("pixel_accuracy"))
    if cfg.predict.slides:
        slide_dir = out / "slides" / name
        slide_key = _key(train_key, _fingerprint(cfg.predict.slides), cfg.predict.model_dump())

        def _predict_slides(restart: bool) -> None:
            if restart:
                shutil.rmtree(slide_dir, ignore_errors=True)
            res = predict_files(_predictor(), cfg.predict.slides, slide_dir, mpp=cfg.predict.slide_mpp, quiet=quiet,
                                **pred_kw)
            if res.skipped:
                raise ValueError("; ".join(r for _, r in res.skipped))

        stage(f"slides:{name}", slide_key, [slide_dir / Path(s).stem / "summary.json" for s in cfg.predict.slides],
              _predict_slides)
        result["slide_dir"] = slide_dir
    return result


def _tile(cfg: PipelineConfig, out: Path, scheme: Any, *, pairs: list, overwrite: bool, quiet: bool,
          **grid: Any) -> None:
    """``tile_dataset`` with the config's settings (``grid`` overrides size, stride, edge)."""
    from .manifest import tile_dataset

    t = cfg.tile.model_dump() | grid
    tile_dataset(pairs, out, scheme, size=t["size"], stride=t["stride"], edge=t["edge"], min_roi=t["min_roi"],
                 label_threshold=t["label_threshold"], split=t["split"], val_fraction=t["val_fraction"],
                 test_fraction=t["test_fraction"], seed=t["seed"], workers=cfg.workers, scheduler=cfg.scheduler,
                 overwrite=overwrite, quiet=quiet)


def _train(method: str, spec: dict[str, Any], manifest: Path, out: Path, restart: bool, quiet: bool) -> None:
    """Train one model; an interrupted run of the same stage resumes from its last checkpoint."""
    from .config import TrainConfig
    from .train import train

    data = json.loads(json.dumps(spec))  # deep copy
    data.setdefault("data", {})["manifest"] = str(manifest)
    data.setdefault("run", {})["out"] = str(out)
    if method == "weak":
        data.setdefault("loss", {})["name"] = "label-grid"
    elif method != "full":
        raise ValueError(f"train method {method!r}: expected 'full' or 'weak'")
    train(TrainConfig.model_validate(data), quiet=quiet, overwrite=restart)


# ----------------------------------------------------------------------------- demo


WEAK_CELL = 32
"""Side in px of the small patches whose image labels the default weak method learns from."""
DEMO_TRAIN_STEPS = 200


def demo_config(out: Path, steps: int = DEMO_TRAIN_STEPS) -> PipelineConfig:
    """The pipeline the demo runs on its generated data: 128 px patches so it fits a few CPU minutes."""
    run = {"steps": steps, "batch_size": 8, "val_every": max(steps // 4, 1), "checkpoint_every": max(steps // 4, 1),
           "seed": 0}
    return PipelineConfig(
        out=out,
        data=DataSection(root=out / "data"),
        scheme="bcss5",
        tile=TileSection(size=128, stride=64, split="bcss-sites", val_fraction=0.25),
        train={"full": {"run": run, "data": {"workers": 0}}, "weak": {"method": "weak", "run": run}},
        predict=PredictSection(split="test", max_regions=2, window=256,
                               slides=[out / "data" / "slides" / "synth_slide.tiff"]),
    )


def run_demo(out: str | Path, *, regions: int = 9, size: int = 1024, slide_size: int = 3072,
             steps: int = DEMO_TRAIN_STEPS, seed: int = 0, quiet: bool = False, log: Log | None = None) -> dict:
    """Generate a BCSS-like dataset and a pyramidal slide, then run the whole pipeline on them."""
    from .synth import make_dataset, make_slide

    out = io.check_output_dir(out)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    log(f"[synth] {regions} regions of {size} px and a {slide_size} px slide in {out / 'data'}")
    make_dataset(out / "data", n=regions, size=size, seed=seed, quiet=quiet)
    slide = out / "data" / "slides" / "synth_slide.tiff"
    if not slide.exists():
        slide.parent.mkdir(parents=True, exist_ok=True)
        make_slide(slide, (slide_size, slide_size), seed=seed, mpp=0.25, quiet=quiet)
    cfg = demo_config(out, steps)
    io.write_text(out / "demo.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return run_pipeline(cfg, quiet=quiet, log=log)
