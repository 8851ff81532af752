"""Weak supervision: segmenters trained from image-level labels of patches only.

The default method reads the labels of small patches as a *label grid* over each region
(:mod:`.labelgrid`), turns it into a pseudo-mask per region (:mod:`.pseudomask`) and
trains DeepLabv3+ on those with the ordinary loop (:func:`tissueseg.train.train`, loss
``label-grid``). See ``docs/weak-supervision.md`` for the methods compared and the numbers.
"""
