"""Training configuration: pydantic models loaded from YAML with dotted ``key=value`` overrides.

A config names its ``method`` (what supervises training, see :mod:`tissueseg.supervision`)
and has the sections ``model``, ``loss``, ``data``, ``optim``, ``run`` and one per method
with options (``cam``, ``label_grid``); every field has a default, so an empty file plus
``data.manifest=...`` is a valid config. See ``configs/full.yaml``, ``configs/weak.yaml``,
``configs/label-grid.yaml`` and ``configs/mil.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .models import ModelConfig, input_multiple

MIL_LOSSES = ("mil-max", "sigmoid-max", "lse", "topk")
Method = Literal["full", "cam", "label-grid", "mil"]
METHODS: dict[str, str] = {
    "full": "pixel masks (the manifest's mask_path), cross-entropy",
    "cam": "image labels of whole patches (a manifest tiled with size = stride, e.g. 256 px, or a published "
           "patch-label dataset): a patch classifier's class activation maps, restricted to each patch's labels, "
           "become pseudo-masks; DeepLabv3+ learns from them (the default weak method)",
    "label-grid": "image labels of small cells (a manifest tiled with size = stride, e.g. 32 px): pseudo-masks "
                  "interpolated from the cells' labels, cross-entropy",
    "mil": "image labels of whole patches: an FCN with a multiple-instance loss (loss.name: mil-max, "
           "sigmoid-max, lse or topk); the historic baseline",
}
"""Every training method and the labels it learns from."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossConfig(_Section):
    name: Literal["ce", "mil-max", "sigmoid-max", "lse", "topk"] = Field(
        "ce", description="ce for full and label-grid; a MIL loss for method mil")
    r: float = Field(5.0, gt=0, description="LSE sharpness")
    k: float = Field(0.1, gt=0, le=1, description="top-k fraction")
    class_weights: Literal["none", "inverse", "median"] = "none"
    background: str | None = Field(None, description="class name that every image holds (MIL)")


class LabelGridConfig(_Section):
    smooth: float = Field(0.25, ge=0, description="Gaussian sigma of the pseudo-masks' prior, in cells")


class CamConfig(_Section):
    """Method ``cam``: stage 1 (the patch classifier), the pseudo-masks, and what prediction adds."""

    classifier_steps: int = Field(150, gt=0, description="stage-1 optimiser steps (same batch size as run)")
    classifier_output_stride: Literal[8, 16, 32] = Field(16, description="stride of the classifier's deepest maps")
    balanced: bool = Field(True, description="stage 1 draws patches class-balanced by their labels")
    tta: Literal["none", "flip", "d4"] = Field("flip", description="test-time augmentation of the class maps")
    refine_radius: int = Field(0, ge=0, description="guided-filter radius in px at colour edges; 0 = none")
    context: int = Field(0, ge=0, description="px of the region around each patch the classifier sees")
    prototypes: int = Field(3, ge=0, description="iterations of image-specific prototypes redrawing the class maps "
                                                 "of mixed patches by their own features; 0 = none")
    presence_power: float = Field(0.0, ge=0, description="the class maps of a mixed patch are weighed, before the "
                                                         "prototypes, by the classifier's probability of each class "
                                                         "in the patch to this power; 0 = not weighed")
    local_presence_power: float = Field(0.0, ge=0, description="the pseudo-mask scores of a mixed patch are weighed, "
                                                               "after the prototypes, by the classifier's probability "
                                                               "of each class in the 64 px around each pixel to this "
                                                               "power; 0 = not weighed")
    init_encoder: bool = Field(False, description="stage 2's encoder starts from the stage-1 classifier's "
                                                  "(same encoder) instead of the model's weights")
    flip_tta: bool = Field(False, description="prediction averages the flips (stored in the checkpoint; 3x the "
                                              "cost for about +0.01 mIoU on the bench)")
    gate: float | None = Field(None, gt=0, lt=1, description="class gate at prediction: a class the classifier "
                                                             "gives less than this in a window is not predicted")
    mosaics: float = Field(0.0, ge=0, lt=1, description="share of every stage-2 batch made of mosaics of tiles of "
                                                        "single-label patches, masks exact (PistoSeg); 0 = none")
    mosaic_tile: int | None = Field(None, gt=0, description="px side of the mosaics' tiles; null = half the "
                                                            "training window")
    local_gate: int | None = Field(64, gt=0, description="prediction multiplies every class's probability by the "
                                                         "classifier's that the class is in the px square around "
                                                         "the pixel (one classifier pass per window); null = off")
    local_gate_power: float = Field(4.0, gt=0, description="the local gate's probabilities are raised to this "
                                                           "power (above 1: the classifier counts more)")

    @model_validator(mode="after")
    def _one_gate(self) -> CamConfig:
        if self.gate is not None and self.local_gate is not None:
            raise ValueError("cam.gate and cam.local_gate are two kinds of class gate: set one, the other null")
        return self


