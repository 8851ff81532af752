"""The training loop: step-based, resumable, deterministic with the seed, DDP-ready.

:func:`train` reads the manifest, builds the model (DeepLabv3+ or FCN), the loss (CE from
masks; CE from pseudo-masks made from the labels of small patches, ``label-grid``; or a
MIL loss from image labels) and a poly-LR optimiser, and trains for ``run.steps`` steps.
Every ``val_every`` steps it scores the val split's pixel masks (for weak models too:
masks are read for evaluation only), logs ``metrics.csv`` and ``curves.png`` and keeps
``best.pt`` (by val mIoU; the latest model when there is no val split) and ``last.pt``.
``last.pt`` is also written every ``checkpoint_every`` steps and on Ctrl-C / SIGTERM; a
rerun resumes from it and reaches the same weights as an uninterrupted run (data order
and augmentation are functions of ``(seed, step)``; RNG states are saved).

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) it runs DistributedDataParallel: each process
takes its share of every global batch (``run.batch_size``), the loss is normalised by the
whole global batch (the same mean as one process), every process scores its share of the
val split and the confusion matrices are summed, BatchNorm is synchronised on CUDA, and
rank 0 writes the files (see ``docs/distributed.md``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import io
from .augment import Augment
from .checkpoint import model_args, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import PatchDataset, RegionCache, StepSampler, balanced_weights, class_pixel_counts
from .losses import LossSum
from .manifest import load_manifest
from .metrics import ConfusionAccumulator, scores
from .models import build_model, normalization
from .schemes import IGNORE, ClassScheme, load_scheme, scheme_from_dict
from .splits import parse_bcss_name

LossFn = Callable[[torch.Tensor, torch.Tensor], LossSum]
DEFAULT_MPP = 0.25
RESUME_FREE = ("run.out", "run.device", "data.workers", "data.cache_dir")
"""Config fields that may change between a run and its resumption (they do not change results)."""


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    out: Path
    best: Path | None
    last: Path
    history: pd.DataFrame
    best_miou: float
    best_step: int
    steps: int
    resumed_from: int
    class_names: list[str]

    def per_class_iou(self) -> dict[str, float]:
        """Val IoU per class at the best step."""
        if self.best is None or self.history.empty:
            return {}
        row = self.history.loc[self.history["step"] == self.best_step].iloc[-1]
        return {n: float(row[f"iou_{n}"]) for n in self.class_names}

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "best": str(self.best) if self.best else None, "last": str(self.last),
            "metrics": str(self.out / "metrics.csv"), "curves": str(self.out / "curves.png"),
            "best_val_miou": self.best_miou, "best_step": self.best_step, "steps": self.steps,
            "resumed_from": self.resumed_from, "per_class_iou": self.per_class_iou(),
        }


def resolve_scheme(cfg: TrainConfig, meta: dict) -> ClassScheme:
    """The config's scheme, else the manifest's."""
    if cfg.data.scheme is not None:
        return load_scheme(cfg.data.scheme)
    params = meta.get("params", meta)
    if "scheme" not in params:
        raise ValueError("the manifest records no scheme: set data.scheme")
    return scheme_from_dict(params["scheme"], source="manifest.json")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (ignoring :data:`RESUME_FREE`)."""
    keys = []
    for k in sorted(old.keys() | new.keys()):
        name = f"{prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{name}.")
        elif a != b and name not in RESUME_FREE:
            keys.append(name)
    return keys


def poly_lambda(total: int, power: float, warmup: int, schedule: str):
    """LR factor per step: linear warm-up, then ``(1 - t)^power`` (or constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(1.0 - (step - warmup) / max(total - warmup, 1), 0.0) ** power

    return factor


def _device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("run.device is cuda but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """``(rank, world size, whether this call started the process group)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), started
    return 0, 1, started


def _same_on_all_ranks(value: object, what: str) -> None:
    values: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise ValueError(f"the processes disagree on {what} ({values}): run.out and the manifest must be the "
                         "same files for every process (a shared filesystem across nodes)")


def train_mode(module: nn.Module, freeze_bn: bool) -> None:
    """``module.train()``; with ``freeze_bn`` its BatchNorm layers stay in eval mode (running statistics)."""
    module.train()
    if freeze_bn:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": [torch.from_numpy(np.random.get_state()[1].astype(np.int64))] + list(np.random.get_state()[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    keys, rest = state["numpy"][0], state["numpy"][1:]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Net(nn.Module):
    """What DDP wraps: the forward pass the loss needs (coarse maps for MIL losses)."""

    def __init__(self, model: nn.Module, maps: bool):
        super().__init__()
        self.model, self.maps = model, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, "forward_maps", self.model)(x) if self.maps else self.model(x)


