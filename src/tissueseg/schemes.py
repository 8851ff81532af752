"""Class schemes: how raw mask codes become training classes, names and colours.

A scheme maps every raw code (0..255) of a label mask either to a class index
``0..K-1`` or to :data:`IGNORE` ("don't care"). Codes that a scheme does not know map
to :data:`UNKNOWN`, so masks with unexpected values are caught, never silently merged.

Built-in schemes: ``bcss22`` (the 21 BCSS tissue codes, code 0 ignored), ``bcss5`` (the
BCSS evaluation grouping), ``bcss-wsss4`` (the BCSS-WSSS weak-label classes on BCSS codes),
and the published patch-label datasets' own masks: ``bcss-wsss-masks``, ``luad-histoseg4``. User
schemes are YAML/JSON files, see :func:`load_scheme`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

IGNORE = 255
"""Class index of "don't care" pixels (outside_roi and whatever a scheme ignores)."""
UNKNOWN = 254
"""Look-up value of raw codes that a scheme does not define (invalid input)."""

RGB = tuple[int, int, int]

BCSS_CODES: dict[int, tuple[str, RGB]] = {
    0: ("outside_roi", (0, 0, 0)),
    1: ("tumor", (128, 0, 0)),
    2: ("stroma", (0, 128, 0)),
    3: ("lymphocytic_infiltrate", (128, 128, 0)),
    4: ("necrosis_or_debris", (0, 0, 128)),
    5: ("glandular_secretions", (128, 0, 128)),
    6: ("blood", (0, 128, 128)),
    7: ("exclude", (128, 128, 128)),
    8: ("metaplasia_NOS", (64, 0, 0)),
    9: ("fat", (192, 0, 0)),
    10: ("plasma_cells", (64, 128, 0)),
    11: ("other_immune_infiltrate", (192, 128, 0)),
    12: ("mucoid_material", (64, 0, 128)),
    13: ("normal_acinus_or_duct", (192, 0, 128)),
    14: ("lymphatics", (64, 128, 128)),
    15: ("undetermined", (192, 128, 128)),
    16: ("nerve", (0, 64, 0)),
    17: ("skin_adnexa", (128, 64, 0)),
    18: ("blood_vessel", (0, 192, 0)),
    19: ("angioinvasion", (128, 192, 0)),
    20: ("dcis", (0, 64, 128)),
    21: ("other", (224, 128, 64)),
}
"""The BCSS ground-truth codes (``meta/gtruth_codes.tsv``) with the BCSS palette."""


@dataclass(frozen=True)
class ClassDef:
    """One class of a scheme: its name, display colour and the raw codes it merges."""

    name: str
    color: RGB
    codes: tuple[int, ...]


@dataclass(frozen=True)
class ClassScheme:
    """A mapping from raw mask codes to classes; ``ignore_codes`` map to :data:`IGNORE`."""

    name: str
    classes: tuple[ClassDef, ...]
    ignore_codes: tuple[int, ...] = (0,)
    ignore_name: str = "outside_roi"
    ignore_color: RGB = (0, 0, 0)
    lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError(f"scheme {self.name!r}: no classes")
        if len(self.classes) >= UNKNOWN:
            raise ValueError(f"scheme {self.name!r}: at most {UNKNOWN - 1} classes")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"scheme {self.name!r}: duplicate class names")
        lut = np.full(256, UNKNOWN, dtype=np.uint8)
        for code in self.ignore_codes:
            _check_code(self.name, code)
            lut[code] = IGNORE
        for index, cls in enumerate(self.classes):
            for code in cls.codes:
                _check_code(self.name, code)
                if lut[code] != UNKNOWN:
                    raise ValueError(f"scheme {self.name!r}: code {code} is mapped twice")
                lut[code] = index
        lut.setflags(write=False)
        object.__setattr__(self, "lut", lut)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def colors(self) -> np.ndarray:
        """``(K, 3)`` uint8 class colours."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    @property
    def known_codes(self) -> np.ndarray:
        return np.flatnonzero(self.lut != UNKNOWN)

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """Raw codes to class indices (uint8, :data:`IGNORE` for don't-care).

        Raises ``ValueError`` naming the offending codes when the mask holds codes the
        scheme does not define.
        """
        if mask.dtype != np.uint8:
            if mask.size and (mask.min() < 0 or mask.max() > 255):
                raise ValueError(f"mask values outside 0..255 (min {mask.min()}, max {mask.max()})")
            mask = mask.astype(np.uint8)
        out = self.lut[mask]
        if (out == UNKNOWN).any():
            bad = np.unique(mask[out == UNKNOWN])
            raise ValueError(f"codes {bad.tolist()} are not in scheme {self.name!r}")
        return out

    def fold_counts(self, code_counts: np.ndarray) -> tuple[np.ndarray, int]:
        """Per-code pixel counts (length 256) to ``(per-class counts, ignored count)``."""
        if code_counts.shape != (256,):
            raise ValueError("code_counts must have 256 entries")
        unknown = np.flatnonzero((self.lut == UNKNOWN) & (code_counts > 0))
        if unknown.size:
            raise ValueError(f"codes {unknown.tolist()} are not in scheme {self.name!r}")
        per_class = np.bincount(
            self.lut[self.lut < UNKNOWN], weights=code_counts[self.lut < UNKNOWN], minlength=self.num_classes
        ).astype(np.int64)
        return per_class, int(code_counts[self.lut == IGNORE].sum())

    def palette(self) -> list[int]:
        """A 768-entry PIL palette: class ``i`` at index ``i``, ignore at 255."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[: self.num_classes] = self.colors
        pal[IGNORE] = self.ignore_color
        return pal.ravel().tolist()

    def to_dict(self) -> dict:
        """Plain data (for JSON, YAML and checkpoints); :func:`scheme_from_dict` reverses it."""
        return {
            "name": self.name,
            "ignore": {"codes": list(self.ignore_codes), "name": self.ignore_name, "color": list(self.ignore_color)},
            "classes": [{"name": c.name, "color": list(c.color), "codes": list(c.codes)} for c in self.classes],
        }


def _check_code(scheme: str, code: int) -> None:
    if not isinstance(code, (int, np.integer)) or not 0 <= code <= 253:
        raise ValueError(f"scheme {scheme!r}: code {code!r} must be an integer in 0..253")


def _bcss_class(name: str, codes: tuple[int, ...]) -> ClassDef:
    return ClassDef(name, BCSS_CODES[codes[0]][1], codes)


def bcss22() -> ClassScheme:
    """The 21 BCSS tissue codes as classes (class ``i`` is code ``i + 1``); code 0 ignored."""
    return ClassScheme(
        "bcss22", tuple(ClassDef(n, c, (code,)) for code, (n, c) in BCSS_CODES.items() if code != 0)
    )


BCSS5_GROUPS: dict[str, tuple[int, ...]] = {
    "tumor": (1, 19, 20),
    "stroma": (2,),
    "inflammatory": (3, 10, 11),
    "necrosis": (4,),
    "other": (5, 6, 8, 9, 12, 13, 14, 15, 16, 17, 18, 21),
}


def bcss5() -> ClassScheme:
    """The BCSS evaluation grouping; ``outside_roi`` (0) and ``exclude`` (7) are ignored.

    ``exclude`` marks regions the annotators asked to leave out (pen marks, blur,
    folds), so it is "don't care" rather than a tissue: it joins outside_roi.
    """
    colors = {"other": BCSS_CODES[21][1]}
    return ClassScheme(
        "bcss5",
        tuple(ClassDef(n, colors.get(n, BCSS_CODES[codes[0]][1]), codes) for n, codes in BCSS5_GROUPS.items()),
        ignore_codes=(0, 7),
    )


WSSS4_GROUPS: dict[str, tuple[int, ...]] = {
    "tumor": (1, 19, 20),
    "stroma": (2,),
    "lymphocytic_infiltrate": (3, 10, 11),
    "necrosis": (4,),
}
WSSS4_COLORS: dict[str, RGB] = {
    "tumor": (255, 0, 0),
    "stroma": (0, 255, 0),
    "lymphocytic_infiltrate": (0, 0, 255),
    "necrosis": (153, 0, 255),
}


def bcss_wsss4() -> ClassScheme:
    """BCSS-WSSS classes (Han et al. 2022) from BCSS codes; every other code is ignored.

    Colours follow the BCSS-WSSS mask palette (TUM red, STR green, LYM blue, NEC purple).
    """
    groups = WSSS4_GROUPS
    used = {c for codes in groups.values() for c in codes}
    return ClassScheme(
        "bcss-wsss4",
        tuple(ClassDef(n, WSSS4_COLORS[n], codes) for n, codes in groups.items()),
        ignore_codes=tuple(c for c in BCSS_CODES if c not in used),
        ignore_name="background",
        ignore_color=(255, 255, 255),
    )


MASK_BACKGROUND = 4
"""Mask index of white background / exclude in the published BCSS-WSSS and LUAD-HistoSeg masks (ignored)."""


def _index_scheme(name: str, classes: tuple[tuple[str, RGB], ...]) -> ClassScheme:
    return ClassScheme(name, tuple(ClassDef(n, c, (i,)) for i, (n, c) in enumerate(classes)),
                       ignore_codes=(MASK_BACKGROUND,), ignore_name="background", ignore_color=(255, 255, 255))


def bcss_wsss_masks() -> ClassScheme:
    """The BCSS-WSSS classes (those of ``bcss-wsss4``) on the published masks' indices 0..3;
    4 (white background) ignored."""
    return _index_scheme("bcss-wsss-masks", tuple(WSSS4_COLORS.items()))


def luad_histoseg4() -> ClassScheme:
    """LUAD-HistoSeg classes on its masks' indices 0..3 (flag order); 4 (background) ignored."""
    return _index_scheme("luad-histoseg4", (
        ("tumor_epithelium", (205, 51, 51)), ("necrosis", (0, 255, 0)), ("lymphocyte", (65, 105, 225)),
        ("tumor_associated_stroma", (255, 165, 0))))


