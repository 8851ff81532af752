"""What supervises a training run: one small interface, one file per method.

The training loop (:mod:`tissueseg.train`) knows nothing about the method. A
:class:`Supervision` tells it what every training sample carries (a pixel mask, from the
mask files or from a pseudo-mask source, or image labels only), which output of the model
the loss reads, the loss, which pixel counts weigh the classes and which columns balance
the sampling. A method is a subclass registered in :data:`METHODS`:

- ``full`` (:class:`~.masks.Masks`): the manifest's pixel masks.
- ``cam`` (:class:`~.cam.Cam`): image labels of whole patches; a patch classifier
  (:class:`~.cam.ImageLabels`, stage 1) and its class maps as pseudo-masks.
- ``label-grid`` (:class:`~.labelgrid.LabelGrid`): image labels of small cells made into
  pseudo-masks (:mod:`tissueseg.weak.pseudomask`).
- ``mil`` (:class:`~.mil.MIL`): image labels of whole patches and a multiple-instance loss.
"""

from __future__ import annotations

from .base import Context, Supervision
from .cam import Cam, ImageLabels
from .labelgrid import LabelGrid
from .masks import Masks
from .mil import MIL

METHODS: dict[str, type[Supervision]] = {"full": Masks, "cam": Cam, "label-grid": LabelGrid, "mil": MIL}


def build_supervision(method: str, ctx: Context) -> Supervision:
    """The supervision of ``method`` set up on ``ctx`` (ValueError for an unknown method)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method](ctx)


__all__ = ["METHODS", "Cam", "Context", "ImageLabels", "LabelGrid", "MIL", "Masks", "Supervision",
           "build_supervision"]
