"""Pseudo-masks from the class maps of a multi-label patch classifier (labels of whole patches).

Stage 1 (:mod:`tissueseg.models.classifier`) learns, from the set of classes of every
patch, per-pixel class scores at several encoder depths. Here those maps become a pixel
label map per patch, which trains an ordinary segmenter with the cross-entropy (stage 2):

1. :func:`normalise_per_class`: each class map rectified and divided by its own maximum
   over the patch (so a weakly scored class is not drowned by a strong one);
2. :func:`fuse_cams`: the depths upsampled to the patch and averaged with ``weights``
   (shallow to deep; fine boundaries from the shallow maps, reliable classes from the deep);
3. optionally :func:`~tissueseg.weak.prototypes.prototype_scores`: each mixed patch's maps
   redrawn by the similarity of its pixels' features to its own class prototypes (SIPE);
   optionally :func:`refine`: a guided filter (He et al. 2013) with the RGB patch as guide
   moves the score boundaries onto colour edges;
4. :func:`pseudo_mask`: the most likely class *among the patch's labels* only
   (:func:`restrict_to_labels`: an absent class never appears); a single-label patch is
   labelled whole, an unlabelled one ignored; pixels passed as ``ignore`` (e.g.
   :func:`white_pixels`, glass, when the scheme has no background class) are ignored.

:func:`patch_cams` (and :func:`patch_cams_and_features`, with the prototypes' features from the
same encoder passes) and :func:`patch_pseudo_masks` run a classifier over batches of patches
(with flip or dihedral test-time augmentation), :class:`CamPseudoMasks` over every labelled patch of a
manifest or folder table, as a ``label_source`` of :class:`~tissueseg.data.PatchDataset`.
:func:`class_gate`, :func:`patch_labels` and :func:`patch_gates` give the classes a patch holds
according to the classifier (for prediction, when no labels are known); with
:func:`region_pseudo_mask` they make the classifier a segmenter on its own (stage 1 only).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import RegionCache, crop, label_columns
from ..models.classifier import gap_logits, local_mean
from ..schemes import IGNORE, ClassScheme
from .prototypes import crop_margin, feature_stack, prototype_scores
from .source import PseudoMaskSource
from .tta import FLIPS, TTAS, Normalize, Tta, model_device, summed, to_input

DEFAULT_WEIGHTS: tuple[float, ...] | None = None
"""Fusion weights of the class maps, shallow to deep; None: equal. On the bench's 256 px patches
(EfficientNet-Lite0 levels 2, 3, 4) equal weights gave pseudo-masks of 0.792 mIoU, TPRO's
0.3/0.3/0.4 0.791, MLPS's 0.2/0.2/0.6 0.778, the deepest maps alone 0.719."""


def _tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    return a.float() if isinstance(a, torch.Tensor) else torch.tensor(np.asarray(a), dtype=torch.float32)


