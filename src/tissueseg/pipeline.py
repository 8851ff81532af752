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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import io
from .config import RunConfig, TrainConfig
from .fingerprint import file_stamps as _fingerprint, key as _key
from .manifest import TileParams
from .schemes import DEFAULT_SCHEME, load_scheme

Log = Callable[[str], None]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    root: Path | None = Field(None, description="one BCSS-style folder: rgbs_colorNormalized/ (or images/) + "
                                                "masks/; or, with layout, a published patch-label dataset")
    images: Path | None = None
    masks: Path | None = None
    image_suffix: str = ""
    mask_suffix: str = ""
    mpp: float | None = Field(None, gt=0, description="µm/px of the regions (default: each image's name or metadata)")
    layout: Literal["bcss-wsss", "luad-histoseg"] | None = Field(
        None, description="root is a published patch-label dataset as downloaded (training/, val/, test/): its "
                          "patches are the tiles, its classes the scheme, only weak methods train on it")

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.root is None) == (self.images is None or self.masks is None):
            raise ValueError("give data.root, or data.images and data.masks")
        if self.layout is not None and self.root is None:
            raise ValueError(f"layout {self.layout} reads data.root")
        return self


class LabelledRegion(_Section):
    image: Path
    mask: Path = Field(description="its mask of codes (the pipeline's scheme)")