BUILTIN = {"bcss22": bcss22, "bcss5": bcss5, "bcss-wsss4": bcss_wsss4, "bcss-wsss-masks": bcss_wsss_masks,
           "luad-histoseg4": luad_histoseg4}
DEFAULT_SCHEME = "bcss5"
"""The scheme every command, the Python API and the pipeline use when none is given."""


def scheme_from_dict(data: dict, *, source: str = "<dict>") -> ClassScheme:
    """Build a scheme from plain data (the YAML/JSON file format).

    Format::

        name: my-scheme
        ignore: [0, 7]            # or {codes: [0, 7], name: outside_roi, color: [0, 0, 0]}
        classes:
          - {name: tumor, color: [128, 0, 0], codes: [1, 19, 20]}
          - {name: stroma, codes: [2]}          # colour defaults to the BCSS colour of its first code
    """
    try:
        ignore = data.get("ignore", [0])
        if isinstance(ignore, dict):
            ign_codes = ignore.get("codes", [0])
            ign_name = ignore.get("name", "outside_roi")
            ign_color = ignore.get("color", (0, 0, 0))
        else:
            ign_codes, ign_name, ign_color = ignore, "outside_roi", (0, 0, 0)
        classes = []
        for i, c in enumerate(data["classes"]):
            codes = c["codes"]
            codes = [codes] if isinstance(codes, int) else list(codes)
            if not codes:
                raise ValueError(f"class {c.get('name', i)!r} has no codes")
            color = c.get("color") or BCSS_CODES.get(codes[0], ("", (128, 128, 128)))[1]
            color = tuple(int(v) for v in color)
            if len(color) != 3 or not all(0 <= v <= 255 for v in color):
                raise ValueError(f"class {c['name']!r}: colour must be three integers in 0..255")
            classes.append(ClassDef(str(c["name"]), color, tuple(int(v) for v in codes)))
        return ClassScheme(
            str(data.get("name", Path(source).stem)),
            tuple(classes),
            ignore_codes=tuple(int(v) for v in ign_codes),
            ignore_name=str(ign_name),
            ignore_color=tuple(int(v) for v in ign_color),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: invalid scheme: {exc}") from None


def load_scheme(spec: str | Path | ClassScheme) -> ClassScheme:
    """A built-in scheme by name, or a user scheme from a YAML/JSON file."""
    if isinstance(spec, ClassScheme):
        return spec
    if str(spec) in BUILTIN:
        return BUILTIN[str(spec)]()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec}: not a built-in scheme ({', '.join(BUILTIN)}) nor a scheme file")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read scheme: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: invalid scheme: expected a mapping at the top level")
    return scheme_from_dict(data, source=str(path))
