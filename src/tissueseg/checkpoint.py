"""Checkpoint format and :func:`load_predictor`: everything inference needs, in one file.

A checkpoint is a ``torch.save`` dict: the model's state dict, the training config, the
class scheme, the µm/px and patch size the model was trained at, and (for ``last.pt``) the
training state needed to resume. It loads with ``weights_only=True`` and rebuilds the
model with ``weights="none"``, so it needs neither the network nor the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import io
from .models import ModelConfig, build_model, normalization
from .schemes import ClassScheme, scheme_from_dict

FORMAT = "tissueseg-checkpoint"
VERSION = 1


@dataclass
class Predictor:
    """A trained model ready for inference."""

    model: torch.nn.Module
    scheme: ClassScheme
    mpp: float
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: dict

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` or ``(N, 3, H, W)`` -> normalised float ``(N, 3, H, W)``,
        channels_last, on the model's device."""
        if rgb.ndim != 4 or 3 not in (rgb.shape[1], rgb.shape[-1]):
            raise ValueError(f"expected a (N, H, W, 3) or (N, 3, H, W) batch, got shape {tuple(rgb.shape)}")
        if rgb.shape[-1] == 3 and rgb.shape[1] != 3:
            rgb = rgb.permute(0, 3, 1, 2)
        device = next(self.model.parameters()).device
        x = rgb.to(device=device, dtype=torch.float32, non_blocking=True).div_(255.0)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


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
    mpp: float,
    patch_size: int,
    state: dict | None = None,
) -> None:
    """Write a checkpoint atomically (``state``: optional training state for resuming)."""
    model = getattr(model, "module", model)  # DDP
    data: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config, "scheme": scheme.to_dict(), "mpp": float(mpp), "patch_size": int(patch_size),
        "state": state,
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
    return data


def load_predictor(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Rebuild the trained model (eval mode, channels_last, on ``device``) from a checkpoint."""
    data = read_checkpoint(path)
    scheme = scheme_from_dict(data["scheme"], source=str(path))
    model_cfg, num_classes, bg = model_args(data["config"], scheme)
    model = build_model(model_cfg.model_copy(update={"weights": "none"}), num_classes, background_index=bg)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise io.InputError(path, f"weights do not fit the model ({str(exc).splitlines()[0]})") from None
    model = model.to(device=device, memory_format=torch.channels_last).eval()
    mean, std = normalization(model_cfg)
    return Predictor(model, scheme, data["mpp"], data["patch_size"], tuple(mean), tuple(std), data["config"])