@contextlib.contextmanager
def _deferred_interrupts() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps (a second Ctrl-C stops at once)."""
    caught: list[int] = []
    if not _main_thread():
        yield caught
        return

    def handler(signum: int, frame: object) -> None:
        caught.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops between steps."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _batch(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, dict]:
    x = batch["image"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in ("mask", "labels")}


def _loss_parts(loss_fn: LossFn, out: torch.Tensor, targets: dict, weak: bool) -> LossSum:
    return loss_fn(out.float(), targets["labels"] if weak else targets["mask"])


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, *, loss_fn: LossFn | None = None,
    weak: bool = False, channels_last: bool = True, autocast: contextlib.AbstractContextManager | None = None,
    reduce: bool = False,
) -> tuple[np.ndarray, float]:
    """``(confusion matrix, mean loss)`` of ``model`` over a loader of full-mode samples.

    ``loss_fn`` gives :class:`~tissueseg.losses.LossSum` parts (``build_loss(..., parts=True)``);
    the loss is their total over the loader divided by their count. ``reduce``: sum the
    matrix and the loss parts over the DDP processes (each scored its share of the samples).
    """
    model.eval()
    acc = ConfusionAccumulator(num_classes, ignore_index=IGNORE)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in loader:
        x, targets = _batch(batch, device, channels_last)
        with autocast or contextlib.nullcontext():
            logits = model(x)
            if loss_fn is not None:
                out = getattr(model, "forward_maps", model)(x) if weak else logits
                parts = _loss_parts(loss_fn, out, targets, weak)
                sums += torch.stack([parts.total.double(), parts.count.double()])
        acc.add(logits.argmax(1), targets["mask"])
    cm = acc.cm
    if reduce:
        cm_t = torch.from_numpy(cm).to(device)
        dist.all_reduce(cm_t)
        dist.all_reduce(sums)
        cm = cm_t.cpu().numpy()
    total, count = sums.tolist()
    return cm, (total / count if loss_fn is not None and count > 0 else float("nan"))


def plot_curves(history: pd.DataFrame, path: Path) -> Path:
    """Training loss and val mIoU against the step, written atomically as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2, sharex=True)
    ax1.plot(history["step"], history["train_loss"], label="train")
    val = history.dropna(subset=["val_miou"])
    if val["val_loss"].notna().any():
        ax1.plot(val["step"], val["val_loss"], "o-", label="val")
    ax1.set(xlabel="step", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(val["step"], val["val_miou"], "o-", color="tab:green")
    ax2.set(xlabel="step", ylabel="mIoU", title="val mIoU", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _val_subset(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    if limit is None or len(df) <= limit:
        return df
    return df.iloc[np.unique(np.linspace(0, len(df) - 1, limit).round().astype(int))]


def make_loss(cfg: TrainConfig, scheme: ClassScheme, train_df: pd.DataFrame, device: torch.device,
              counts: np.ndarray | None = None) -> LossFn:
    """The configured loss as :class:`~tissueseg.losses.LossSum` parts, with class weights from
    pixel ``counts`` (default: the train patches') when asked."""
    from .losses import build_loss

    weights = None
    if cfg.loss.class_weights != "none":
        from .stats import class_weights

        counts = class_pixel_counts(train_df, scheme) if counts is None else counts
        weights = torch.tensor(class_weights(counts, cfg.loss.class_weights), dtype=torch.float32).to(device)
    background = scheme.names.index(cfg.loss.background) if cfg.loss.background is not None else None
    name = "ce" if cfg.loss.name == "label-grid" else cfg.loss.name  # label grids train on pseudo-masks
    return build_loss(name, ignore_index=IGNORE, class_weights=weights, r=cfg.loss.r, k=cfg.loss.k,
                      background_index=background, parts=True)


def make_optimizer(
    cfg: TrainConfig, model: nn.Module, total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW or SGD with the poly (or constant) schedule over ``total`` steps."""
    o = cfg.optim
    if o.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    schedule = poly_lambda(total, o.power, o.warmup_steps, o.schedule)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train(cfg: TrainConfig, quiet: bool = False, overwrite: bool = False) -> TrainResult:
    """Train as ``cfg`` says; resume from ``run.out/last.pt`` when it exists (unless ``overwrite``).

    Raises ``ValueError`` when ``run.out`` holds a run with another config.
    """
    if cfg.data.manifest is None:
        raise ValueError("no manifest: set data.manifest (a `tissueseg tile` output)")
    device = _device(cfg.run.device)
    rank, world, started = _init_distributed(device)
    try:
        return _train(cfg, quiet, overwrite, device, rank, world)
    finally:
        if started:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, quiet: bool, overwrite: bool, device: torch.device, rank: int, world: int) -> TrainResult:
    out = Path(cfg.run.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    config = cfg.to_dict()

    checkpoint = None
    if last_path.is_file() and not overwrite:
        checkpoint = read_checkpoint(last_path)
        changed = config_differences(checkpoint["config"], config)
        if changed:
            raise ValueError(f"{last_path}: a run with another config ({', '.join(changed)} differ); "
                             "use --overwrite or another --out")
    if rank == 0:
        io.check_output_dir(out)
        if overwrite:
            for name in ("last.pt", "best.pt", "metrics.csv", "curves.png", "config.yaml"):
                (out / name).unlink(missing_ok=True)
        io.write_text(out / "config.yaml", cfg.dump())

    df, meta = load_manifest(cfg.data.manifest)
    scheme = resolve_scheme(cfg, meta)
    weak = cfg.loss.weak
    mode = "weak" if weak else "full"
    train_df = df[df["split"] == cfg.data.train_split].reset_index(drop=True)
    val_df = _val_subset(df[df["split"] == cfg.data.val_split].reset_index(drop=True), cfg.run.max_val_patches)
    if train_df.empty:
        raise ValueError(f"{cfg.data.manifest}: no patches in split {cfg.data.train_split!r}")
    params = meta.get("params", meta)
    grid = cfg.loss.name == "label-grid"
    if grid:
        cell = int(train_df["size"].iloc[0])
        if int(params.get("stride", cell)) != cell:
            raise ValueError(f"{cfg.data.manifest}: tiled with stride {params.get('stride')} != size {cell}; "
                             "loss label-grid needs the cells of a grid (stride = size, edge pad)")
    patch_size = cfg.data.patch_size or (4 * cell if grid else int(params.get("size", train_df["size"].iloc[0])))
    mpp = float(params.get("mpp") or parse_bcss_name(str(train_df["image_id"].iloc[0]))["mpp"] or DEFAULT_MPP)
    B = cfg.run.batch_size
    total = cfg.run.steps or math.ceil(cfg.run.epochs * len(train_df) / B)

    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed % 2**32)
    model_cfg, num_classes, bg = model_args(config, scheme)
    model = build_model(model_cfg, num_classes, background_index=bg)
    mean, std = normalization(model_cfg)
    if world > 1 and device.type == "cuda":
        from timm.layers import convert_sync_batchnorm  # also converts timm's BatchNormAct2d

        model = convert_sync_batchnorm(model)
    model = model.to(device)
    if rank:  # dropout draws other masks in every process
        torch.manual_seed(cfg.run.seed + 1_000_003 * rank)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)

    cache = RegionCache(cfg.data.cache_dir or Path(cfg.data.manifest).resolve().parent / "cache")
    pseudo = None
    if grid:  # the default weak method: pseudo-masks from the labels of the cells
        from .weak.pseudomask import PseudoMasks

        pseudo = PseudoMasks(train_df, scheme, cache, cfg.loss.smooth, quiet=quiet or rank > 0)
        if rank == 0:
            pseudo.write_previews(out / "pseudo-masks", scheme)
        if "mask_path" not in val_df.columns:  # labels without masks: nothing to validate on
            val_df = val_df.iloc[:0]
    loss_fn = make_loss(cfg, scheme, train_df, device,
                        counts=pseudo.pixel_counts(scheme.num_classes) if pseudo is not None else None)
    optimizer, scheduler = make_optimizer(cfg, model, total)
    amp_dtype = None
    if cfg.run.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    start, history, best_miou, best_step, running = 0, [], -1.0, -1, [0.0, 0]
    if checkpoint is not None:
        st = checkpoint["state"]
        getattr(model, "module", model).load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        ranks = st.get("rng_ranks") or [st["rng"]]
        _set_rng_state(ranks[rank] if len(ranks) == world else ranks[0])
        if len(ranks) != world and rank:
            torch.manual_seed(cfg.run.seed + 1_000_003 * rank + st["step"])
        start, history, running = st["step"], list(st["history"]), list(st["running"])
        best_miou, best_step = st["best_miou"], st["best_step"]

    if world > 1:
        _same_on_all_ranks(start, "the step to resume from")
    stain_normalizer = None
    if cfg.data.stain_norm != "none":
        from .stain import fit_normalizer

        stain_normalizer = fit_normalizer(cfg.data.stain_norm, io.read_image(cfg.data.stain_reference)).transform
    augment = Augment(cfg.data.flips, cfg.data.rot90, cfg.data.stain_jitter, cfg.data.color_jitter, cfg.run.seed)
    common = dict(scheme=scheme, cache=cache, patch_size=patch_size, normalize=(mean, std),
                  stain_normalizer=stain_normalizer)
    train_ds = PatchDataset(train_df, mode=mode, augment=augment, label_source=pseudo, **common)
    sampler = StepSampler(
        len(train_ds), B, cfg.run.seed, start, total, rank=rank, world=world,
        weights=balanced_weights(train_df, scheme, "weak" if grid else mode) if cfg.data.balanced else None,
    )
    loader_kw = dict(num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
                     generator=torch.Generator().manual_seed(cfg.run.seed),
                     worker_init_fn=_ignore_interrupts if cfg.data.workers else None)
    loader = DataLoader(train_ds, batch_sampler=sampler, **loader_kw)
    val_loader = None
    if not val_df.empty:  # every process scores every world-th val patch
        val_ds = PatchDataset(val_df.iloc[rank::world], mode="full", **common)
        val_loader = DataLoader(val_ds, batch_size=max(B // world, 1), shuffle=False, **loader_kw)

    net: nn.Module = _Net(model, maps=weak)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def state_dict(step: int) -> dict:
        return {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": _rng_state(), "step": step, "history": history, "running": running,
            "best_miou": best_miou, "best_step": best_step,
        }

    def save_last(step: int) -> None:  # called by every process at the same steps
        state = state_dict(step)
        if world > 1:
            state["rng_ranks"] = [None] * world
            dist.all_gather_object(state["rng_ranks"], state["rng"])
        if rank == 0:
            save_checkpoint(last_path, model=model, config=config, scheme=scheme, mpp=mpp, patch_size=patch_size,
                            state=state)

    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=quiet or rank != 0 or None,
               file=sys.stderr, dynamic_ncols=True)
    step, t_log, seen = start, time.perf_counter(), 0
    interrupted = False
    with _deferred_interrupts() as caught, _deterministic(device.type == "cpu"):
        try:
            for batch in loader:
                train_mode(net, cfg.model.freeze_bn)
                x, targets = _batch(batch, device, cfg.run.channels_last)
                with autocast:
                    out_ = net(x)
                parts = _loss_parts(loss_fn, out_, targets, weak)
                # one all-reduce: the global batch's loss sum and count, and whether any process was stopped
                sums = torch.stack([parts.total.detach().double(), parts.count.detach().double(),
                                    torch.tensor(float(bool(caught)), dtype=torch.float64, device=device)])
                if world > 1:
                    dist.all_reduce(sums)
                count = torch.where(sums[1] > 0, sums[1], 1.0)
                # DDP averages the gradients over the processes: scaling by world gives the global mean's
                loss = parts.total / count.to(parts.total) * world if world > 1 else parts.mean
                stop = bool(sums[2] > 0)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                step += 1
                running[0] += float(sums[0] / count) if world > 1 else float(parts.mean.detach())
                running[1] += 1
                seen += B
                bar.update()
                validate = step % cfg.run.val_every == 0 or step == total
                if step % cfg.run.log_every == 0 or validate:
                    elapsed = time.perf_counter() - t_log
                    row = {"step": step, "epoch": step * B / len(train_ds), "train_loss": running[0] / running[1],
                           "lr": lr, "val_miou": np.nan, "val_loss": np.nan,
                           **{f"iou_{n}": np.nan for n in scheme.names}, "patches_per_s": seen / elapsed}
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{lr:.2e}", pps=f"{row['patches_per_s']:.1f}")
                    running, seen = [0.0, 0], 0
                    if validate and val_loader is not None:
                        cm, val_loss = evaluate(model, val_loader, num_classes, device, loss_fn=loss_fn, weak=weak,
                                                channels_last=cfg.run.channels_last, autocast=autocast,
                                                reduce=world > 1)
                        sc = scores(cm, scheme.names)
                        row.update(val_miou=sc["miou"], val_loss=val_loss,
                                   **{f"iou_{n}": sc["per_class"][n]["iou"] for n in scheme.names})
                        if sc["miou"] > best_miou:
                            best_miou, best_step = float(sc["miou"]), step
                            if rank == 0:
                                save_checkpoint(best_path, model=model, config=config, scheme=scheme, mpp=mpp,
                                                patch_size=patch_size)
                    elif validate:  # nothing to validate on: best.pt is the latest model
                        best_step = step
                        if rank == 0:
                            save_checkpoint(best_path, model=model, config=config, scheme=scheme, mpp=mpp,
                                            patch_size=patch_size)
                    history.append(row)
                    if rank == 0:
                        frame = pd.DataFrame(history)
                        with io.atomic_path(out / "metrics.csv") as tmp:
                            frame.to_csv(tmp, index=False)
                        if validate:
                            plot_curves(frame, out / "curves.png")
                    t_log = time.perf_counter()
                if step % cfg.run.checkpoint_every == 0 or step == total:
                    save_last(step)
                if stop:
                    save_last(step)
                    interrupted = True
                    break
        finally:
            bar.close()
    if interrupted:
        raise KeyboardInterrupt(f"stopped at step {step}; rerun to resume from {last_path}")
    if world > 1:
        dist.barrier()
    return TrainResult(out, best_path if best_path.is_file() else None, last_path, pd.DataFrame(history),
                       best_miou, best_step, step, start, scheme.names)