class DataConfig(_Section):
    manifest: Path | None = None
    scheme: str | None = Field(None, description="name or file; null = the manifest's scheme")
    patch_size: int | None = Field(None, gt=0, description="null = the manifest's patch size")
    train_split: str = "train"
    val_split: str = "val"
    stain_norm: Literal["none", "macenko", "reinhard"] = "none"
    stain_reference: Path | None = None
    flips: bool = True
    rot90: bool = True
    stain_jitter: float = Field(0.05, ge=0, description="sigma of the H&E OD jitter; 0 = off")
    color_jitter: float = Field(0.0, ge=0, description="brightness/contrast/saturation strength; 0 = off")
    balanced: bool = False
    workers: int = Field(0, ge=0)
    cache_dir: Path | None = Field(None, description="decoded-region cache; null = <manifest folder>/cache")

    @model_validator(mode="after")
    def _reference_needed(self) -> DataConfig:
        if self.stain_norm != "none" and self.stain_reference is None:
            raise ValueError(f"stain_norm {self.stain_norm} needs data.stain_reference (an image)")
        return self


class OptimConfig(_Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["poly", "constant"] = "poly"
    power: float = Field(0.9, gt=0)
    warmup_steps: int = Field(0, ge=0)


class RunConfig(_Section):
    steps: int | None = Field(None, gt=0, description="optimiser steps; or give epochs")
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(8, gt=0, description="global batch (all processes together)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16/fp16 autocast, CUDA only")
    channels_last: bool = True
    log_every: int = Field(10, gt=0)
    val_every: int = Field(200, gt=0)
    checkpoint_every: int = Field(100, gt=0)
    out: Path = Path("train-out")
    max_val_patches: int | None = Field(256, gt=0)

    @model_validator(mode="after")
    def _length(self) -> RunConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give run.steps or run.epochs, not both")
        if self.steps is None and self.epochs is None:
            self.steps = 1000
        return self


class TrainConfig(_Section):
    method: Method = Field("full", description="what supervises training: " + "; ".join(
        f"{k}: {v}" for k, v in METHODS.items()))
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    label_grid: LabelGridConfig = Field(default_factory=LabelGridConfig)
    cam: CamConfig = Field(default_factory=CamConfig)

    def check_input_size(self, size: int) -> None:
        """``ValueError`` unless the model takes windows of ``size`` px (its stride divides it)."""
        multiple = input_multiple(self.model)
        if size % multiple:
            raise ValueError(f"patch size {size} is not a multiple of {multiple}, which {self.model.arch} with "
                             f"output_stride {self.model.output_stride or 'default'} needs: set data.patch_size")

    @model_validator(mode="after")
    def _loss_fits_method(self) -> TrainConfig:
        if (self.method == "mil") != (self.loss.name in MIL_LOSSES):
            want = f"one of {', '.join(MIL_LOSSES)}" if self.method == "mil" else "ce"
            raise ValueError(f"method {self.method} trains with loss.name {want}, not {self.loss.name}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (paths as strings)."""
        return self.model_dump(mode="json")

    def dump(self) -> str:
        """The config as YAML (loads back with :func:`load_config`)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` overrides in nested ``data`` (values parsed as YAML scalars)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r}: expected key=value (e.g. run.steps=50)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"override {item!r}: value is not valid YAML") from None
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
            node = child
        node[leaf] = value
    return data


def read_yaml(path: Path | str, what: str = "a mapping of sections (model, loss, data, optim, run)") -> dict[str, Any]:
    """A YAML file's top-level mapping; one-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read config: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {what}")
    return data


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """``model.model_validate(data)`` with the first error as one line naming the source and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{loc}: " if loc else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise ValueError(f"{source}: {field}{msg}{more}") from None


def load_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (or start from defaults) and apply ``overrides``.

    Errors are one line naming the file and the field, e.g.
    ``configs/full.yaml: optim.lr: Input should be greater than 0``.
    """
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return validate(TrainConfig, data, str(path) if path is not None else "config")
