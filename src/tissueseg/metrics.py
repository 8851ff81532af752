"""Segmentation metrics: an exact confusion matrix and the scores derived from it.

Rows of the confusion matrix are the truth, columns the prediction, and a last column
counts labelled pixels that got no prediction (predicted as the ignore index, e.g. glass
dropped by tissue detection): every labelled pixel counts, and one without a prediction
is a miss of its true class. Pixels whose truth is the ignore index are left out.
:func:`scores` reports per-class IoU, Dice, precision, recall, coverage and support, the
means over classes, frequency-weighted IoU, pixel accuracy and coverage (the share of
labelled pixels that got a prediction). A class absent from both truth and prediction
has NaN IoU/Dice and is excluded from the means (it says nothing about the model); one
present in the prediction only scores 0. :func:`evaluate_folders` pairs prediction and
truth PNGs by file stem and scores them pooled and per image.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import fingerprint, io
from .batch import run_batch
from .colorize import recorded_scheme
from .schemes import IGNORE, ClassScheme, bcss_wsss4, load_scheme

OUTPUTS = ("metrics.json", "per_class.csv", "per_image.csv", "confusion.png")
"""What :func:`evaluate_folders` writes to ``out`` (``metrics.json`` last: it marks the set finished)."""


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = IGNORE) -> np.ndarray:
    """``(K, K + 1)`` int64 counts, rows = truth, columns = prediction (numpy or torch input).

    Column ``K`` counts labelled pixels predicted as ``ignore_index`` (no prediction).
    Pixels with ``target == ignore_index`` are skipped. Other values outside ``0..K-1``
    raise ValueError.
    """
    pred, target = _numpy(pred), _numpy(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {target.shape}")
    pred = pred.reshape(-1).astype(np.int64)
    target = target.reshape(-1).astype(np.int64)
    labelled = target != ignore_index
    pred, target = pred[labelled], target[labelled]
    pred[pred == ignore_index] = num_classes
    for what, arr, top in (("truth", target, num_classes - 1), ("prediction", pred, num_classes)):
        if arr.size and (arr.min() < 0 or arr.max() > top):
            bad = np.unique(arr[(arr < 0) | (arr > top)])
            raise ValueError(f"{what} holds class values {bad.tolist()[:5]} outside 0..{num_classes - 1}")
    k1 = num_classes + 1
    return np.bincount(target * k1 + pred, minlength=num_classes * k1).reshape(num_classes, k1)


class ConfusionAccumulator:
    """Sum confusion matrices over batches: ``acc.add(pred, target)``; ``acc.cm`` is ``(K, K + 1)``."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def add(self, pred: Any, target: Any) -> None:
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def scores(self, names: list[str]) -> dict[str, Any]:
        return scores(self.cm, names)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def scores(cm: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-class and summary scores of a confusion matrix (see the module docstring).

    ``cm`` is ``(K, K + 1)`` as :func:`confusion_matrix` gives it, or ``(K, K)`` (every
    labelled pixel predicted). Returns ``{"per_class": {name: {iou, dice, precision,
    recall, coverage, support}}, "miou", "mdice", "fwiou", "pixel_accuracy", "coverage",
    "pixels", "classes_scored"}``; NaN where undefined.
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = len(names)
    if cm.shape == (k, k):
        cm = np.pad(cm, ((0, 0), (0, 1)))
    if cm.shape != (k, k + 1):
        raise ValueError(f"confusion matrix {cm.shape} does not match {k} class names")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm[:, :k].sum(0).astype(np.float64)
    missed = cm[:, k].astype(np.float64)
    union = support + predicted - tp
    iou = _ratio(tp, union)
    dice = _ratio(2 * tp, support + predicted)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    coverage = _ratio(support - missed, support)
    total = float(support.sum())
    seen = union > 0
    per_class = {
        name: {"iou": float(iou[i]), "dice": float(dice[i]), "precision": float(precision[i]),
               "recall": float(recall[i]), "coverage": float(coverage[i]), "support": int(support[i])}
        for i, name in enumerate(names)
    }
    freq = support / total if total else np.zeros_like(support)
    return {
        "per_class": per_class,
        "miou": float(iou[seen].mean()) if seen.any() else math.nan,
        "mdice": float(dice[seen].mean()) if seen.any() else math.nan,
        "fwiou": float(np.nansum(freq * np.nan_to_num(iou))) if total else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
        "coverage": float(1.0 - missed.sum() / total) if total else math.nan,
        "pixels": int(total),
        "classes_scored": [n for n, s in zip(names, seen) if s],
    }


def plot_confusion(cm: np.ndarray, names: list[str], path: str | Path,
                   normalize: Literal["true", "pred"] | None = "true") -> Path:
    """A PNG heatmap of the confusion matrix with values (rows normalised by default);
    a ``(K, K + 1)`` matrix shows its last column as "no prediction"."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.float64)
    if normalize == "true":
        shown, title = _ratio(cm, cm.sum(1, keepdims=True)), "rows: truth (normalised), columns: prediction"
    elif normalize == "pred":
        shown, title = _ratio(cm, cm.sum(0, keepdims=True)), "columns normalised (precision)"
    else:
        shown, title = cm, "pixel counts"
    k = len(names)
    columns = [*names, "no prediction"][: cm.shape[1]]
    size = max(4.0, 0.55 * k + 2)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.add_subplot()
    ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
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
    """Image files of ``folder`` by stem, and ``<name>/labels.png`` (the ``predict`` layout) by ``name``.

    Two files with one stem (``a.png`` and ``a.tif``, or ``a.png`` and ``a/labels.png``) are refused.
    """
    if not folder.is_dir():
        raise io.InputError(folder, f"{what} folder does not exist")
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES:
            found.append((p.stem, p))
        elif (p / "labels.png").is_file():
            found.append((p.name, p / "labels.png"))
    fingerprint.unique_names(found, f"{what} files", "which pairs them")
    return dict(found)


def _same_classes(a: ClassScheme, b: ClassScheme) -> bool:
    """Same classes in the same order from the same codes, and the same ignored codes."""
    return ([(c.name, c.codes) for c in a.classes] == [(c.name, c.codes) for c in b.classes]
            and set(a.ignore_codes) == set(b.ignore_codes))


def resolve_scheme(predictions: list[Path], given: ClassScheme | None) -> ClassScheme:
    """The scheme to score ``predictions`` with: ``given``, or the one they record.

    Every prediction that records a scheme (``predict`` and ``colorize`` write it into
    their PNGs) must record the given one's classes (names, in order: its codes are what
    map the truth, so a model trained on BCSS-WSSS's own masks, ``bcss-wsss-masks``, is
    scored on BCSS masks with ``bcss-wsss4``), and all the same scheme; without ``given``,
    every readable prediction must record it. Unreadable files are left to the scoring,
    which skips them. Raises :class:`~tissueseg.io.InputError` naming the file otherwise.
    """
    first: tuple[Path, ClassScheme] | None = None
    for path in predictions:
        try:
            rec = recorded_scheme(path)
        except io.InputError:
            continue
        if rec is None:
            if given is None:
                raise io.InputError(path, "records no class scheme; pass --scheme")
            continue
        if given is not None and rec.names != given.names:
            raise io.InputError(path, f"was predicted with scheme {rec.name!r}, not {given.name!r} (other classes); "
                                      "drop --scheme to use the recorded one")
        if first is None:
            first = (path, rec)
        elif not _same_classes(rec, first[1]):
            raise io.InputError(path, f"records scheme {rec.name!r} but {first[0]} records {first[1].name!r}; "
                                      "evaluate them separately")
    if given is not None:
        return given
    if first is None:
        raise io.InputError(predictions[0].parent if predictions else ".", "no readable prediction; pass --scheme")
    return first[1]


def wsss_classes(predictions: list[Path], given: ClassScheme | None) -> ClassScheme:
    """The four BCSS-WSSS classes (``bcss-wsss4``), which ``convention="wsss"`` scores.

    A model trained on BCSS masks (``bcss-wsss4``) and one trained on the dataset's own masks
    (``bcss-wsss-masks``) predict the same class indices, so ``given`` and what predictions
    record must name these classes in this order, whatever codes they were mapped from.
    Raises ``ValueError`` for ``given``, :class:`~tissueseg.io.InputError` naming a prediction
    otherwise.
    """
    wsss = bcss_wsss4()
    if given is not None and given.names != wsss.names:
        raise ValueError(f"--convention wsss scores the BCSS-WSSS classes, not scheme {given.name!r}")
    for path in predictions:
        try:
            rec = recorded_scheme(path)
        except io.InputError:
            continue
        if rec is not None and rec.names != wsss.names:
            raise io.InputError(path, f"was predicted with scheme {rec.name!r}; --convention wsss scores the "
                                      f"BCSS-WSSS classes ({', '.join(wsss.names)})")
    return wsss


def evaluate_folders(
    pred_dir: str | Path,
    truth_dir: str | Path,
    scheme: str | ClassScheme | None = None,
    *,
    truth_format: Literal["codes", "labels"] = "codes",
    pred_format: Literal["labels", "codes"] = "labels",
    convention: Literal["default", "wsss"] = "default",
    workers: int = 1,
    quiet: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score the label-map PNGs in ``pred_dir`` against the masks in ``truth_dir``.

    Files pair by stem; a prediction may also be ``pred_dir/<stem>/labels.png``, as
    ``tissueseg predict`` writes them. Predictions are class-index maps (mode P or L, 255 = nothing
    predicted: a miss); truth is raw codes mapped through the scheme (``truth_format="codes"``)
    or class indices (``"labels"``). ``scheme=None`` takes the scheme the predictions record
    (see :func:`resolve_scheme`). ``convention="wsss"``: BCSS-WSSS palette masks, the four
    BCSS-WSSS classes (predictions of ``bcss-wsss4`` or ``bcss-wsss-masks``, see
    :func:`wsss_classes`), background (index 4) ignored. Unmatched and unreadable files are
    listed and skipped.

    Returns the pooled scores plus ``per_image`` (one row per scored pair), ``confusion``
    (rows), ``names``, ``scheme``, ``pairs``, ``skipped``, ``unmatched_predictions``,
    ``unmatched_truth`` and ``fingerprint`` (all inputs and parameters). With ``out`` the
    result is also written there (:data:`OUTPUTS`) under the rerun policy of
    :mod:`tissueseg.fingerprint`: an evaluation of the same files and parameters is read
    back (``kept`` True), another one is replaced only with ``overwrite``.
    """
    chosen = None if scheme is None else load_scheme(scheme)
    preds, truths = _by_stem(Path(pred_dir), "prediction"), _by_stem(Path(truth_dir), "truth")
    pairs = [(preds[s], truths[s]) for s in preds if s in truths]
    if not pairs:
        raise io.InputError(pred_dir, f"no prediction has a truth file of the same name in {truth_dir}")
    resolve = wsss_classes if convention == "wsss" else resolve_scheme
    chosen = resolve([p for p, _ in pairs], chosen)
    stamp = fingerprint.key(fingerprint.file_stamps([*preds.values(), *truths.values()]), chosen.to_dict(),
                            truth_format, pred_format, convention)
    if out is not None and fingerprint.reuse(Path(out) / "metrics.json", stamp, overwrite):
        return {**json.loads((Path(out) / "metrics.json").read_text()), "kept": True}
    fn = partial(_pair_cm, scheme=chosen, truth_format=truth_format, pred_format=pred_format, convention=convention)
    batch = run_batch(fn, pairs, workers=workers, desc="evaluate", quiet=quiet)
    if not batch.results:
        raise io.InputError(pred_dir, "no pair could be scored: " + "; ".join(r for _, r in batch.skipped[:3]))
    cm = np.sum(batch.ok, axis=0)
    result = scores(cm, chosen.names)
    result.update(
        scheme=chosen.name, names=chosen.names, confusion=cm.tolist(), pairs=len(batch.results),
        per_image=[_image_row(p, t, c, chosen.names) for (p, t), c in batch.results],
        skipped=[reason for _, reason in batch.skipped],
        unmatched_predictions=sorted(str(p) for s, p in preds.items() if s not in truths),
        unmatched_truth=sorted(str(p) for s, p in truths.items() if s not in preds),
        convention=convention, fingerprint=stamp, kept=False,
    )
    if out is not None:
        write_evaluation(result, out)
    return result


