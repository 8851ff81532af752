"""Weak supervision: the algorithms that turn image-level labels of patches into pixel targets.

- :mod:`.cam` (method ``cam``, the default): a multi-label patch classifier's class maps
  fused over depths, normalised per class and restricted to each patch's labels, as
  pseudo-masks from the labels of whole patches; :mod:`.prototypes` redraws the maps of a
  mixed patch by the similarity of its own features (image-specific prototypes); both average
  the test-time augmentations of :mod:`.tta`;
- :mod:`.labelgrid` and :mod:`.pseudomask` (method ``label-grid``): the labels of small cells
  laid out as a grid and interpolated into pseudo-masks;
- :mod:`.mosaic`: mosaics of single-label patches with exact masks (measured in the bench).

:mod:`tissueseg.supervision` serves them to the training loop. See
``docs/weak-supervision.md`` for the methods compared and the numbers.
"""
