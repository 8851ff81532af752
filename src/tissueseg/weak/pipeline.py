"""The default weak method end to end: a label-grid manifest in, a DeepLabv3+ checkpoint out.

Input: a manifest tiled with ``size == stride == cell`` (e.g. ``tissueseg tile --size 32
--stride 32 --edge pad``): its ``label_<class>`` columns, the image labels of every small
patch, are the only supervision (the masks are never read). The patches of each region
form a label grid (:mod:`.labelgrid`); DeepLabv3+ is trained on crops of
``data.patch_size`` pixels aligned on that grid with :func:`.losses.labelset_loss` plus
``presence`` x :func:`.losses.presence_loss` (top-k fraction ``loss.k``). The checkpoint
is the ordinary format (:mod:`tissueseg.checkpoint`), so ``predict`` and ``evaluate`` use
it unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..checkpoint import save_checkpoint
from ..config import TrainConfig
from ..data import RegionCache
from ..manifest import load_manifest
from ..models import build_model, normalization
from ..splits import parse_bcss_name
from ..train import resolve_scheme
from . import labelgrid
from .fit import crops, fit
from .losses import labelset_loss, presence_loss

DEFAULT_MPP = 0.25
PRESENCE_WEIGHT = 0.5


@dataclass
class WeakResult:
    """What :func:`train_weak` produced."""

    checkpoint: Path
    steps: int
    cell: int
    patch_size: int
    final_loss: float
    seconds: float

    def to_dict(self) -> dict:
        return {"checkpoint": str(self.checkpoint), "steps": self.steps, "cell": self.cell,
                "patch_size": self.patch_size, "final_loss": self.final_loss, "seconds": self.seconds}


def grid_loss(cell: int, presence: float = PRESENCE_WEIGHT, k: float = 0.1):
    """``loss(model, x, bits)`` of the label-grid method."""

    def loss(model: torch.nn.Module, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        value = labelset_loss(logits, bits)
        if presence > 0:
            value = value + presence * presence_loss(logits, bits, cell, k)
        return value

    return loss


def train_weak(cfg: TrainConfig, *, overwrite: bool = False, quiet: bool = False) -> WeakResult:
    """Train the label-grid method of ``cfg`` (see the module docstring); ``run.out/best.pt``.

    Uses ``model`` (DeepLabv3+ expected), ``data.manifest``/``scheme``/``patch_size``/
    ``train_split``, ``optim.lr``/``weight_decay``, ``run.steps``/``batch_size``/``seed``/``out``
    and ``loss.k``/``loss.presence``. Raises ``FileExistsError`` when the checkpoint exists and not ``overwrite``.
    """
    if cfg.data.manifest is None:
        raise ValueError("data.manifest: the weak method needs a manifest tiled with size = stride")
    if cfg.run.steps is None:
        raise ValueError("run.steps: the weak method counts its budget in steps (run.epochs is not supported)")
    out = io.check_output_dir(cfg.run.out)
    ckpt = out / "best.pt"
    if ckpt.exists() and not overwrite:
        raise FileExistsError(f"{ckpt}: exists (use overwrite to replace it)")
    df, meta = load_manifest(cfg.data.manifest)
    scheme, params = resolve_scheme(cfg, meta), meta.get("params", meta)
    cell = int(df["size"].iloc[0])
    if int(params.get("stride", cell)) != cell:
        raise ValueError(f"{cfg.data.manifest}: tiled with stride {params.get('stride')} != size {cell}; "
                         "the label grid needs stride = size")
    size = cfg.data.patch_size or 4 * cell
    if size % cell:
        raise ValueError(f"data.patch_size {size} is not a multiple of the {cell}-pixel cell")
    train_df = df[df["split"] == cfg.data.train_split] if "split" in df.columns else df
    if train_df.empty:
        raise ValueError(f"{cfg.data.manifest}: no rows in split {cfg.data.train_split!r}")
    cache = RegionCache(cfg.data.cache_dir or Path(cfg.data.manifest).parent / "cache")
    grids = labelgrid.grids_from_manifest(train_df, scheme)
    regions = [(cache.image(path), labelgrid.encode(g)) for path, g in grids.items()]
    small = [p for (rgb, _), p in zip(regions, grids) if min(rgb.shape[:2]) < size]
    if small:
        raise ValueError(f"{small[0]}: region smaller than data.patch_size {size}")
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, scheme.num_classes)
    norm = normalization(cfg.model)
    start = time.perf_counter()
    history = fit(model, crops(regions, size, cfg.run.batch_size, cfg.run.seed, align=cell),
                  grid_loss(cell, cfg.loss.presence, cfg.loss.k), int(cfg.run.steps), norm, lr=cfg.optim.lr,
                  weight_decay=cfg.optim.weight_decay, quiet=quiet, desc="weak")
    mpp = float(params.get("mpp") or parse_bcss_name(str(train_df["image_id"].iloc[0]))["mpp"] or DEFAULT_MPP)
    config = cfg.to_dict() | {"weak": {"method": "label-grid", "cell": cell, "presence": cfg.loss.presence}}
    save_checkpoint(ckpt, model=model, config=config, scheme=scheme, mpp=mpp, patch_size=size)
    return WeakResult(ckpt, len(history), cell, size, float(np.mean(history[-10:])), time.perf_counter() - start)
