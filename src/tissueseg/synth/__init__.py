"""Generated H&E tissue with known masks: regions, BCSS-style datasets and pyramidal slides.

Pixels come from a Beer-Lambert stain model (:mod:`.stain`): every tissue class has a
procedural texture (:mod:`.textures`) that sets haematoxylin and eosin densities (nuclei,
fibres, vacuoles, debris), the optical density ``OD = dH * vH + dE * vE + residual`` becomes
``RGB = 255 * exp(-OD)``, and the stain vectors and intensities vary per image. Every
texture is a function of *global* position in micrometres (:mod:`.fields`), so a slide
rendered tile by tile has no seams and its levels show the same structures. Regions can
instead carry real H&E where a texture bank has the class (:mod:`.composite`; the default,
with the packaged bank: it carries over to real tissue far better).

Layouts (which class where, :mod:`.layouts`) are argmaxes of smooth random fields, or real
BCSS masks. :mod:`.writers` writes datasets in the BCSS folder layout and pyramidal slides.
"""

from .composite import DEFAULT_TEXTURES, TextureBank, composite_he, load_bank, quilt, resolve_textures
from .layouts import layout_from_mask, random_layout
from .textures import REGION_MPP, STAND_INS, TEXTURE_CODES, render_he
from .writers import TEST_SITES, TRAIN_SITES, make_dataset, make_region, make_slide, region_name, region_seed

__all__ = [
    "DEFAULT_TEXTURES", "REGION_MPP", "STAND_INS", "TEST_SITES", "TEXTURE_CODES", "TRAIN_SITES", "TextureBank",
    "composite_he", "layout_from_mask", "load_bank", "make_dataset", "make_region", "make_slide", "quilt",
    "random_layout", "region_name", "region_seed", "render_he", "resolve_textures",
]
