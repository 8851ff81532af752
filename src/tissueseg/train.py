"""The training loop: step-based, resumable, deterministic with the seed, DDP-ready.

:func:`train` reads the manifest, sets up the config's ``method`` (a
:class:`~tissueseg.supervision.Supervision`: what the samples carry, what output of the
model the loss reads, the loss), builds the model and a poly-LR optimiser, and trains for
``run.steps`` steps. The loop knows nothing else about the method. Every ``val_every``
steps it scores the val split's pixel masks (for weak methods too: masks are read for
evaluation only), logs ``metrics.csv`` and ``curves.png`` and keeps
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
import hashlib
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
from .checkpoint import Inference, Preprocessing, model_args, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import PatchDataset, RegionCache, StepSampler
from .fingerprint import file_stamps, key
from .manifest import load_manifest, manifest_mpp
from .metrics import ConfusionAccumulator, scores
from .models import build_model, normalization
from .schemes import IGNORE, ClassScheme, load_scheme, scheme_from_dict
from .supervision import Context, Supervision, build_supervision

RESUME_FREE = ("run.out", "run.device", "run.checkpoint_every", "data.workers", "data.cache_dir")
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


def config_differences(old: dict, new: dict, prefix: str = "", defaults: dict | None = None) -> list[str]:
    """Dotted keys whose values differ (ignoring :data:`RESUME_FREE`). A key ``old`` lacks (a field
    added by a later version) differs only when ``new`` holds something other than its default."""
    if defaults is None:
        defaults = TrainConfig.model_validate({}).to_dict() if not prefix else {}
    keys = []
    for k in sorted(old.keys() | new.keys()):
        name = f"{prefix}{k}"
        a, b, default = old.get(k), new.get(k), defaults.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{name}.", default if isinstance(default, dict) else {})
        elif k not in old and k in defaults and b == default:
            continue
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
    """What DDP wraps: the forward pass the loss reads (the supervision's ``output``)."""

    def __init__(self, model: nn.Module, output: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.model, x)


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


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device, *,
    supervision: Supervision | None = None, channels_last: bool = True,
    autocast: contextlib.AbstractContextManager | None = None, reduce: bool = False,
) -> tuple[np.ndarray, float]:
    """``(confusion matrix, mean loss)`` of ``model`` over a loader of samples with masks.

    The loss is the ``supervision``'s (its parts summed over the loader, divided by their
    count; NaN without one). ``reduce``: sum the matrix and the loss parts over the DDP
    processes (each scored its share of the samples).
    """
    model.eval()
    acc = ConfusionAccumulator(num_classes, ignore_index=IGNORE)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in loader:
        x, targets = _batch(batch, device, channels_last)
        with autocast or contextlib.nullcontext():
            logits = model(x)
            if supervision is not None:
                out = logits if supervision.output_is_logits else supervision.output(model, x)
                parts = supervision.loss(out, targets)
                sums += torch.stack([parts.total.double(), parts.count.double()])
        acc.add(logits.argmax(1), targets["mask"])
    cm = acc.cm
    if reduce:
        cm_t = torch.from_numpy(cm).to(device)
        dist.all_reduce(cm_t)
        dist.all_reduce(sums)
        cm = cm_t.cpu().numpy()
    total, count = sums.tolist()
    return cm, (total / count if supervision is not None and count > 0 else float("nan"))


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


def train(cfg: TrainConfig, quiet: bool = False, overwrite: bool = False,
          supervision: type[Supervision] | None = None) -> TrainResult:
    """Train as ``cfg`` says; resume from ``run.out/last.pt`` when it exists (unless ``overwrite``).

    ``supervision``: a :class:`~tissueseg.supervision.Supervision` class to use in place of
    ``cfg.method``'s (a method's own stage, e.g. :class:`~tissueseg.supervision.ImageLabels`).
    Raises ``ValueError`` when ``run.out`` holds a run with another config or on other data
    (:func:`data_fingerprint`).
    """
    if cfg.data.manifest is None:
        raise ValueError("no manifest: set data.manifest (a `tissueseg tile` output)")
    device = _device(cfg.run.device)
    rank, world, started = _init_distributed(device)
    try:
        return _train(cfg, quiet, overwrite, device, rank, world, supervision)
    finally:
        if started:
            dist.destroy_process_group()


RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "curves.png", "config.yaml")


def run_mismatch(checkpoint: dict, cfg: TrainConfig, data: str) -> str | None:
    """Why ``checkpoint`` is not a run of ``cfg`` on the data of fingerprint ``data``
    (:func:`data_fingerprint`), or None when it is."""
    changed = config_differences(checkpoint["config"], cfg.to_dict())
    if changed:
        return f"a run with another config ({', '.join(changed)} differ)"
    if (checkpoint["state"] or {}).get("data", data) != data:  # older runs recorded none
        return "a run on other data (the manifest's patches or labels, or a file they name, changed since)"
    return None


