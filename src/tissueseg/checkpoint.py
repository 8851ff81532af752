"""Checkpoint format and :func:`load_predictor`: everything inference needs, in one file.

A checkpoint is a ``torch.save`` dict: the model's state dict, the training config, the
class scheme, the :class:`Preprocessing` the model was trained with (µm/px, patch size,
pixel mean/std, the fitted stain normaliser), what prediction adds on top of the model
(:class:`Inference`: flip test-time augmentation, a class gate) and, for ``last.pt``, the
training state needed to resume. It loads with ``weights_only=True`` and rebuilds the
model with ``weights="none"``, so it needs neither the network nor the training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io
from .models import ModelConfig, build_model, input_multiple
from .schemes import ClassScheme, scheme_from_dict

FORMAT = "tissueseg-checkpoint"
VERSION = 2


@dataclass(frozen=True)
class Preprocessing:
    """What is done to pixels before the model sees them, exactly as in training.

    ``mpp``: the µm/px the model was trained at (inference resamples to it); ``patch_size``:
    the training window (the default inference window); ``mean``/``std``: per-channel
    normalisation of [0, 1] pixels; ``stain``: the fitted stain normaliser's state
    (:meth:`tissueseg.stain.Normalizer.state`) or None.
    """

    mpp: float
    patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stain: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"mpp": float(self.mpp), "patch_size": int(self.patch_size), "mean": list(self.mean),
                "std": list(self.std), "stain": self.stain}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(float(data["mpp"]), int(data["patch_size"]), tuple(data["mean"]), tuple(data["std"]),
                   data.get("stain"))


@dataclass(frozen=True)
class Inference:
    """What prediction adds to the model's logits: flip test-time augmentation (the mean of the
    softmax over the identity and the horizontal and vertical flips) and a class gate (a
    patch classifier's state dict and config). With ``gate_window`` None a class whose
    probability in a window is below ``gate_threshold`` is not predicted there; with
    ``gate_window`` px every class's probability is multiplied by the classifier's that the
    class is in the ``gate_window`` px around the pixel, raised to ``gate_power`` (the *local
    gate*, :meth:`~tissueseg.models.classifier.PatchClassifier.local_presence`; a power above 1
    trusts the classifier more)."""

    flip_tta: bool = False
    gate: dict[str, Any] | None = field(default=None, repr=False)
    gate_threshold: float = 0.5
    gate_window: int | None = None
    gate_power: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InferenceChanges:
    """What prediction may change of a checkpoint's :class:`Inference` (None: as the checkpoint says).

    ``gate_window``: the local gate's window in px (a window gate, ``cam.gate``, becomes a
    local gate, at power 1 unless ``gate_power`` says); ``gate_power``: the local gate's
    power, 0 for no gate. Both need a checkpoint with a class gate.
    """

    flip_tta: bool | None = None
    gate_window: int | None = None
    gate_power: float | None = None

    def __post_init__(self) -> None:
        if self.gate_window is not None and self.gate_window < 1:
            raise ValueError(f"gate window {self.gate_window}: must be at least 1 px")
        if self.gate_power is not None and self.gate_power < 0:
            raise ValueError(f"gate power {self.gate_power}: must be 0 (no gate) or more")

    def apply(self, inference: Inference) -> Inference:
        """``inference`` with these changes; ``ValueError`` if it has no gate they could change."""
        flip_tta = inference.flip_tta if self.flip_tta is None else self.flip_tta
        if self.gate_window is None and self.gate_power is None:
            return replace(inference, flip_tta=flip_tta)
        if inference.gate is None:
            raise ValueError("the model has no class gate to change (it was trained without cam.local_gate)")
        if self.gate_power == 0:
            return Inference(flip_tta=flip_tta)
        window = self.gate_window or inference.gate_window
        if window is None:
            raise ValueError("the model's class gate is a window gate (cam.gate): "
                             "a gate power needs a local gate window too")
        power = inference.gate_power if self.gate_power is None else self.gate_power
        return replace(inference, flip_tta=flip_tta, gate_window=window, gate_power=power)


class Predictor:
    """A trained model ready for inference: :meth:`preprocess` then :meth:`probabilities`."""

    def __init__(self, model: torch.nn.Module, scheme: ClassScheme, preprocessing: Preprocessing, config: dict,
                 inference: Inference | None = None, gate: torch.nn.Module | None = None):
        from .stain import normalizer_from_state

        self.model, self.scheme, self.preprocessing, self.config = model, scheme, preprocessing, config
        self.inference = inference or Inference()
        self.gate = gate
        self._stain = normalizer_from_state(preprocessing.stain) if preprocessing.stain else None

    @property
    def mpp(self) -> float:
        return self.preprocessing.mpp

    @property
    def patch_size(self) -> int:
        return self.preprocessing.patch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_window(self, size: int) -> None:
        """``ValueError`` unless the model takes windows of ``size`` px (its stride divides it)."""
        multiple = input_multiple(ModelConfig.model_validate(self.config.get("model") or {}))
        if size % multiple:
            raise ValueError(f"window {size} is not a multiple of {multiple}, which this model needs "
                             f"(e.g. --window {max(multiple, size // multiple * multiple)})")

    def fingerprint(self) -> str:
        """A hash of everything that decides what this predictor outputs: weights, scheme,
        preprocessing, flip TTA and the class gate (see :mod:`tissueseg.fingerprint`)."""
        from .fingerprint import key, weights_hash

        inf = self.inference
        gate = weights_hash(self.gate) if self.gate is not None else None
        power = [inf.gate_power] if gate and inf.gate_window is not None and inf.gate_power != 1 else []
        return key(weights_hash(self.model), self.scheme.to_dict(), self.preprocessing.to_dict(),
                   inf.flip_tta, gate, inf.gate_threshold if gate else None,
                   inf.gate_window if gate else None, *power)  # power 1 (as before it existed): the same key

    def to(self, device: str | torch.device) -> Predictor:
        """Move the model (and the gate) to ``device``; returns self."""
        self.model.to(device)
        if self.gate is not None:
            self.gate.to(device)
        return self

    def preprocess(self, rgb: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` or ``(N, 3, H, W)`` -> the model's input: stain-normalised as in
        training, scaled to [0, 1], normalised by mean/std, float ``(N, 3, H, W)`` channels_last
        on the model's device."""
        rgb = torch.as_tensor(rgb)
        if rgb.ndim != 4 or 3 not in (rgb.shape[1], rgb.shape[-1]):
            raise ValueError(f"expected a (N, H, W, 3) or (N, 3, H, W) batch, got shape {tuple(rgb.shape)}")
        if rgb.shape[1] == 3 and rgb.shape[-1] != 3:
            rgb = rgb.permute(0, 2, 3, 1)
        if self._stain is not None:
            rgb = torch.from_numpy(np.stack([self._stain.transform(np.ascontiguousarray(a))
                                             for a in rgb.cpu().numpy()]))
        x = rgb.permute(0, 3, 1, 2).to(device=self.device, dtype=torch.float32, non_blocking=True).div_(255.0)
        mean = torch.tensor(self.preprocessing.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=self.device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, K, H, W)`` of a preprocessed batch, with the checkpoint's flip
        test-time augmentation and class gate."""
        probs = torch.softmax(self.model(x).float(), dim=1)
        if self.inference.flip_tta:
            for dims in ((-1,), (-2,)):
                probs += torch.softmax(self.model(x.flip(dims)).float(), dim=1).flip(dims)
            probs /= 3
        if self.gate is not None:
            probs = probs * self._gate_weights(x)
            probs /= probs.sum(1, keepdim=True).clamp_min(1e-12)
        return probs

    def _gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """What the class gate multiplies the probabilities by: the local gate's ``(N, K, H, W)``
        probabilities to ``gate_power``, or the window gate's ``(N, K, 1, 1)`` 0/1 (a window it calls
        empty keeps every class)."""
        if self.inference.gate_window is not None:
            return self.gate.local_presence(x, self.inference.gate_window).float() ** self.inference.gate_power
        present = torch.sigmoid(self.gate(x).float()) >= self.inference.gate_threshold  # (N, K)
        present |= ~present.any(1, keepdim=True)
        return present[:, :, None, None].float()


def model_args(config: dict, scheme: ClassScheme) -> tuple[ModelConfig, int, int | None]:
    """``(model config, number of classes, background index)`` of a training config dict."""
    background = (config.get("loss") or {}).get("background")
    if background is not None and background not in scheme.names:
        raise ValueError(f"loss.background {background!r} is not a class of scheme {scheme.name!r} ({scheme.names})")
    model_cfg = ModelConfig.model_validate(config.get("model") or {})
    bg = scheme.names.index(background) if background is not None and model_cfg.arch == "fcn" else None
    return model_cfg, scheme.num_classes, bg


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    config: dict,
    scheme: ClassScheme,
    preprocessing: Preprocessing,
    inference: Inference | None = None,
    state: dict | None = None,
) -> None:
    """Write a checkpoint atomically (``state``: optional training state for resuming)."""
    model = getattr(model, "module", model)  # DDP
    data: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config, "scheme": scheme.to_dict(), "preprocessing": preprocessing.to_dict(),
        "inference": (inference or Inference()).to_dict(), "state": state,
    }
    with io.atomic_path(path) as tmp:
        torch.save(data, tmp)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; :class:`~tissueseg.io.InputError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise io.InputError(path, "no such checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise io.InputError(path, f"cannot read checkpoint ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise io.InputError(path, "not a tissueseg checkpoint")
    if data.get("version") != VERSION:
        raise io.InputError(path, f"checkpoint format version {data.get('version')}, this tissueseg reads "
                                  f"{VERSION}: retrain, or use the tissueseg version that wrote it")
    return data


def checkpoint_inference(path: str | Path, data: dict, changes: InferenceChanges | None = None) -> Inference:
    """The :class:`Inference` of checkpoint ``data`` read from ``path``, with ``changes``
    (:class:`~tissueseg.io.InputError` naming ``path`` when it cannot take them)."""
    inference = Inference(**data["inference"])
    try:
        return inference if changes is None else changes.apply(inference)
    except ValueError as exc:
        raise io.InputError(path, str(exc)) from None


def _rebuild(path: Path, state: dict, config: dict, scheme: ClassScheme) -> torch.nn.Module:
    model_cfg, num_classes, bg = model_args(config, scheme)
    model = build_model(model_cfg.model_copy(update={"weights": "none"}), num_classes, background_index=bg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise io.InputError(path, f"weights do not fit the model ({str(exc).splitlines()[0]})") from None
    return model.eval()


def load_predictor(path: str | Path, device: str | torch.device = "cpu",
                   changes: InferenceChanges | None = None) -> Predictor:
    """Rebuild the trained model (eval mode, channels_last, on ``device``) from a checkpoint,
    with ``changes`` to what prediction adds (:class:`InferenceChanges`)."""
    path = Path(path)
    data = read_checkpoint(path)
    scheme = scheme_from_dict(data["scheme"], source=str(path))
    inference = checkpoint_inference(path, data, changes)
    model = _rebuild(path, data["model"], data["config"], scheme)
    gate = None
    if inference.gate is not None:
        gate = _rebuild(path, inference.gate["model"], inference.gate["config"], scheme)
    predictor = Predictor(model.to(memory_format=torch.channels_last), scheme,
                          Preprocessing.from_dict(data["preprocessing"]), data["config"], inference, gate)
    return predictor.to(device)