def normalise_per_class(cams: np.ndarray | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(..., K, H, W)`` maps rectified and divided by each class's maximum over ``(H, W)``: in ``[0, 1]``.

    A class whose map is nowhere positive is all zero.
    """
    cams = _tensor(cams).clamp(min=0)
    top = cams.amax(dim=(-2, -1), keepdim=True)
    return cams / top.clamp(min=eps)


def fuse_cams(maps: Sequence[np.ndarray | torch.Tensor], weights: Sequence[float] | None,
              size: tuple[int, int]) -> torch.Tensor:
    """The weighted mean of class maps of several depths at ``size``: ``(..., K, H, W)`` float32.

    ``maps``: ``D`` arrays ``(..., K, h_d, w_d)`` (e.g. from :func:`normalise_per_class`),
    each resized bilinearly to ``size = (H, W)``. ``weights`` (``D``, default equal) are
    normalised to sum to 1.
    """
    if not maps:
        raise ValueError("fuse_cams: no maps")
    weights = [1.0] * len(maps) if weights is None else [float(w) for w in weights]
    if len(weights) != len(maps) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"fuse_cams: {len(maps)} maps need as many non-negative weights, got {weights}")
    out = None
    for m, w in zip(maps, weights):
        m = _tensor(m)
        lead = m.shape[:-2]
        up = F.interpolate(m.reshape(1, -1, *m.shape[-2:]), size=tuple(size), mode="bilinear", align_corners=False)
        term = up.reshape(*lead, *size) * (w / sum(weights))
        out = term if out is None else out + term
    return out


def restrict_to_labels(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(K, H, W)`` scores with the classes absent from the multi-hot ``labels`` ``(K,)`` set to 0."""
    scores = _tensor(scores)
    present = _tensor(labels).reshape(-1) > 0
    if present.numel() != scores.shape[-3]:
        raise ValueError(f"{present.numel()} labels for {scores.shape[-3]} class maps")
    return scores * present.view(-1, 1, 1).to(scores)


def pseudo_mask(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                ignore: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` uint8: the highest-scoring class among the patch's labels at every pixel.

    A patch with one label is that class everywhere, a patch with none is :data:`IGNORE`;
    pixels where ``ignore`` ``(H, W)`` is true are :data:`IGNORE`.
    """
    scores = _tensor(scores)
    present = (_tensor(labels).reshape(-1) > 0).numpy()
    if present.size != scores.shape[0]:
        raise ValueError(f"{present.size} labels for {scores.shape[0]} class maps")
    h, w = scores.shape[-2:]
    if not present.any():
        return np.full((h, w), IGNORE, np.uint8)
    classes = np.flatnonzero(present)
    if classes.size == 1:
        out = np.full((h, w), classes[0], np.uint8)
    else:
        out = classes[scores[torch.from_numpy(classes)].argmax(dim=0).numpy()].astype(np.uint8)
    if ignore is not None:
        out[np.asarray(ignore, bool)] = IGNORE
    return out


def _box(a: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(a, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def refine(rgb: np.ndarray, scores: np.ndarray | torch.Tensor, radius: int = 8, eps: float = 1e-3) -> torch.Tensor:
    """``(K, H, W)`` scores guided-filtered (He, Sun & Tang 2013, colour guide) by the ``(H, W, 3)`` image.

    Each output is locally an affine function of the image's colour over ``(2 radius + 1)``
    windows, so score edges follow colour edges; ``eps`` (guide in [0, 1]) sets how large a
    colour step counts as an edge.
    """
    guide = np.asarray(rgb, np.float32) / 255.0
    p = _tensor(scores).numpy().astype(np.float32)
    if guide.shape[:2] != p.shape[-2:]:
        raise ValueError(f"image {guide.shape[:2]} and scores {p.shape[-2:]} differ in size")
    mean_i = _box(guide, radius)  # (H, W, 3)
    cov = np.empty(guide.shape[:2] + (3, 3), np.float32)
    for a in range(3):
        for b in range(a, 3):
            cov[..., a, b] = cov[..., b, a] = _box(guide[..., a] * guide[..., b], radius) - mean_i[..., a] * mean_i[..., b]
    inv = np.linalg.inv(cov + eps * np.eye(3, dtype=np.float32))
    out = np.empty_like(p)
    for k in range(p.shape[0]):
        mean_p = _box(p[k], radius)
        cov_ip = _box(guide * p[k][..., None], radius) - mean_i * mean_p[..., None]
        a = np.einsum("hwij,hwj->hwi", inv, cov_ip)
        b = mean_p - (a * mean_i).sum(-1)
        out[k] = (_box(a, radius) * guide).sum(-1) + _box(b, radius)
    return torch.from_numpy(out)


def white_pixels(rgb: np.ndarray, threshold: int = 200, min_size: int = 64) -> np.ndarray:
    """``(H, W)`` bool: glass/background, grey level above ``threshold``, blobs under ``min_size`` px dropped."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2GRAY)
    white = (grey > threshold).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(white, connectivity=4)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False
    return keep[comp]


def _upsampled(maps: Sequence[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    return [F.interpolate(m.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False) for m in maps]


def _fused(depths: Sequence[torch.Tensor], weights: Sequence[float] | None, margin: int) -> torch.Tensor:
    """Every depth's maps (at the input's size) cropped by ``margin``, normalised per class, fused, normalised."""
    h, w = depths[0].shape[-2] - 2 * margin, depths[0].shape[-1] - 2 * margin
    depths = [d[..., margin : margin + h, margin : margin + w] for d in depths]
    return normalise_per_class(fuse_cams([normalise_per_class(d) for d in depths], weights, (h, w))).cpu()


@torch.no_grad()
def patch_cams(model: torch.nn.Module, images: np.ndarray, normalize: Normalize,
               weights: Sequence[float] | None = DEFAULT_WEIGHTS, tta: Tta = "flip", margin: int = 0) -> torch.Tensor:
    """``(N, K, H, W)`` fused class activation maps of uint8 patches, each class in [0, 1].

    ``images`` ``(N, H + 2 margin, W + 2 margin, 3)``: the patches with ``margin`` px of
    context around them (seen by the classifier, cut off the maps). Every depth of
    ``model.forward_maps`` is upsampled to the input and averaged over the test-time
    augmentations ``tta`` (:data:`TTAS`), cropped to the patch, normalised per class and
    patch, fused with ``weights``, and normalised again.
    """
    model.eval()
    x = to_input(images, normalize).to(model_device(model))
    return _fused(summed(lambda xt: _upsampled(model.forward_maps(xt), xt), x, tta), weights, margin)


@torch.no_grad()
def patch_cams_and_features(model: torch.nn.Module, images: np.ndarray, normalize: Normalize,
                            weights: Sequence[float] | None = DEFAULT_WEIGHTS, tta: Tta = "flip",
                            margin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`patch_cams` and the ``(N, C, h, w)`` features of the prototypes from the same encoder passes.

    The features are :func:`~.prototypes.feature_stack` of ``model.forward_features``, averaged
    over ``tta`` and cropped by ``margin`` (:func:`~.prototypes.crop_margin`); the maps are
    ``model.class_maps`` of the same features.
    """
    model.eval()
    x = to_input(images, normalize).to(model_device(model))

    def maps_and_features(xt: torch.Tensor) -> list[torch.Tensor]:
        levels = model.forward_features(xt)
        return _upsampled(model.class_maps(levels), xt) + [feature_stack(levels)]

    *depths, feats = summed(maps_and_features, x, tta)
    return _fused(depths, weights, margin), crop_margin(feats / len(TTAS[tta]), margin, x.shape[-1]).cpu()


@torch.no_grad()
def class_presence(model: torch.nn.Module, images: np.ndarray, normalize: Normalize, window: int,
                   margin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's probability of each class in each patch ``(N, K)`` (the sigmoid of
    ``PatchClassifier.forward``) and in the ``window`` px around each of its pixels ``(N, K, H, W)``
    (:meth:`~tissueseg.models.classifier.PatchClassifier.local_presence`), from one pass.

    ``images`` ``(N, H + 2 margin, W + 2 margin, 3)``: the patches with ``margin`` px of context
    (seen by the classifier, so in the patch probabilities too; cut off the local ones).
    """
    model.eval()
    x = to_input(images, normalize).to(model_device(model))
    maps = model.forward_maps(x)
    h, w = x.shape[-2] - 2 * margin, x.shape[-1] - 2 * margin
    local = torch.sigmoid(local_mean(maps, window, (x.shape[-2], x.shape[-1])))
    return torch.sigmoid(gap_logits(maps).mean(dim=1)).cpu(), local[..., margin : margin + h, margin : margin + w].cpu()


@dataclass(frozen=True)
class CamOptions:
    """How class maps become pseudo-masks.

    ``weights``: fusion weights of the depths (shallow to deep); ``tta``: test-time
    augmentation of the maps (:data:`TTAS`); ``refine_radius`` > 0: guided filter of that
    radius (px) and ``refine_eps``; ``white``: grey level above which pixels are ignored as
    glass (None: none ignored, e.g. when white fat is a class); ``min_score``: pixels of a
    mixed patch where no label's score reaches it are ignored (glass, uncertain boundaries);
    ``margin``: pixels of a mixed patch whose best label beats the second by less are
    ignored (uncertain; stage 2 fills them in); ``context``: px of the region around each patch the classifier sees
    (:func:`region_pseudo_mask`); ``prototypes`` > 0: the maps of a mixed patch redrawn by
    :func:`~tissueseg.weak.prototypes.prototype_scores` with that many iterations;
    ``presence_power``: each class map of a mixed patch weighed, before the prototypes, by the
    classifier's probability of the class in the patch to this power; ``local_presence_power``:
    the scores weighed, after them, by its probability of the class in the ``local_window``
    px around each pixel to this power (:func:`class_presence`; 0: not weighed); ``batch``:
    patches per forward pass.
    """

    weights: tuple[float, ...] | None = DEFAULT_WEIGHTS
    tta: Tta = "flip"
    refine_radius: int = 0
    refine_eps: float = 1e-3
    white: int | None = None
    min_score: float = 0.0
    margin: float = 0.0
    context: int = 0
    prototypes: int = 0
    presence_power: float = 0.0
    local_presence_power: float = 0.0
    local_window: int = 64
    batch: int = 16


def patch_pseudo_masks(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, normalize: Normalize,
                       options: CamOptions = CamOptions(), margin: int = 0) -> np.ndarray:
    """``(N, H, W)`` uint8 pseudo-masks of uint8 patches with multi-hot ``labels`` ``(N, K)``.

    ``images`` ``(N, H + 2 margin, W + 2 margin, 3)``: the patches with ``margin`` px of context.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    h, w = images.shape[1] - 2 * margin, images.shape[2] - 2 * margin
    out = np.empty((len(images), h, w), np.uint8)
    for s in range(0, len(images), options.batch):
        batch = images[s : s + options.batch]
        need = labels[s : s + options.batch].sum(axis=1) > 1  # single-label and unlabelled patches need no maps
        cams = feats = presence = None
        if need.any() and options.prototypes > 0:
            cams, feats = patch_cams_and_features(model, batch[need], normalize, options.weights, options.tta, margin)
        elif need.any():
            cams = patch_cams(model, batch[need], normalize, options.weights, options.tta, margin)
        if need.any() and (options.presence_power > 0 or options.local_presence_power > 0):
            presence = class_presence(model, batch[need], normalize, options.local_window, margin)
        j = 0
        for i, (rgb, lab) in enumerate(zip(batch[:, margin : margin + h, margin : margin + w],
                                           labels[s : s + options.batch])):
            scores = torch.zeros((lab.size, *rgb.shape[:2]))
            ignore = white_pixels(rgb, options.white) if options.white is not None else np.zeros(rgb.shape[:2], bool)
            if need[i]:
                scores = restrict_to_labels(cams[j], lab)
                if presence is not None:
                    scores = scores * presence[0][j, :, None, None] ** options.presence_power
                if feats is not None:
                    scores = prototype_scores(feats[j], scores, lab, options.prototypes)
                if presence is not None:
                    scores = scores * presence[1][j] ** options.local_presence_power
                j += 1
                if options.refine_radius > 0:
                    scores = refine(rgb, scores, options.refine_radius, options.refine_eps)
                ignore |= scores.amax(dim=0).numpy() < options.min_score
                if options.margin > 0:
                    top2 = scores[torch.from_numpy(lab > 0)].topk(2, dim=0).values.numpy()
                    ignore |= top2[0] - top2[1] < options.margin
            out[s + i] = pseudo_mask(scores, lab, ignore)
    return out


def region_pseudo_mask(model: torch.nn.Module, region: np.ndarray, corners: np.ndarray, size: int, labels: np.ndarray,
                       normalize: Normalize, options: CamOptions = CamOptions()) -> np.ndarray:
    """``(H, W)`` uint8 pseudo-mask of a region from its non-overlapping ``size`` px patches.

    ``corners``: ``(N, 2)`` top-left ``(x, y)`` of the labelled patches (parts past the
    region are padded white for the classifier and cut off the mask); ``labels``: their
    ``(N, K)`` multi-hot labels. Pixels under no patch are :data:`IGNORE`. The classifier
    sees each patch with ``options.context`` px of the region around it.
    """
    h, w = region.shape[:2]
    out = np.full((h, w), IGNORE, np.uint8)
    corners = np.asarray(corners, np.int64).reshape(-1, 2)
    c = options.context
    for s in range(0, len(corners), options.batch):
        chunk = corners[s : s + options.batch]
        patches = np.stack([crop(region, x - c, y - c, size + 2 * c, size + 2 * c, fill=255) for x, y in chunk])
        masks = patch_pseudo_masks(model, patches, labels[s : s + len(chunk)], normalize, options, margin=c)
        for (x, y), m in zip(chunk, masks):
            out[max(y, 0) : y + size, max(x, 0) : x + size] = m[max(-y, 0) : h - y, max(-x, 0) : w - x]
    return out


def restrict_region(scores: np.ndarray | torch.Tensor, corners: np.ndarray, size: int, labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8: per non-overlapping ``size`` px patch, the best of its labels in ``scores`` ``(K, H, W)``.

    E.g. a trained segmenter's probabilities over a region turned into a new, label-restricted
    pseudo-mask (a second round, or PistoSeg's masks from a segmenter trained on mosaics).
    Pixels under no patch are :data:`IGNORE`.
    """
    scores = _tensor(scores)
    h, w = scores.shape[-2:]
    out = np.full((h, w), IGNORE, np.uint8)
    for (x, y), lab in zip(np.asarray(corners, np.int64).reshape(-1, 2), labels):
        ys, xs = slice(max(y, 0), min(y + size, h)), slice(max(x, 0), min(x + size, w))
        out[ys, xs] = pseudo_mask(scores[:, ys, xs], lab)
    return out


def class_gate(probs: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """``(..., K)`` bool: the classes with probability at least ``threshold``; the most likely one when none is."""
    p = _tensor(probs).numpy()
    gate = p >= threshold
    top = p == p.max(axis=-1, keepdims=True)
    return np.where(gate.any(axis=-1, keepdims=True), gate, top)


@torch.no_grad()
def patch_labels(model: torch.nn.Module, rgb: np.ndarray, size: int, normalize: Normalize,
                 threshold: float = 0.5, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's labels of the non-overlapping ``size`` px patches of a region (for prediction).

    Returns the ``(N, 2)`` top-left corners ``(x, y)`` (grid from the top left, edges padded
    white) and ``(N, K)`` bool :func:`class_gate` of each patch's probabilities.
    """
    h, w = rgb.shape[:2]
    corners = np.array([(x, y) for y in range(0, h, size) for x in range(0, w, size)], np.int64)
    patches = np.stack([crop(rgb, x, y, size, size, fill=255) for x, y in corners])
    x = to_input(patches, normalize).to(model_device(model))
    flips = FLIPS if tta else FLIPS[:1]
    model.eval()
    probs = (sum(torch.sigmoid(model(x.flip(d) if d else x)) for d in flips) / len(flips)).cpu()
    return corners, class_gate(probs, threshold)


def patch_gates(model: torch.nn.Module, rgb: np.ndarray, size: int, normalize: Normalize,
                threshold: float = 0.5, tta: bool = True) -> np.ndarray:
    """``(K, H, W)`` bool: at every pixel, the classes :func:`patch_labels` finds in its patch."""
    corners, gates = patch_labels(model, rgb, size, normalize, threshold, tta)
    h, w = rgb.shape[:2]
    out = np.zeros((gates.shape[1], h, w), bool)
    for (x0, y0), g in zip(corners, gates):
        out[:, y0 : y0 + size, x0 : x0 + size] = g[:, None, None]
    return out


def gated_argmax(probs: np.ndarray | torch.Tensor, gate: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8: the most likely class of ``probs`` ``(K, H, W)`` among those ``gate`` ``(K, H, W)`` allows."""
    p = _tensor(probs).numpy()
    return np.where(gate, p, -1.0).argmax(axis=0).astype(np.uint8)


def model_digest(model: torch.nn.Module) -> str:
    """SHA-1 of a model's parameters and buffers (names, shapes, values)."""
    sha = hashlib.sha1()
    for name, t in model.state_dict().items():
        sha.update(name.encode())
        sha.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return sha.hexdigest()


def _is_grid(df: pd.DataFrame) -> bool:
    if not {"x", "y", "size"} <= set(df.columns):
        return False
    if df["size"].nunique() != 1:
        raise ValueError("pseudo-masks: manifest mixes patch sizes")
    size = int(df["size"].iloc[0])
    if ((df["x"] % size) != 0).any() or ((df["y"] % size) != 0).any():
        raise ValueError(f"pseudo-masks: patches are not on a {size}-pixel grid (tile with stride = size)")
    if df.duplicated(["image_path", "x", "y"]).any():
        raise ValueError("pseudo-masks: the manifest holds a patch twice")
    return True


class CamPseudoMasks(PseudoMaskSource):
    """The CAM pseudo-masks of every labelled patch of a table, assembled per image, as a ``label_source``.

    ``df``: a tile manifest with ``size == stride`` (the patches tile their regions; each
    region gets one mask, :data:`IGNORE` where no patch lies) or a table of whole images
    (``weaklabels.read_weak_folder``; one mask per image). Only its ``label_<class>``
    columns are read, never a mask. Every mask is computed once (in the constructor) into
    the region cache, keyed by the classifier's weights, ``options`` and the labels; calling
    the object with an image path returns the ``(H, W)`` uint8 memory map. Picklable
    (the classifier is left behind: workers only read the cache).
    """

    def __init__(self, df: pd.DataFrame, scheme: ClassScheme, cache: RegionCache, model: torch.nn.Module,
                 normalize: Normalize, options: CamOptions = CamOptions(), quiet: bool = False):
        cols = label_columns(df, scheme)
        self.cache, self.options, self.normalize = cache, options, normalize
        self.model: torch.nn.Module | None = model
        self.grid = _is_grid(df)
        self._rows = {str(p): rows for p, rows in df.groupby("image_path", sort=False)}
        self.paths = list(self._rows)
        self._cols = cols
        digest = model_digest(model) + repr((astuple(options), [list(v) for v in normalize]))
        self._tags: dict[str, str] = {}
        for path, rows in self._rows.items():
            what = rows[cols].to_numpy(np.uint8).tobytes()
            if self.grid:
                what += rows[["x", "y", "size"]].to_numpy(np.int64).tobytes()
            self._tags[path] = "campm-" + hashlib.sha1(digest.encode() + what).hexdigest()[:16]
        for path in tqdm(self._rows, desc="CAM pseudo-masks", disable=quiet or None, file=sys.stderr, leave=False):
            self(path)

    def _make(self, path: str) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(f"{path}: pseudo-mask not in the cache and no classifier here to make it")
        rows = self._rows[path]
        region = self.cache.image(path)
        labels = rows[self._cols].to_numpy(np.uint8)
        if not self.grid:
            return patch_pseudo_masks(self.model, np.asarray(region)[None], labels[:1], self.normalize,
                                      self.options)[0]
        return region_pseudo_mask(self.model, region, rows[["x", "y"]].to_numpy(np.int64), int(rows["size"].iloc[0]),
                                  labels, self.normalize, self.options)

    def __call__(self, path: str) -> np.ndarray:
        path = str(path)
        return self.cache.get(Path(path), self._tags[path], lambda _: self._make(path))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "model": None}