def _open_run(cfg: TrainConfig, data: str, overwrite: bool, rank: int) -> dict | None:
    """The checkpoint to resume from (None to start), after checking it is a run of the same config
    on the same data; prepares ``run.out`` (rank 0)."""
    out = Path(cfg.run.out)
    checkpoint = None
    if (out / "last.pt").is_file() and not overwrite:
        checkpoint = read_checkpoint(out / "last.pt")
        mismatch = run_mismatch(checkpoint, cfg, data)
        if mismatch:
            raise ValueError(f"{out / 'last.pt'}: {mismatch}; use --overwrite or another --out")
    if rank == 0:
        io.check_output_dir(out)
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        io.write_text(out / "config.yaml", cfg.dump())
    return checkpoint


def data_fingerprint(train_df: pd.DataFrame, val_df: pd.DataFrame) -> str:
    """A hash of what a run learns from and is scored on: the manifest's train and val rows (patches,
    coordinates, labels) and the files they name (path, size, modification time)."""
    rows = hashlib.sha1()
    for df in (train_df, val_df):
        rows.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
        rows.update(repr(list(df.columns)).encode())
    files = {p for df in (train_df, val_df) for col in ("image_path", "mask_path") if col in df
             for p in df[col].dropna().unique()}
    missing = next((p for p in sorted(files) if not Path(p).is_file()), None)
    if missing is not None:
        raise io.InputError(missing, "no such file (named by the manifest)")
    return key(rows.hexdigest(), file_stamps(files))


def total_steps(cfg: TrainConfig, train_df: pd.DataFrame) -> int:
    """The run's length: ``run.steps``, or ``run.epochs`` passes over the training patches."""
    return cfg.run.steps or math.ceil(cfg.run.epochs * len(train_df) / cfg.run.batch_size)


def finished(cfg: TrainConfig) -> bool:
    """Whether ``run.out`` holds a run of ``cfg`` trained to its last step on the manifest's data as it
    is now (:func:`data_fingerprint`): what ``--overwrite`` keeps of a method's earlier stage."""
    path = Path(cfg.run.out) / "last.pt"
    if not path.is_file():
        return False
    checkpoint = read_checkpoint(path)
    train_df, val_df = _splits(cfg, load_manifest(cfg.data.manifest)[0])
    state = checkpoint["state"] or {}
    return ("data" in state and run_mismatch(checkpoint, cfg, data_fingerprint(train_df, val_df)) is None
            and state.get("step") == total_steps(cfg, train_df))


