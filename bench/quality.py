"""Segmentation quality of full supervision and of each weak method, side by side.

Generated H&E regions (tissueseg.synth) on the layouts of the real BCSS masks
(../shared/data/bcss/masks; random layouts when absent); training and held-out regions
have different seeds and crops. Every segmenter gets the SAME training budget: optimiser
steps x batch size (``--steps`` x ``--batch``) of the same crop size, optimiser (AdamW, poly
LR) and seed; two-stage methods add their stage-1 classifier (``--cls-steps``), counted in
the cost columns (samples, Mpx, seconds; ``+eq`` takes it off stage 2 instead). Weak
methods see only image-level labels of patches (the ``label_<class>`` columns a manifest
tiled at that patch size would hold, threshold 5 % of the ROI); the masks of the training
regions are used only by the full model. Scores: per-class IoU and mIoU on the held-out
regions (whole-region prediction with flip TTA for every method).

Run: python bench/quality.py --steps 300 --seed 0 [--data-seed 0] [--methods full,sigmoid-max,...] [--out bench-out]
Writes the table to <out>/quality.md and the numbers to <out>/quality.json (with each method's
confusion matrix on the held-out regions: rows true class, columns predicted class, last column
pixels with no prediction).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tissueseg import io, tiling
from tissueseg.config import CamConfig
from tissueseg.losses import build_loss, cross_entropy
from tissueseg.metrics import confusion_matrix, scores
from tissueseg.models import ModelConfig, build_model, encoders, normalization
from tissueseg.schemes import IGNORE, ClassScheme, load_scheme
from tissueseg.stats import class_weights
from tissueseg.weak import labelgrid
from tissueseg.weak.pseudomask import pseudo_mask

from fitloop import (  # bench/fitloop.py
    concat_batches, crops, decode, encode, fit, grid_loss, labelset_loss, mosaic_batches, patch_batches, patch_crops,
    predict_probs, to_input,
)
from tissueseg.data import crop
from tissueseg.losses import multilabel
from tissueseg.models.classifier import build_classifier
from tissueseg.models.encoders import init_encoder
from tissueseg.weak import cam
from tissueseg.weak.mosaic import Mosaics, pure_sources

MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "bcss" / "masks"
Region = tuple[np.ndarray, np.ndarray]  # (rgb, class-index labels with 255 ignore)


def make_regions(n: int, size: int, seed: int, scheme: ClassScheme) -> list[Region]:
    """``n`` generated regions on crops of the real BCSS layouts (cycled)."""
    from tissueseg import synth

    masks = sorted(MASKS.glob("*.png")) if MASKS.is_dir() else []
    out = []
    for i in range(n):
        layout = None
        if masks:
            layout = synth.layout_from_mask(io.read_mask(masks[i % len(masks)]), (size, size), seed=seed * 1000 + i)
        rgb, codes = synth.make_region((size, size), seed=seed * 1000 + i, layout=layout)
        out.append((rgb, scheme.apply(codes)))
    return out


def weak_targets(regions: list[Region], cell: int, k: int) -> list[Region]:
    """Regions with their label grid at ``cell`` px as a bit-coded pixel map (the weak labels)."""
    return [(rgb, encode(labelgrid.cell_labels(lab, cell, k))) for rgb, lab in regions]


def pseudo_targets(regions: list[Region], cell: int, k: int) -> list[Region]:
    """Regions with the pseudo-mask made from their label grid at ``cell`` px (the default weak method)."""
    return [(rgb, pseudo_mask(labelgrid.cell_labels(lab, cell, k), cell, lab.shape)) for rgb, lab in regions]


def full_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y.long(), ignore_index=IGNORE)


def weighted_loss(pseudo: list[Region], k: int) -> Callable:
    """Cross-entropy weighted by median frequency over the pseudo-masks' pixels (as ``loss.class_weights: median``)."""
    counts = sum(np.bincount(m[m < k].ravel(), minlength=k) for _, m in pseudo)
    weights = torch.tensor(class_weights(counts, "median"), dtype=torch.float32)
    return lambda model, x, y: cross_entropy(model(x), y, ignore_index=IGNORE, class_weights=weights)


