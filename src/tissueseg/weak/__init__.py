"""Weak supervision: segmenters trained from image-level labels of patches only.

The default method (:func:`pipeline.train_weak`) reads the labels of small patches as a
*label grid* over each region (:mod:`.labelgrid`) and trains DeepLabv3+ with a per-pixel
partial-label loss plus a per-cell presence term (:mod:`.losses`); :mod:`.fit` holds the
training loop and crop sampler it shares with ``bench/quality.py``. See
``docs/weak-supervision.md`` for the methods compared and the numbers.
"""
