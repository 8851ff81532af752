"""Segmentation metrics: an exact confusion matrix and the scores derived from it.

Rows of the confusion matrix are the truth, columns the prediction; pixels whose truth
(or prediction) is the ignore index are left out. :func:`scores` reports per-class IoU,
Dice, precision, recall and support, the means over classes, frequency-weighted IoU and
pixel accuracy. A class absent from both truth and prediction has NaN IoU/Dice and is
excluded from the means (it says nothing about the model); one present in the prediction
only scores 0. :func:`evaluate_folders` pairs prediction and truth PNGs by file stem.
"""

from __future__ import annotations

import csv
import io as _io
import math
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import io
from .batch import run_batch
from .schemes import IGNORE, ClassScheme, bcss_wsss4, load_scheme


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = IGNORE) -> np.ndarray:
    """``(K, K)`` int64 counts, rows = truth, columns = prediction (numpy or torch input).

    Pixels with ``target == ignore_index`` are skipped; so are predictions equal to
    ``ignore_index`` (nothing predicted). Other values outside ``0..K-1`` raise ValueError.
    """
    pred, target = _numpy(pred), _numpy(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {target.shape}")
    pred = pred.reshape(-1).astype(np.int64)
    target = target.reshape(-1).astype(np.int64)
    valid = (target != ignore_index) & (pred != ignore_index)
    pred, target = pred[valid], target[valid]
    for what, arr in (("truth", target), ("prediction", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = np.unique(arr[(arr < 0) | (arr >= num_classes)])
            raise ValueError(f"{what} holds class values {bad.tolist()[:5]} outside 0..{num_classes - 1}")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


class ConfusionAccumulator:
    """Sum confusion matrices over batches: ``acc.add(pred, target)``; ``acc.cm``."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, pred: Any, target: Any) -> None:
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def scores(self, names: list[str]) -> dict[str, Any]:
        return scores(self.cm, names)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def scores(cm: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-class and summary scores of a confusion matrix (see the module docstring).

    Returns ``{"per_class": {name: {iou, dice, precision, recall, support}}, "miou",
    "mdice", "fwiou", "pixel_accuracy", "pixels", "classes_scored"}``; NaN where undefined.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(names)} class names")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    union = support + predicted - tp
    iou = _ratio(tp, union)
    dice = _ratio(2 * tp, support + predicted)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    total = float(support.sum())
    seen = union > 0
    per_class = {
        name: {"iou": float(iou[i]), "dice": float(dice[i]), "precision": float(precision[i]),
               "recall": float(recall[i]), "support": int(support[i])}
        for i, name in enumerate(names)
    }
    freq = support / total if total else np.zeros_like(support)
    return {
        "per_class": per_class,
        "miou": float(iou[seen].mean()) if seen.any() else math.nan,
        "mdice": float(dice[seen].mean()) if seen.any() else math.nan,
        "fwiou": float(np.nansum(freq * np.nan_to_num(iou))) if total else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
        "pixels": int(total),
        "classes_scored": [n for n, s in zip(names, seen) if s],
    }


def plot_confusion(cm: np.ndarray, names: list[str], path: str | Path,
                   normalize: Literal["true", "pred"] | None = "true") -> Path:
    """A PNG heatmap of the confusion matrix with values (rows normalised by default)."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.float64)
    if normalize == "true":
        shown, title = _ratio(cm, cm.sum(1, keepdims=True)), "rows: truth (normalised), columns: prediction"
    elif normalize == "pred":
        shown, title = _ratio(cm, cm.sum(0, keepdims=True)), "columns normalised (precision)"
    else:
        shown, title = cm, "pixel counts"
    k = len(names)
    size = max(4.0, 0.55 * k + 2)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.add_subplot()
    ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=9)
    top = np.nanmax(shown) if np.isfinite(shown).any() else 1.0
    if k <= 25:
        for (r, c), v in np.ndenumerate(shown):
            if np.isfinite(v) and v > 0:
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(c, r, text, ha="center", va="center", fontsize=6 if k > 10 else 8,
                        color="white" if v > 0.6 * top else "black")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def _read_labels(path: Path, fmt: str, scheme: ClassScheme, convention: str) -> np.ndarray:
    if convention == "wsss":
        from .weaklabels import read_weak_mask

        return read_weak_mask(path, "bcss-wsss")
    mask = io.read_mask(path)
    if fmt == "codes":
        try:
            return scheme.apply(mask)
        except ValueError as exc:
            raise io.InputError(path, str(exc)) from None
    return mask


def _pair_cm(pair: tuple[Path, Path], *, scheme: ClassScheme, truth_format: str, pred_format: str,
             convention: str) -> np.ndarray:
    pred_path, truth_path = pair
    pred = _read_labels(pred_path, pred_format, scheme, "default")
    truth = _read_labels(truth_path, truth_format, scheme, convention)
    if pred.shape != truth.shape:
        raise io.InputError(pred_path, f"size {pred.shape[::-1]} differs from its truth {truth_path.name} "
                                       f"{truth.shape[::-1]}")
    try:
        return confusion_matrix(pred, truth, scheme.num_classes)
    except ValueError as exc:
        raise io.InputError(pred_path, str(exc)) from None


def _by_stem(folder: Path, what: str) -> dict[str, Path]:
    """Image files of ``folder`` by stem, and ``<name>/labels.png`` (the ``predict`` layout) by ``name``."""
    if not folder.is_dir():
        raise io.InputError(folder, f"{what} folder does not exist")
    found = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES:
            found[p.stem] = p
        elif (p / "labels.png").is_file():
            found[p.name] = p / "labels.png"
    return found


def evaluate_folders(
    pred_dir: str | Path,
    truth_dir: str | Path,
    scheme: str | ClassScheme = "bcss22",
    *,
    truth_format: Literal["codes", "labels"] = "codes",
    pred_format: Literal["labels", "codes"] = "labels",
    convention: Literal["default", "wsss"] = "default",
    workers: int = 1,
    quiet: bool = True,
) -> dict[str, Any]:
    """Score the label-map PNGs in ``pred_dir`` against the masks in ``truth_dir``.

    Files pair by stem; a prediction may also be ``pred_dir/<stem>/labels.png``, as
    ``tissueseg predict`` writes them. Predictions are class-index maps (mode P or L, 255 = nothing);
    truth is raw codes mapped through ``scheme`` (``truth_format="codes"``) or class
    indices (``"labels"``). ``convention="wsss"``: BCSS-WSSS palette masks, the four
    ``bcss-wsss4`` classes, background (index 4) ignored. Unmatched and unreadable files
    are listed and skipped. Returns scores plus ``confusion`` (list of rows), ``names``,
    ``pairs``, ``skipped``, ``unmatched_predictions``, ``unmatched_truth``.
    """
    scheme = bcss_wsss4() if convention == "wsss" else load_scheme(scheme)
    preds, truths = _by_stem(Path(pred_dir), "prediction"), _by_stem(Path(truth_dir), "truth")
    pairs = [(preds[s], truths[s]) for s in preds if s in truths]
    if not pairs:
        raise io.InputError(pred_dir, f"no prediction has a truth file of the same name in {truth_dir}")
    fn = partial(_pair_cm, scheme=scheme, truth_format=truth_format, pred_format=pred_format, convention=convention)
    batch = run_batch(fn, pairs, workers=workers, desc="evaluate", quiet=quiet)
    if not batch.results:
        raise io.InputError(pred_dir, "no pair could be scored: " + "; ".join(r for _, r in batch.skipped[:3]))
    cm = np.sum(batch.ok, axis=0)
    result = scores(cm, scheme.names)
    result.update(
        scheme=scheme.name, names=scheme.names, confusion=cm.tolist(), pairs=len(batch.results),
        skipped=[reason for _, reason in batch.skipped],
        unmatched_predictions=sorted(str(p) for s, p in preds.items() if s not in truths),
        unmatched_truth=sorted(str(p) for s, p in truths.items() if s not in preds),
        convention=convention,
    )
    return result


def per_class_csv(result: dict[str, Any]) -> str:
    """The per-class table of an :func:`evaluate_folders` result as CSV text."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "iou", "dice", "precision", "recall", "support"])
    for name, row in result["per_class"].items():
        writer.writerow([name] + [f"{row[k]:.6f}" if not math.isnan(row[k]) else "" for k in
                                  ("iou", "dice", "precision", "recall")] + [row["support"]])
    return buf.getvalue()


def json_safe(obj: Any) -> Any:
    """NaN floats to None, recursively (strict JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