def with_label_sets(mask: np.ndarray, corners: np.ndarray, size: int, labels: np.ndarray) -> np.ndarray:
    """A pseudo-mask and its patches' label sets in one int64 map: ``class << 16 | label-set bits``."""
    bits = np.zeros(mask.shape, np.int64)
    for (x, y), code in zip(corners, encode(labels)):
        bits[max(y, 0) : y + size, max(x, 0) : x + size] = code
    return mask.astype(np.int64) << 16 | bits


def set_loss(weight: float) -> Callable:
    """Cross-entropy on the pseudo-mask (``t >> 16``) plus ``weight`` x the label-set loss of the patch labels
    (``t & 0xFFFF``)."""

    def loss(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        mask, bits = (t >> 16) & 0xFF, t & 0xFFFF
        return cross_entropy(logits, mask, ignore_index=IGNORE) + weight * labelset_loss(logits, bits)
    return loss


def mil_loss(name: str, k: int) -> Callable:
    """A MIL loss of tissueseg.losses on the FCN's coarse maps, with the crop's image labels."""
    mil = build_loss(name)

    def loss(model, x, bits):
        labels = decode(bits[:, :1, :1], k)[:, :, 0, 0].float()
        return mil(model.forward_maps(x), labels)
    return loss


METHODS = ("full", "mil-max", "sigmoid-max", "lse", "grid-32-set", "grid-128", "grid-64", "grid-32")
"""``grid-<cell>``: the default weak method (pseudo-masks from the labels of ``cell`` px patches, cross-entropy);
``grid-<cell>-set``: the same labels with the label-set and presence losses; ``crop`` for ``cell``: one cell per crop.

Labels of whole ``P`` px patches (non-overlapping, edge padded, as ``tissueseg tile --size P --stride P``):
``<mil>@P`` (a MIL loss on whole patches), ``cam@P[+opt...]`` (stage 1: multi-label patch classifier,
CAM pseudo-masks; stage 2: DeepLabv3+ on them), ``mosaic@P[+opt...]`` (stage 2 on mosaics of single-label
patches only), ``pisto@P[+opt...]`` (PistoSeg's route: half the steps on mosaics, then the rest on that
model's label-restricted predictions on the real patches). Options:

- pseudo-masks: ``bal`` stage 1 draws its patches class-balanced, ``gf`` guided-filter refinement of the CAMs, ``white`` glass ignored, ``min`` pixels of
  mixed patches where no label's CAM reaches ``--min-score`` ignored, ``margin`` pixels whose best label
  beats the second by less than ``--margin`` ignored, ``ctx`` the classifier sees
  ``--context`` px around each patch, ``nocamtta`` CAMs without flip averaging, ``ipp`` the maps of
  mixed patches redrawn by image-specific prototypes (``--prototypes`` iterations), ``pw`` the maps of
  mixed patches weighed by the classifier's presence of each class in the patch (``--presence-power``,
  before the prototypes) and around each pixel (``--local-presence-power``, after them; as
  ``cam.presence_power`` and ``cam.local_presence_power``);
- stage 2: ``bal2`` crops of labelled patches drawn class-balanced by their labels (as ``data.balanced``;
  else crops anywhere, uniformly), ``mosaic`` batches partly mosaics of single-label patches (``--mosaic-mix``), ``pmosaic``
  mosaics also from one-class windows of the pseudo-masks, ``r2`` two rounds (the second on the first's
  label-restricted predictions), ``init`` the segmenter's encoder starts from the stage-1 classifier's, ``eq`` shortened by the classifier's steps (equal samples), ``set``
  the loss adds to the cross-entropy on the pseudo-masks the label-set loss of every pixel's patch labels
  (``-log sum_{k in L} p_k``, which is never wrong: it trains the pixels ``margin`` ignores), ``wce``
  the cross-entropy weighted by median frequency over the pseudo-masks' pixels;
- prediction: ``gate`` class gate of the classifier per patch, ``lgate`` the segmenter's probabilities
  times the classifier's local presence of each class (``--gate-window`` px around each pixel) to the
  power ``--gate-power`` (as ``cam.local_gate`` and ``cam.local_gate_power``), ``la`` the
  probabilities divided by each class's share of the pseudo-masks' pixels to the power ``--la-tau`` (logit
  adjustment, Menon et al. 2021),
  ``notta`` no flip TTA, ``stage1`` the
  classifier's own gated CAMs (no stage 2)."""

MIL = ("sigmoid-max", "lse", "topk", "mil-max")
STAGE2_OPTS = ("bal", "bal2", "ipp", "pw", "init", "gf", "white", "min", "margin", "ctx", "nocamtta", "mosaic", "pmosaic", "r2", "eq", "set", "wce")
PREDICT_OPTS = ("gate", "lgate", "la", "notta", "stage1")


def parse(method: str) -> tuple[str, int | None, frozenset[str]]:
    """``(base, patch, options)`` of a method name: ``cam@256+gf+gate`` -> ``("cam", 256, {"gf", "gate"})``."""
    head, *opts = method.split("+")
    base, _, patch = head.partition("@")
    unknown = set(opts) - set(STAGE2_OPTS) - set(PREDICT_OPTS)
    if unknown or (opts and base not in ("cam", "mosaic", "pisto")):
        raise SystemExit(f"method {method!r}: unknown options {sorted(unknown) or opts}")
    return base, int(patch) if patch else None, frozenset(opts)


def labelled_patches(regions: list[Region], size: int, k: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Per region the ``(N, 2)`` corners and ``(N, K)`` labels of its non-overlapping ``size`` px patches
    (edge padded, labels as ``tile`` gives them, patches without ROI dropped); then all patches' pixels
    ``(M, size, size, 3)`` (white outside the region) and labels ``(M, K)``."""
    corners, labels, pix = [], [], []
    for rgb, lab in regions:
        xy = tiling.grid(lab.shape, size, size, edge="pad")
        cl = labelgrid.cell_labels(lab, size, k).reshape(-1, k)
        keep = cl.any(axis=1)
        corners.append(xy[keep])
        labels.append(cl[keep])
        pix.extend(crop(rgb, int(x), int(y), size, size, fill=255) for x, y in xy[keep])
    return corners, labels, np.stack(pix), np.concatenate(labels)


def pm_scores(pseudo: list[Region], train: list[Region], k: int, names: list[str]) -> dict:
    """mIoU of pseudo-masks on the labelled pixels they cover (what stage 2 trains on), and that share.

    A pseudo-mask leaves uncertain pixels out of training on purpose, so its IoU is scored on the
    pixels it labels and its coverage is reported beside it.
    """
    cm = np.zeros((k, k + 1), np.int64)
    covered = labelled = 0
    for (_, pm), (_, lab) in zip(pseudo, train):
        cm += confusion_matrix(pm, lab, k)
        labelled += int((lab != IGNORE).sum())
        covered += int(((lab != IGNORE) & (pm != IGNORE)).sum())
    sc = scores(cm[:, :k], names)
    return {"pm_miou": sc["miou"], "pm_iou": {n: sc["per_class"][n]["iou"] for n in names},
            "pm_coverage": covered / max(labelled, 1)}


class Cost(dict):
    """Training cost of a method: samples, pixels and seconds, summed over its stages."""

    def __add__(self, other: dict) -> Cost:
        return Cost({key: self.get(key, 0) + other.get(key, 0) for key in set(self) | set(other)})


def _cost(steps: int, batch: int, side: int, seconds: float) -> Cost:
    return Cost(samples=steps * batch, mpx=steps * batch * side * side / 1e6, seconds=seconds)


class PatchLabelRun:
    """The two-stage patch-label methods of one bench run, sharing stage 1, pseudo-masks and stage-2 models."""

    def __init__(self, args: argparse.Namespace, train: list[Region], scheme: ClassScheme):
        self.args, self.train, self.k, self.names = args, train, scheme.num_classes, scheme.names
        self.norm = normalization(ModelConfig(weights=args.weights))
        self._memo: dict[tuple, tuple] = {}

    def _once(self, key: tuple, make: Callable[[], tuple]) -> tuple:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def patches(self, size: int) -> tuple:
        return self._once(("patches", size), lambda: labelled_patches(self.train, size, self.k))

    def classifier(self, size: int, balanced: bool = False) -> tuple[torch.nn.Module, Cost]:
        """Stage 1 on the whole labelled patches (multi-label BCE of every depth's averaged class maps);
        ``balanced``: class-balanced patch draws."""

        def make() -> tuple:
            a = self.args
            _, _, pix, labels = self.patches(size)
            torch.manual_seed(a.seed)
            model = build_classifier("tf_efficientnet_lite0", self.k, weights=a.weights, output_stride=a.cls_stride)
            start = time.perf_counter()
            fit(model, patch_batches(pix, labels, a.batch, a.seed, balanced),
                lambda m, x, y: multilabel(m.forward_maps(x), y),
                a.cls_steps, self.norm, lr=a.lr, desc=f"classifier@{size}")
            return model, _cost(a.cls_steps, a.batch, size, time.perf_counter() - start)
        return self._once(("classifier", size, balanced), make)

    def pseudo(self, size: int, opts: frozenset[str]) -> tuple[list[Region], dict, Cost]:
        """The CAM pseudo-masks of the training regions, their scores against the truth, stage 1 + their cost."""
        key = frozenset(opts & {"gf", "white", "min", "margin", "ctx", "nocamtta", "bal", "ipp", "pw"})

        def make() -> tuple:
            model, cost = self.classifier(size, "bal" in key)
            corners, labels, _, _ = self.patches(size)
            options = cam.CamOptions(tta="none" if "nocamtta" in key else "flip", refine_radius=self.args.gf_radius if "gf" in key else 0,
                                     refine_eps=self.args.gf_eps, white=200 if "white" in key else None,
                                     min_score=self.args.min_score if "min" in key else 0.0,
                                     context=self.args.context if "ctx" in key else 0,
                                     margin=self.args.margin if "margin" in key else 0.0,
                                     prototypes=self.args.prototypes if "ipp" in key else 0,
                                     presence_power=self.args.presence_power if "pw" in key else 0.0,
                                     local_presence_power=self.args.local_presence_power if "pw" in key else 0.0)
            start = time.perf_counter()
            out = [(rgb, cam.region_pseudo_mask(model, rgb, xy, size, lab, self.norm, options))
                   for (rgb, _), xy, lab in zip(self.train, corners, labels)]
            return out, pm_scores(out, self.train, self.k, self.names), cost + Cost(seconds=time.perf_counter() - start)
        return self._once(("pseudo", size, key), make)

    def mosaics(self, size: int, pseudo: list[Region] | None, seed: int) -> Mosaics:
        """Mosaics of the single-label patches' pixels (and of one-class windows of ``pseudo``)."""
        a = self.args
        corners, labels, _, _ = self.patches(size)
        rows = []
        for r, ((rgb, _), xy, lab) in enumerate(zip(self.train, corners, labels)):
            for (x, y), l in zip(xy, lab):
                if l.sum() == 1:
                    x0, y0 = max(int(x), 0), max(int(y), 0)
                    rows.append((str(r), x0, y0, min(int(x) + size, rgb.shape[1]) - x0,
                                 min(int(y) + size, rgb.shape[0]) - y0, int(l.argmax())))
        sources = pd.DataFrame(rows, columns=["image_path", "x", "y", "w", "h", "class"])
        if pseudo is not None:
            sources = pd.concat([sources] + [pure_sources(pm, a.tile, str(r), a.tile // 2) for r, (_, pm) in enumerate(pseudo)],
                                ignore_index=True)
        images = {str(r): rgb for r, (rgb, _) in enumerate(self.train)}
        return Mosaics(sources, images.__getitem__, size=a.crop, tile=a.tile, length=10**9, seed=seed)

    def segmenter(self, base: str, size: int, opts: frozenset[str]) -> tuple[torch.nn.Module, dict, Cost]:
        """Stage 2: DeepLabv3+ with the cross-entropy on the pseudo-masks and/or mosaics.

        With ``r2`` (and for ``pisto``) the steps are split in two rounds: after the first, the
        model's predictions on the training regions, restricted to each patch's labels, are the
        pseudo-masks of the second (``pisto``: the first round trains on mosaics only).
        """
        key = frozenset(opts & set(STAGE2_OPTS))

        def make() -> tuple:
            a = self.args
            pm, pm_sc, cost = (None, {}, Cost()) if base in ("mosaic", "pisto") else self.pseudo(size, key)
            pm_sc = dict(pm_sc)
            steps = a.steps - a.cls_steps if "eq" in key else a.steps
            rounds = 2 if "r2" in key or base == "pisto" else 1
            corners, labels, _, _ = self.patches(size)
            torch.manual_seed(a.seed)
            model = build_model(ModelConfig(weights=a.weights), self.k)
            if "init" in key:
                init_encoder(model, self.classifier(size, "bal" in key)[0])
            start = time.perf_counter()
            for r in range(rounds):
                if r:
                    pm = [(rgb, cam.restrict_region(predict_probs(model, rgb, self.norm), xy, size, lab))
                          for (rgb, _), xy, lab in zip(self.train, corners, labels)]
                    pm_sc[f"pm{r + 1}"] = pm_scores(pm, self.train, self.k, self.names)["pm_miou"]
                mosaic_only = base == "mosaic" or (base == "pisto" and r == 0)
                n_mosaic = a.batch if mosaic_only else round(a.mosaic_mix * a.batch) if key & {"mosaic", "pmosaic"} else 0
                streams = []
                if n_mosaic < a.batch:
                    targets = pm if "set" not in key else [(rgb, with_label_sets(m, xy, size, lab))
                                                           for (rgb, m), xy, lab in zip(pm, corners, labels)]
                    streams.append(patch_crops(targets, corners, labels, size, a.crop, a.batch - n_mosaic, a.seed + r)
                                   if "bal2" in key else crops(targets, a.crop, a.batch - n_mosaic, a.seed + r))
                if n_mosaic:
                    sources = self.mosaics(size, pm if "pmosaic" in key else None, a.seed + r)
                    streams.append(mosaic_batches(sources, n_mosaic))
                n = steps // rounds + (steps % rounds if r == rounds - 1 else 0)
                loss = set_loss(a.set_weight) if "set" in key else weighted_loss(pm, self.k) if "wce" in key else full_loss
                fit(model, concat_batches(*streams), loss, n, self.norm, lr=a.lr,
                    desc=f"{base}@{size} stage 2 round {r + 1}")
            return model, pm_sc, cost + _cost(steps, a.batch, a.crop, time.perf_counter() - start)
        return self._once(("segmenter", base, size, key), make)

    def predict(self, method: str, rgb: np.ndarray) -> np.ndarray:
        """``(H, W)`` class indices of a held-out region."""
        base, size, opts = parse(method)
        if "stage1" in opts:
            model, _ = self.classifier(size, "bal" in opts)
            corners, labels = cam.patch_labels(model, rgb, size, self.norm, self.args.gate)
            return cam.region_pseudo_mask(model, rgb, corners, size, labels.astype(np.uint8), self.norm,
                                          cam.CamOptions(refine_radius=self.args.gf_radius if "gf" in opts else 0,
                                                         refine_eps=self.args.gf_eps,
                                                         prototypes=self.args.prototypes if "ipp" in opts else 0))
        model, _, _ = self.segmenter(base, size, opts)
        probs = predict_probs(model, rgb, self.norm, tta="notta" not in opts)
        if "lgate" in opts:
            classifier = self.classifier(size, "bal" in opts)[0]
            with torch.no_grad():
                local = classifier.eval().local_presence(to_input(rgb[None], *self.norm), self.args.gate_window)[0]
            probs = probs * local ** self.args.gate_power
        if "la" in opts:
            probs = probs / self.prior(size, opts)[:, None, None] ** self.args.la_tau
        if "gate" in opts:
            return cam.gated_argmax(probs, cam.patch_gates(self.classifier(size, "bal" in opts)[0], rgb, size, self.norm, self.args.gate))
        return probs.argmax(0).numpy().astype(np.uint8)

    def prior(self, size: int, opts: frozenset[str]) -> torch.Tensor:
        """``(K,)`` share of each class among the pseudo-masks' labelled pixels (what ``la`` divides by)."""

        def make() -> tuple:
            pm, _, _ = self.pseudo(size, opts)
            counts = sum(np.bincount(m[m < self.k].ravel(), minlength=self.k) for _, m in pm)
            return (torch.tensor(counts / counts.sum(), dtype=torch.float32).clamp_min(1e-6),)
        return self._once(("prior", size, opts & set(STAGE2_OPTS)), make)[0]

    def cost(self, method: str) -> tuple[dict, Cost]:
        base, size, opts = parse(method)
        if "stage1" in opts:
            return {}, self.classifier(size, "bal" in opts)[1]
        _, pm_sc, cost = self.segmenter(base, size, opts)
        if opts & {"gate", "lgate"} and base in ("mosaic", "pisto"):
            cost = cost + self.classifier(size, "bal" in opts)[1]
        return pm_sc, cost


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    encoders.shipped_state_dict("tf_efficientnet_lite0")  # built once here: its random init must not shift the seeds
    scheme = load_scheme(args.scheme)
    k, names = scheme.num_classes, scheme.names
    t0 = time.perf_counter()
    train = make_regions(args.train_regions, args.region_size, args.data_seed, scheme)
    test = make_regions(args.test_regions, args.region_size, args.data_seed + 10_000, scheme)
    data_s = time.perf_counter() - t0
    layouts = str(MASKS) if MASKS.is_dir() else "random (no real masks found)"
    print(f"layouts: {layouts}", flush=True)
    patchlabels = PatchLabelRun(args, train, scheme)
    results: dict[str, dict] = {}
    for method in args.methods:
        base, patch, opts = parse(method)
        extra: dict = {}
        if base in ("cam", "mosaic", "pisto"):
            if patch is None:
                raise SystemExit(f"method {method!r}: give the patch size, e.g. {base}@256")
            extra, cost = patchlabels.cost(method)
            predict = functools.partial(patchlabels.predict, method)
        else:
            torch.manual_seed(args.seed)
            side = args.crop
            if base in MIL:
                cfg = ModelConfig(arch="fcn", weights=args.weights)
                side = patch or args.crop
                regions, align, loss = weak_targets(train, side, k), side, mil_loss(base, k)
            elif base.startswith("grid-"):
                size = base.split("-")[1]
                cell = args.crop if size == "crop" else int(size)
                cfg = ModelConfig(arch="deeplabv3plus", weights=args.weights)
                if base.endswith("-set"):
                    regions, align, loss = weak_targets(train, cell, k), cell, grid_loss(cell, args.presence)
                else:
                    regions, align, loss = pseudo_targets(train, cell, k), 1, full_loss
                    extra = pm_scores(regions, train, k, names)
            elif base == "full":
                cfg = ModelConfig(arch="deeplabv3plus", weights=args.weights)
                regions, align, loss = train, 1, full_loss
            else:
                raise SystemExit(f"unknown method {method!r} (known: {', '.join(METHODS)}, <mil>@P, cam@P, mosaic@P)")
            model = build_model(cfg, k)
            norm = normalization(cfg)
            start = time.perf_counter()
            fit(model, crops(regions, side, args.batch, args.seed, align), loss, args.steps, norm, lr=args.lr,
                desc=method)
            cost = _cost(args.steps, args.batch, side, time.perf_counter() - start)

            def predict(rgb: np.ndarray, model=model, norm=norm) -> np.ndarray:
                return predict_probs(model, rgb, norm).argmax(0).numpy()
        cm = np.zeros((k, k + 1), np.int64)  # last column: no prediction (see metrics.confusion_matrix)
        for rgb, lab in test:
            cm += confusion_matrix(predict(rgb), lab, k)
        sc = scores(cm, names)
        results[method] = {"miou": sc["miou"], "iou": {n: sc["per_class"][n]["iou"] for n in names},
                           "train_s": cost["seconds"], "samples": cost["samples"], "mpx": cost["mpx"],
                           "confusion": cm.tolist(), **extra}
        pm = f"  pseudo-masks {extra['pm_miou']:.3f}" if "pm_miou" in extra else ""
        pm += f"  round 2 {extra['pm2']:.3f}" if "pm2" in extra else ""
        print(f"{method:16s} mIoU {sc['miou']:.3f}{pm}  ({cost['seconds']:.0f} s)", flush=True)
    return {"scheme": scheme.name, "classes": names, "seed": args.seed, "data_seed": args.data_seed,
            "steps": args.steps, "batch": args.batch, "cls_steps": args.cls_steps, "cls_stride": args.cls_stride,
            "crop": args.crop, "budget_samples": args.steps * args.batch, "train_regions": args.train_regions,
            "test_regions": args.test_regions, "region_size": args.region_size, "weights": args.weights,
            "gate": args.gate, "gate_window": args.gate_window, "gate_power": args.gate_power,
            "presence_power": args.presence_power, "local_presence_power": args.local_presence_power,
            "la_tau": args.la_tau, "set_weight": args.set_weight, "tile": args.tile, "mosaic_mix": args.mosaic_mix, "gf_radius": args.gf_radius,
            "gf_eps": args.gf_eps, "layouts": layouts, "data_s": data_s, "methods": results}


def table(res: dict) -> str:
    names = res["classes"]
    full = res["methods"].get("full", {}).get("miou")
    head = "| method | " + " | ".join(names) + " | mIoU | % of full | pseudo-mask mIoU | samples | Mpx | train s |"
    lines = [head, "|" + "---|" * (len(names) + 7)]
    for m, r in res["methods"].items():
        rel = f"{100 * r['miou'] / full:.0f}%" if full else "-"
        cells = " | ".join(f"{r['iou'][n]:.3f}" for n in names)
        pm = " -> ".join(f"{r[key]:.3f}" for key in ("pm_miou", "pm2") if key in r) or "-"
        lines.append(f"| {m} | {cells} | {r['miou']:.3f} | {rel} | {pm} | {r['samples']} | {r['mpx']:.0f} | "
                     f"{r['train_s']:.0f} |")
    lines.append("")
    lines.append(f"seed {res['seed']} (data seed {res['data_seed']}); budget {res['steps']} steps x batch "
                 f"{res['batch']} = {res['budget_samples']} "
                 f"samples of {res['crop']} px per method (MIL@P: of P px); two-stage methods add "
                 f"{res['cls_steps']} classifier steps x batch {res['batch']} of P px (counted in samples, Mpx, "
                 f"train s); {res['train_regions']} training / {res['test_regions']} "
                 f"held-out regions of {res['region_size']} px; layouts {res['layouts']}; scheme {res['scheme']}; "
                 f"encoder weights {res['weights']}; +lgate: {res['gate_window']} px, power {res['gate_power']:g}; +pw: "
                 f"powers {res['presence_power']:g} (patch) and {res['local_presence_power']:g} (64 px).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, crops, dropout)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated regions")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--scheme", default="bcss5")
    p.add_argument("--train-regions", type=int, default=8)
    p.add_argument("--test-regions", type=int, default=8)
    p.add_argument("--region-size", type=int, default=768)
    p.add_argument("--presence", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weights", default="imagenet", choices=["imagenet", "none"])
    p.add_argument("--cls-steps", type=int, default=150, help="stage-1 classifier steps (patch-label methods)")
    p.add_argument("--cls-stride", type=int, default=16, choices=[8, 16, 32], help="classifier output stride")
    p.add_argument("--gate", type=float, default=0.5, help="class gate threshold (+gate, +stage1)")
    p.add_argument("--gate-window", type=int, default=CamConfig().local_gate,
                   help="window of the local class presence (+lgate; default: cam.local_gate)")
    p.add_argument("--gate-power", type=float, default=CamConfig().local_gate_power,
                   help="power of the local class presence (+lgate; default: cam.local_gate_power)")
    p.add_argument("--tile", type=int, default=32, help="mosaic tile side (px)")
    p.add_argument("--mosaic-mix", type=float, default=0.5, help="share of mosaics in stage-2 batches (+mosaic)")
    p.add_argument("--min-score", type=float, default=0.2, help="CAM score under which pixels are ignored (+min)")
    p.add_argument("--context", type=int, default=64, help="px of context around each patch for the CAMs (+ctx)")
    p.add_argument("--set-weight", type=float, default=1.0, help="weight of the label-set loss (+set)")
    p.add_argument("--la-tau", type=float, default=0.5, help="power of the class shares the probabilities are divided by (+la)")
    p.add_argument("--margin", type=float, default=0.1, help="CAM margin under which pixels are ignored (+margin)")
    p.add_argument("--prototypes", type=int, default=3, help="iterations of image-specific prototypes (+ipp)")
    p.add_argument("--presence-power", type=float, default=2.0,
                   help="power of the patch presence weighing the maps (+pw; as cam.presence_power)")
    p.add_argument("--local-presence-power", type=float, default=0.5,
                   help="power of the presence in 64 px weighing the scores (+pw; as cam.local_presence_power)")
    p.add_argument("--gf-radius", type=int, default=16, help="guided filter radius (+gf)")
    p.add_argument("--gf-eps", type=float, default=1e-3, help="guided filter eps (+gf)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = run(args)
    text = table(res)
    print(text)
    io.write_text(args.out / "quality.md", text + "\n")
    io.write_json(args.out / "quality.json", res)


if __name__ == "__main__":
    main()