def _image_row(pred: Path, truth: Path, cm: np.ndarray, names: list[str]) -> dict[str, Any]:
    s = scores(cm, names)
    return {"image": truth.stem, "prediction": str(pred), "truth": str(truth), "pixels": s["pixels"],
            "coverage": s["coverage"], "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"],
            "iou": {n: row["iou"] for n, row in s["per_class"].items()}}


def write_evaluation(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write an :func:`evaluate_folders` result as :data:`OUTPUTS` in ``out``; name -> path."""
    out = io.check_output_dir(out)
    files = {name: out / name for name in OUTPUTS}
    plot_confusion(result["confusion"], result["names"], files["confusion.png"])
    io.write_text(files["per_class.csv"], per_class_csv(result))
    io.write_text(files["per_image.csv"], per_image_csv(result))
    io.write_json(files["metrics.json"], json_safe({k: v for k, v in result.items() if k != "kept"}))
    return files


def _cell(v: float) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.6f}"


def per_class_csv(result: dict[str, Any]) -> str:
    """The per-class table of an :func:`evaluate_folders` result as CSV text."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    fields = ("iou", "dice", "precision", "recall", "coverage")
    writer.writerow(["class", *fields, "support"])
    for name, row in result["per_class"].items():
        writer.writerow([name, *(_cell(row[k]) for k in fields), row["support"]])
    return buf.getvalue()


def per_image_csv(result: dict[str, Any]) -> str:
    """One row per scored pair: its files, labelled pixels, coverage, mIoU, pixel accuracy and per-class IoU."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "prediction", "truth", "pixels", "coverage", "miou", "pixel_accuracy",
                     *(f"iou_{n}" for n in result["names"])])
    for row in result["per_image"]:
        writer.writerow([row["image"], row["prediction"], row["truth"], row["pixels"],
                         *(_cell(row[k]) for k in ("coverage", "miou", "pixel_accuracy")),
                         *(_cell(row["iou"][n]) for n in result["names"])])
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