class PredictSection(_Section):
    split: str = Field("test", description="regions of this manifest split are predicted and evaluated")
    regions: list[LabelledRegion] = Field(
        default_factory=list, description="more regions with masks to predict and evaluate apart from the split "
                                          "(e.g. real tissue when the training data are generated)")
    regions_title: str = Field("Other labelled regions", description="their heading in the report")
    max_regions: int | None = Field(None, gt=0)
    slides: list[Path] = Field(default_factory=list, description="whole-slide images to predict")
    slide_mpp: float | None = Field(None, gt=0, description="µm/px of slides that carry none")
    window: int | None = Field(None, gt=0)
    overlap: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(8, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


DEFAULT_WEAK_METHOD = "cam"
"""What ``method: weak`` means in a pipeline config."""
LABEL_GRID_CELL = 32
"""Side in px of the cells whose image labels ``label-grid`` learns from in the pipeline."""


class ModelSpec(TrainConfig):
    """One model of a pipeline: a training config (``data.manifest`` and ``run.out`` are the
    pipeline's) and, for weak methods, the side of the patches whose image labels it learns from."""

    label_patch: int | None = Field(None, gt=0, description="side in px of the labelled patches (weak methods; "
                                                           f"default: label-grid {LABEL_GRID_CELL}, others the tile size)")

    @model_validator(mode="before")
    @classmethod
    def _weak_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("method") == "weak":
            data = {**data, "method": DEFAULT_WEAK_METHOD}
        return data

    def tiling(self, base: TileParams) -> TileParams:
        """How the pipeline tiles this model's training data: the pipeline's tiling for masks;
        non-overlapping patches (a grid of cells, edge pad) for labels."""
        if self.method == "full":
            return base
        side = self.label_patch or (LABEL_GRID_CELL if self.method == "label-grid" else base.size)
        return base.model_copy(update={"size": side, "stride": side, "edge": "pad"})


def _default_models() -> dict[str, ModelSpec]:
    return {"full": ModelSpec(), "weak": ModelSpec(method="weak")}


class PipelineConfig(_Section):
    out: Path
    data: DataSection
    scheme: str = DEFAULT_SCHEME
    workers: int = Field(1, ge=1)
    scheduler: str | None = None
    tile: TileParams = Field(default_factory=TileParams)
    train: dict[str, ModelSpec] = Field(
        default_factory=_default_models,
        description="models to train: name -> training config (method, model, loss, data, optim, run, ...); "
                    f"'method: weak' is the default weak method ({DEFAULT_WEAK_METHOD})")
    predict: PredictSection = Field(default_factory=PredictSection)
    samples: int = Field(6, ge=0, description="sample patches shown in the report")

    @model_validator(mode="after")
    def _models_fit(self) -> PipelineConfig:
        """Every model can train on the tiles it will get (checked before any stage runs)."""
        from .supervision import METHODS

        if self.data.layout is not None:
            from .weaklabels import WEAK_SCHEMES

            layout_scheme = WEAK_SCHEMES[self.data.layout].name
            if "scheme" in self.model_fields_set and self.scheme != layout_scheme:
                raise ValueError(f"data.layout {self.data.layout} has its own classes (scheme {layout_scheme}): "
                                 "leave scheme out")
            self.scheme = layout_scheme
        for name, spec in self.train.items():
            if self.data.layout is not None and spec.method in ("full", "label-grid"):
                raise ValueError(f"train.{name}: a {self.data.layout} dataset has image labels of whole patches "
                                 f"only; method {spec.method} cannot train on it")
            if spec.data.manifest is not None or spec.run.out != RunConfig().out:
                raise ValueError(f"train.{name}: data.manifest and run.out are set by the pipeline")
            size = spec.data.patch_size or METHODS[spec.method].default_patch_size(spec.tiling(self.tile).size)
            try:
                spec.check_input_size(size)
            except ValueError as exc:
                raise ValueError(f"train.{name}: {exc}") from None
        return self


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
    for r in cfg.predict.regions:
        r.image, r.mask = fix(r.image), fix(r.mask)
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


class _Stages:
    """Runs the stages: skips those up to date (``pipeline.json``), logs, times, summarises."""

    def __init__(self, out: Path, log: Log):
        self.ledger, self.log = _Ledger(out / "pipeline.json"), log
        self.summary: dict[str, str] = {}

    def __call__(self, name: str, key: str, outputs: Sequence[Path], fn: Callable[[bool], Any]) -> bool:
        """Run ``fn(restart)`` unless up to date; ``restart`` is False when resuming the same stage."""
        if self.ledger.fresh(name, key, outputs):
            self.log(f"[{name}] up to date")
            self.summary[name] = "up to date"
            return False
        restart = self.ledger.start(name, key)
        self.log(f"[{name}] {'running' if restart else 'resuming'}")
        t0 = time.time()
        fn(restart)
        self.ledger.done(name, key)
        self.summary[name] = f"done in {time.time() - t0:.0f} s"
        return True


@dataclass
class _Source:
    """What the pipeline reads: image/mask pairs (stats, colorize) and how to make the manifest."""

    pairs: list[tuple[Path, Path]]
    images_dir: Path
    key: str
    """Fingerprint of every input file (and the µm/px given)."""
    layout: str | None = None


def _source(cfg: PipelineConfig, log: Log) -> _Source:
    from .manifest import find_dataset, pair_files

    if cfg.data.layout is not None:
        from .weaklabels import read_weak_dataset

        table = read_weak_dataset(cfg.data.root, cfg.data.layout, cfg.data.mpp)
        pairs = [(Path(i), Path(m)) for i, m in zip(table["image_path"], table["mask_path"]) if isinstance(m, str)]
        if not pairs:
            raise ValueError(f"{cfg.data.root}: no val/ or test/ patches with masks to evaluate on")
        files = [Path(f) for f in table["image_path"]] + [m for _, m in pairs]
        return _Source(pairs, pairs[0][0].parent, _key(_fingerprint(files), cfg.data.mpp), cfg.data.layout)
    if cfg.data.root is not None:
        images_dir, masks_dir = find_dataset(cfg.data.root)
    else:
        images_dir, masks_dir = cfg.data.images, cfg.data.masks
    pairs, lone_images, lone_masks = pair_files(images_dir, masks_dir, cfg.data.image_suffix, cfg.data.mask_suffix)
    if not pairs:
        raise ValueError(f"{images_dir}: no image/mask pairs (matched by file stem) with {masks_dir}")
    for p in [*lone_images, *lone_masks]:
        log(f"unmatched (no partner with the same stem): {p}")
    return _Source(pairs, images_dir, _key(_fingerprint([p for pair in pairs for p in pair]), cfg.data.mpp))


def run_pipeline(cfg: PipelineConfig, *, quiet: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Run every stage of ``cfg`` (skipping those that are up to date); return a summary dict."""
    from .colorize import colorize_files
    from .manifest import load_manifest
    from .stats import dataset_stats

    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = io.check_output_dir(cfg.out)
    scheme = load_scheme(cfg.scheme)
    stage = _Stages(out, log)
    t_start = time.time()
    source = _source(cfg, log)
    masks = [m for _, m in source.pairs]

    stats_dir = out / "stats"
    stats_key = _key(source.key, scheme.to_dict())
    stage("stats", stats_key, [stats_dir / "stats.json"],
          lambda _: dataset_stats(masks, scheme, workers=cfg.workers, scheduler=cfg.scheduler, quiet=quiet)
          .write(stats_dir, overwrite=True))

    color_dir = out / "colorize"  # a few regions with their masks, for the report
    shown = source.pairs[: max(cfg.samples, 1)]

    def _colorize(_: bool) -> None:
        shutil.rmtree(color_dir, ignore_errors=True)
        colorize_files([m for _, m in shown], color_dir, scheme, images=source.images_dir, workers=cfg.workers,
                       quiet=quiet, overwrite=True)

    stage("colorize", _key(stats_key, [str(m) for _, m in shown]), [color_dir / "legend.png"], _colorize)

    tiles_dir = out / "tiles"
    tile_key = _key(source.key, scheme.to_dict(), source.layout or cfg.tile.model_dump())
    stage("tile", tile_key, [tiles_dir / "manifest.parquet"],
          lambda restart: _tile(cfg, tiles_dir, scheme, cfg.tile, pairs=source.pairs, overwrite=restart, quiet=quiet))
    manifest, _ = load_manifest(tiles_dir)
    held_images, held_masks = _held_out(cfg, manifest, log)
    models = {name: _model_stages(name, spec, cfg, out, scheme, source.pairs, tile_key, tiles_dir, held_images,
                                  held_masks, stage, quiet)
              for name, spec in cfg.train.items()}

    from .pipeline_report import build_report

    report = build_report(cfg, out, scheme, shown, color_dir, stats_dir, tiles_dir, models)
    summary = {"out": str(out), "stages": stage.summary,
               "patches": {str(k): int(v) for k, v in manifest["split"].value_counts().items()},
               "models": {n: m["summary"] for n, m in models.items()}, "report": str(report),
               "seconds": round(time.time() - t_start, 1)}
    io.write_json(out / "summary.json", summary)
    return summary


def _held_out(cfg: PipelineConfig, manifest: Any, log: Log) -> tuple[list[Path], dict[str, Path]]:
    """The regions (with masks) of the predict split: ``(images, {stem: mask})``."""
    held = manifest.loc[manifest["split"] == cfg.predict.split, ["image_path", "mask_path"]].drop_duplicates()
    held = held[held["mask_path"].notna()].sort_values("image_path")
    if cfg.predict.max_regions:
        held = held.head(cfg.predict.max_regions)
    if held.empty:
        log(f"no regions with masks in split {cfg.predict.split!r}: nothing to predict and evaluate")
    return [Path(p) for p in held["image_path"]], {Path(i).stem: Path(m) for i, m in zip(held["image_path"],
                                                                                           held["mask_path"])}


def _model_stages(name: str, spec: ModelSpec, cfg: PipelineConfig, out: Path, scheme: Any, pairs: list,
                  tile_key: str, tiles_dir: Path, held_images: list[Path], held_masks: dict[str, Path],
                  stage: Callable[..., bool], quiet: bool) -> dict[str, Any]:
    """Train one model, predict the held-out regions (and ``predict.regions``) and slides with it, evaluate it."""
    from .checkpoint import load_predictor
    from .infer import predict_files

    method = spec.method
    manifest = tiles_dir / "manifest.parquet"
    tiling = spec.tiling(cfg.tile) if cfg.data.layout is None else cfg.tile  # a published dataset: its patches
    if tiling != cfg.tile:  # weak methods learn from the labels of non-overlapping patches
        labelled_dir = out / f"tiles-{tiling.size}"
        tile_key = _key(tile_key, tiling.model_dump())
        stage(f"tile:{name}", tile_key, [labelled_dir / "manifest.parquet"],
              lambda restart: _tile(cfg, labelled_dir, scheme, tiling, pairs=pairs, overwrite=restart, quiet=quiet))
        manifest = labelled_dir / "manifest.parquet"
    train_dir = out / "train" / name
    train_cfg = spec.model_copy(update={
        "data": spec.data.model_copy(update={"manifest": manifest}),
        "run": spec.run.model_copy(update={"out": train_dir})})
    train_key = _key(tile_key, spec.model_dump(mode="json", exclude={"label_patch": True}))
    stage(f"train:{name}", train_key, [train_dir / "best.pt"],
          lambda restart: _train(train_cfg, restart, quiet))
    result: dict[str, Any] = {"method": method, "train_dir": train_dir, "summary": {"method": method}}
    predictor = None

    def _predictor():
        nonlocal predictor
        if predictor is None:
            predictor = load_predictor(train_dir / "best.pt")
        return predictor

    pred_kw = dict(window=cfg.predict.window, overlap=cfg.predict.overlap, batch_size=cfg.predict.batch_size,
                   device=cfg.predict.device)
    held = _Scored(name, "", held_images, held_masks)
    extra = _Scored(name, "regions", [r.image for r in cfg.predict.regions],
                    {r.image.stem: r.mask for r in cfg.predict.regions})
    for scored in (held, extra):
        if scored.images:
            scored.run(stage, train_key, _predictor, scheme, cfg, out, pred_kw, quiet)
    if held.metrics is not None:
        result.update(eval_dir=held.eval_dir, metrics=held.metrics, pred_dir=held.pred_dir)
        result["summary"].update(miou=held.metrics.get("miou"), pixel_accuracy=held.metrics.get("pixel_accuracy"))
    if extra.metrics is not None:
        result.update(regions_eval_dir=extra.eval_dir, regions_metrics=extra.metrics, regions_pred_dir=extra.pred_dir)
        result["summary"]["regions_miou"] = extra.metrics.get("miou")
    if cfg.predict.slides:
        slide_dir = out / "slides" / name
        slide_key = _key(train_key, _fingerprint(cfg.predict.slides), cfg.predict.model_dump(exclude={"regions"}))

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


@dataclass
class _Scored:
    """A set of regions with masks that a model predicts and is evaluated on (stages
    ``predict:<model>`` and ``evaluate:<model>``, with a ``-<what>`` suffix for other sets)."""

    model: str
    what: str
    images: list[Path]
    masks: dict[str, Path]
    metrics: dict | None = None

    @property
    def _suffix(self) -> str:
        return f"-{self.what}" if self.what else ""

    def run(self, stage: Callable[..., bool], train_key: str, predictor: Callable[[], Any], scheme: Any,
            cfg: PipelineConfig, out: Path, pred_kw: dict, quiet: bool) -> None:
        from .infer import predict_files
        from .metrics import evaluate_folders, write_evaluation

        self.pred_dir = out / f"predict{self._suffix}" / self.model
        self.eval_dir = out / f"eval{self._suffix}" / self.model
        pred_key = _key(train_key, _fingerprint(self.images), cfg.data.mpp,
                        cfg.predict.model_dump(mode="json", exclude={"slides", "slide_mpp", "regions"}))

        def _predict(restart: bool) -> None:
            if restart:
                shutil.rmtree(self.pred_dir, ignore_errors=True)
            res = predict_files(predictor(), self.images, self.pred_dir, workers=1, quiet=quiet, tissue=False,
                                mpp=cfg.data.mpp, **pred_kw)
            if res.skipped:
                raise ValueError("; ".join(r for _, r in res.skipped))

        def _evaluate(_: bool) -> None:
            truth = self.eval_dir / "truth"  # the masks under their image's stem (masks may carry a suffix)
            shutil.rmtree(truth, ignore_errors=True)
            truth.mkdir(parents=True)
            for stem, mask in self.masks.items():
                (truth / f"{stem}.png").symlink_to(Path(mask).resolve())
            write_evaluation(evaluate_folders(self.pred_dir, truth, scheme, truth_format="codes", quiet=True),
                             self.eval_dir)

        stage(f"predict{self._suffix}:{self.model}", pred_key,
              [self.pred_dir / p.stem / "summary.json" for p in self.images], _predict)
        stage(f"evaluate{self._suffix}:{self.model}", _key(pred_key, _fingerprint(self.masks.values())),
              [self.eval_dir / "metrics.json"], _evaluate)
        self.metrics = json.loads((self.eval_dir / "metrics.json").read_text())


def _tile(cfg: PipelineConfig, out: Path, scheme: Any, params: TileParams, *, pairs: list, overwrite: bool,
          quiet: bool) -> None:
    """The manifest: the regions tiled with ``params``, or a published dataset's patches as they are."""
    if cfg.data.layout is not None:
        from .weaklabels import write_weak_manifest

        write_weak_manifest(cfg.data.root, cfg.data.layout, out, mpp=cfg.data.mpp, overwrite=True)
        return
    from .manifest import tile_dataset

    tile_dataset(pairs, out, scheme, params.model_copy(update={"mpp": params.mpp or cfg.data.mpp}),
                 workers=cfg.workers, scheduler=cfg.scheduler, overwrite=overwrite, quiet=quiet)


def _train(cfg: ModelSpec, restart: bool, quiet: bool) -> None:
    """Train one model; an interrupted run of the same stage resumes from its last checkpoint."""
    from .train import train

    train(TrainConfig.model_validate(cfg.model_dump(exclude={"label_patch"})), quiet=quiet, overwrite=restart)


# ----------------------------------------------------------------------------- demo


DEMO_TRAIN_STEPS = 200


def demo_config(out: Path, steps: int = DEMO_TRAIN_STEPS) -> PipelineConfig:
    """The pipeline the demo runs on its generated data: 128 px patches so it fits a few CPU minutes.

    The weak model learns from the image labels of the non-overlapping 128 px patches (method
    ``cam``: a classifier for half the steps, then the segmenter); both models also predict
    the packaged real BCSS crop (:func:`tissueseg.assets.real_region`), scored apart.
    """
    from .assets import real_region

    run = {"steps": steps, "batch_size": 8, "val_every": max(steps // 4, 10), "checkpoint_every": max(steps // 4, 1),
           "seed": 0}
    real = real_region()
    return PipelineConfig(
        out=out,
        data=DataSection(root=out / "data"),
        scheme="bcss5",
        tile=TileParams(size=128, stride=64, split="bcss-sites", val_fraction=0.25),
        train={"full": ModelSpec(run=run, data={"workers": 0}),
               "weak": ModelSpec(method="weak", run=run, cam={"classifier_steps": max(steps // 2, 1)})},
        predict=PredictSection(split="test", max_regions=2, window=256,
                               regions=[LabelledRegion(image=real.image, mask=real.mask)],
                               regions_title=f"Real H&E: a BCSS crop of {real.slide} ({real.licence}), never trained on",
                               slides=[out / "data" / "slides" / "synth_slide.tiff"]),
    )


def run_demo(out: str | Path, *, regions: int = 9, size: int = 1024, slide_size: int = 3072,
             steps: int = DEMO_TRAIN_STEPS, seed: int = 0, quiet: bool = False, log: Log | None = None) -> dict:
    """Generate a BCSS-like dataset and a pyramidal slide, then run the whole pipeline on them.

    The generated data are kept on a rerun with the same ``regions``, ``size``, ``slide_size``
    and ``seed`` and made again otherwise; the pipeline then redoes what depends on what changed.
    """
    from .synth import make_dataset, make_slide

    out = io.check_output_dir(out)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    data, settings = out / "data", {"regions": regions, "size": size, "slide_size": slide_size, "seed": seed}
    record = data / "demo-data.json"
    if data.exists() and (not record.is_file() or json.loads(record.read_text()) != settings):
        log("[synth] other settings than the data in place: generating them again")
        shutil.rmtree(data)
    log(f"[synth] {regions} regions of {size} px and a {slide_size} px slide in {data}")
    make_dataset(data, n=regions, size=size, seed=seed, quiet=quiet)
    slide = data / "slides" / "synth_slide.tiff"
    if not slide.exists():
        slide.parent.mkdir(parents=True, exist_ok=True)
        make_slide(slide, (slide_size, slide_size), seed=seed, mpp=0.25, quiet=quiet)
    io.write_json(record, settings)
    cfg = demo_config(out, steps)
    io.write_text(out / "demo.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return run_pipeline(cfg, quiet=quiet, log=log)