def _splits(cfg: TrainConfig, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    train_df = df[df["split"] == cfg.data.train_split].reset_index(drop=True)
    if train_df.empty:
        raise ValueError(f"{cfg.data.manifest}: no patches in split {cfg.data.train_split!r}")
    val_df = _val_subset(df[df["split"] == cfg.data.val_split].reset_index(drop=True), cfg.run.max_val_patches)
    return train_df, val_df


def _preprocessing(cfg: TrainConfig, train_df: pd.DataFrame, patch_size: int) -> Preprocessing:
    """What training does to pixels, recorded in every checkpoint (the stain normaliser fitted once)."""
    mean, std = normalization(cfg.model)
    stain = None
    if cfg.data.stain_norm != "none":
        from .stain import fit_normalizer

        stain = fit_normalizer(cfg.data.stain_norm, io.read_image(cfg.data.stain_reference)).state()
    return Preprocessing(manifest_mpp(train_df, str(cfg.data.manifest)), patch_size, tuple(mean), tuple(std), stain)


def _build_model(cfg: TrainConfig, scheme: ClassScheme, device: torch.device, world: int) -> nn.Module:
    model_cfg, num_classes, bg = model_args(cfg.to_dict(), scheme)
    model = build_model(model_cfg, num_classes, background_index=bg)
    if world > 1 and device.type == "cuda":
        from timm.layers import convert_sync_batchnorm  # also converts timm's BatchNormAct2d

        model = convert_sync_batchnorm(model)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.run.channels_last else model


class _Run:
    """The mutable state of one training run: model, optimiser, history, best score; and its files."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, scheme: ClassScheme, preprocessing: Preprocessing,
                 inference: Inference, total: int, data: str, device: torch.device, rank: int, world: int):
        self.cfg, self.model, self.scheme, self.preprocessing = cfg, model, scheme, preprocessing
        self.data = data
        self.inference = inference
        self.rank, self.world = rank, world
        self.out = Path(cfg.run.out)
        self.config = cfg.to_dict()
        self.optimizer, self.scheduler = make_optimizer(cfg, model, total)
        amp_dtype = None
        if cfg.run.amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        self.step, self.history, self.running = 0, [], [0.0, 0]
        self.best_miou, self.best_step = -1.0, -1

    def resume(self, checkpoint: dict) -> None:
        st = checkpoint["state"]
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        ranks = st.get("rng_ranks") or [st["rng"]]
        _set_rng_state(ranks[self.rank] if len(ranks) == self.world else ranks[0])
        if len(ranks) != self.world and self.rank:
            torch.manual_seed(self.cfg.run.seed + 1_000_003 * self.rank + st["step"])
        self.step, self.history, self.running = st["step"], list(st["history"]), list(st["running"])
        self.best_miou, self.best_step = st["best_miou"], st["best_step"]

    def _save(self, name: str, state: dict | None = None) -> None:
        save_checkpoint(self.out / name, model=self.model, config=self.config, scheme=self.scheme,
                        preprocessing=self.preprocessing, inference=self.inference, state=state)

    def save_last(self) -> None:
        """``last.pt`` with the training state (called by every process at the same steps)."""
        state = {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": _rng_state(), "step": self.step, "history": self.history,
            "running": self.running, "best_miou": self.best_miou, "best_step": self.best_step, "data": self.data,
        }
        if self.world > 1:
            state["rng_ranks"] = [None] * self.world
            dist.all_gather_object(state["rng_ranks"], state["rng"])
        if self.rank == 0:
            self._save("last.pt", state)

    def keep_if_best(self, miou: float | None) -> None:
        """``best.pt`` when the val mIoU improves; without validation, the latest model."""
        if miou is not None and not miou > self.best_miou:  # NaN (nothing scored) never counts
            return
        self.best_miou, self.best_step = (float(miou) if miou is not None else self.best_miou), self.step
        if self.rank == 0:
            self._save("best.pt")

    def log(self, row: dict, validated: bool) -> None:
        self.history.append(row)
        if self.rank == 0:
            frame = pd.DataFrame(self.history)
            with io.atomic_path(self.out / "metrics.csv") as tmp:
                frame.to_csv(tmp, index=False)
            if validated:
                plot_curves(frame, self.out / "curves.png")


def _loaders(cfg: TrainConfig, sup: Supervision, ctx: Context, preprocessing: Preprocessing, start: int,
             total: int, rank: int, world: int, device: torch.device) -> tuple[DataLoader, DataLoader | None]:
    """The training loader (its sampler continues the seeded sequence at ``start``) and the val loader."""
    stain = None
    if preprocessing.stain is not None:
        from .stain import normalizer_from_state

        stain = normalizer_from_state(preprocessing.stain).transform
    common = dict(scheme=ctx.scheme, cache=ctx.cache, patch_size=preprocessing.patch_size,
                  normalize=(preprocessing.mean, preprocessing.std), stain_normalizer=stain)
    augment = Augment(cfg.data.flips, cfg.data.rot90, cfg.data.stain_jitter, cfg.data.color_jitter, cfg.run.seed)
    train_ds = PatchDataset(ctx.train_df, targets=sup.targets, augment=augment, label_source=sup.label_source,
                            **common)
    sampler = StepSampler(len(train_ds), cfg.run.batch_size, cfg.run.seed, start, total, rank=rank, world=world,
                          weights=sup.sampling_weights() if cfg.data.balanced else None)
    kw = dict(num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
              generator=torch.Generator().manual_seed(cfg.run.seed),
              worker_init_fn=_ignore_interrupts if cfg.data.workers else None)
    mixed = sup.mosaics
    if mixed is not None:
        from .weak.mosaic import MosaicBatches, WithMosaics

        train_ds, sampler = WithMosaics(train_ds, mixed[0]), MosaicBatches(sampler, mixed[1], len(train_ds))
    loader = DataLoader(train_ds, batch_sampler=sampler, **kw)
    val_df = sup.val_df
    if val_df.empty:
        return loader, None
    val_ds = PatchDataset(val_df.iloc[rank::world], **common)  # every process scores every world-th patch
    return loader, DataLoader(val_ds, batch_size=max(cfg.run.batch_size // world, 1), shuffle=False, **kw)


def _train(cfg: TrainConfig, quiet: bool, overwrite: bool, device: torch.device, rank: int, world: int,
           supervision: type[Supervision] | None) -> TrainResult:
    out = Path(cfg.run.out)
    df, meta = load_manifest(cfg.data.manifest)
    scheme = resolve_scheme(cfg, meta)
    train_df, val_df = _splits(cfg, df)
    data = data_fingerprint(train_df, val_df)
    checkpoint = _open_run(cfg, data, overwrite, rank)
    cache = RegionCache(cfg.data.cache_dir or Path(cfg.data.manifest).resolve().parent / "cache")
    ctx = Context(cfg, train_df, val_df, meta.get("params", meta), scheme, cache, out, device, quiet, rank, overwrite)
    sup = supervision(ctx) if supervision is not None else build_supervision(cfg.method, ctx)
    cfg.check_input_size(sup.patch_size)
    preprocessing = _preprocessing(cfg, train_df, sup.patch_size)
    if rank == 0:
        sup.write_previews(out / "pseudo-masks")
    total = total_steps(cfg, train_df)

    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed % 2**32)
    model = _build_model(cfg, scheme, device, world)
    sup.init_model(model)
    if rank:  # dropout draws other masks in every process
        torch.manual_seed(cfg.run.seed + 1_000_003 * rank)
    run = _Run(cfg, model, scheme, preprocessing, sup.inference(), total, data, device, rank, world)
    if checkpoint is not None:
        run.resume(checkpoint)
    if world > 1:
        _same_on_all_ranks(run.step, "the step to resume from")
    start = run.step
    loader, val_loader = _loaders(cfg, sup, ctx, preprocessing, start, total, rank, world, device)
    net: nn.Module = _Net(model, sup.output)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=quiet or rank != 0 or None,
               file=sys.stderr, dynamic_ncols=True)
    t_log, seen, interrupted = time.perf_counter(), 0, False
    B = cfg.run.batch_size
    with _deferred_interrupts() as caught, _deterministic(device.type == "cpu"):
        try:
            for batch in loader:
                lr, stop = _step(run, net, sup, batch, device, bool(caught))
                seen += B
                bar.update()
                validate = run.step % cfg.run.val_every == 0 or run.step == total
                if run.step % cfg.run.log_every == 0 or validate:
                    row = {"step": run.step, "epoch": run.step * B / len(train_df),
                           "train_loss": run.running[0] / run.running[1], "lr": lr, "val_miou": np.nan,
                           "val_loss": np.nan, **{f"iou_{n}": np.nan for n in scheme.names},
                           "patches_per_s": seen / (time.perf_counter() - t_log)}
                    bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{lr:.2e}", pps=f"{row['patches_per_s']:.1f}")
                    run.running, seen = [0.0, 0], 0
                    if validate:
                        row.update(_validate(run, sup, val_loader, scheme, device, world))
                    run.log(row, validate)
                    t_log = time.perf_counter()
                if run.step % cfg.run.checkpoint_every == 0 or run.step == total or stop:
                    run.save_last()
                if stop:
                    interrupted = True
                    break
        finally:
            bar.close()
    if interrupted:
        raise KeyboardInterrupt(f"stopped at step {run.step}; rerun to resume from {out / 'last.pt'}")
    if world > 1:
        dist.barrier()
    best = out / "best.pt"
    return TrainResult(out, best if best.is_file() else None, out / "last.pt", pd.DataFrame(run.history),
                       run.best_miou, run.best_step, run.step, start, scheme.names)


def _step(run: _Run, net: nn.Module, sup: Supervision, batch: dict, device: torch.device,
          interrupted: bool) -> tuple[float, bool]:
    """One optimiser step on the global batch; ``(learning rate used, whether any process was stopped)``."""
    train_mode(net, run.cfg.model.freeze_bn)
    x, targets = _batch(batch, device, run.cfg.run.channels_last)
    with run.autocast:
        output = net(x)
    parts = sup.loss(output, targets)
    # one all-reduce: the global batch's loss sum and count, and whether any process was stopped
    sums = torch.stack([parts.total.detach().double(), parts.count.detach().double(),
                        torch.tensor(float(interrupted), dtype=torch.float64, device=device)])
    if run.world > 1:
        dist.all_reduce(sums)
    count = torch.where(sums[1] > 0, sums[1], 1.0)
    # DDP averages the gradients over the processes: scaling by world gives the global mean's
    loss = parts.total / count.to(parts.total) * run.world if run.world > 1 else parts.mean
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    run.step += 1
    run.running[0] += float(sums[0] / count) if run.world > 1 else float(parts.mean.detach())
    run.running[1] += 1
    return lr, bool(sums[2] > 0)


def _validate(run: _Run, sup: Supervision, loader: DataLoader | None, scheme: ClassScheme, device: torch.device,
              world: int) -> dict:
    """Score the val split (keeping ``best.pt``); the metrics row's val columns."""
    if loader is None:  # nothing to validate on: best.pt is the latest model
        run.keep_if_best(None)
        return {}
    cm, val_loss = evaluate(run.model, loader, scheme.num_classes, device, supervision=sup,
                            channels_last=run.cfg.run.channels_last, autocast=run.autocast, reduce=world > 1)
    sc = scores(cm, scheme.names)
    run.keep_if_best(sc["miou"])
    return {"val_miou": sc["miou"], "val_loss": val_loss,
            **{f"iou_{n}": sc["per_class"][n]["iou"] for n in scheme.names}}
