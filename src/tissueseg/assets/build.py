"""Rebuild the packaged assets from the public sources they were cut from (maintainers only).

    python -m tissueseg.assets.build /path/to/shared/data

``textures/``: crops of single-class real H&E (the texture bank of ``tissueseg.synth``'s
composite mode) and ``textures/provenance.csv``. ``real/``: one real BCSS crop with its
mask (the demo's real tissue) and ``real/provenance.csv``. Every crop box is listed here
and in the provenance files. No texture comes from slide TCGA-A1-A0SK: that slide's region
is where the transfer from generated to real tissue is scored (``bench/transfer.py``).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_path, read_image, read_mask
from ..schemes import BCSS_CODES

ASSETS = Path(__file__).resolve().parent
BCSS_LICENCE = "CC0-1.0"
BCSS_SOURCE = ("BCSS (Amgad et al., Bioinformatics 2019) as cut by BCSS-WSSS (Han et al., MedIA 2022); "
               "files from github.com/Ha-thach/VQGAN-WSSS data/sub_BCSS_WSSS @ 853d621")
NCT_LICENCE = "CC-BY-4.0"
NCT_SOURCE = ("NCT-CRC-HE (Kather, Halama, Marx 2018, Zenodo doi:10.5281/zenodo.1214456; "
              "Kather et al., PLoS Med 2019)")
BCSS_REAL_SOURCE = ("BCSS (Amgad et al., Bioinformatics 2019), region TCGA-A1-A0SK-DX1_xmin45749_ymin25055 "
                    "rebuilt from BCSS-WSSS patches (github.com/Ha-thach/VQGAN-WSSS @ 853d621) and the BCSS mask")
WSSS = "bcss-wsss-sample/training/TCGA-A1-A0SP-DX1_xmin6798_ymin53719_MPP-0.2500+{}.png"
EW = "bcss-wsss-sample/val/{}/TCGA-EW-A1PB-DX1_xmin57214_ymin25940_MPP-0.2500+{}.png"
Box = tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Source:
    """One crop: a file under the shared data folder, the BCSS code it shows, the box."""

    path: str
    code: int
    box: Box | None  # None: the whole file
    mpp: float
    how: str


_WHOLE = "whole patch, single-label ([abcd] flags)"
_EYE = "crop of a mixed patch, box chosen by eye to hold one class"
_EW_MASK = "largest square of one class (>= 97 % of its pixels) in the patch's real mask"
_NCT = "whole tile; 0.5 um/px (resampled to 0.25 when loaded)"

SOURCES: tuple[Source, ...] = (
    # tumour (code 1): the 4 single-label patches and crops of mixed ones, slide TCGA-A1-A0SP
    *(Source(WSSS.format(f"{i}[1000]"), 1, None, 0.25, _WHOLE) for i in (46, 47, 91, 92)),
    Source(WSSS.format("32[1100]"), 1, (110, 40, 224, 224), 0.25, _EYE),
    Source(WSSS.format("45[1100]"), 1, (0, 60, 224, 224), 0.25, _EYE),
    Source(WSSS.format("48[1100]"), 1, (0, 0, 200, 224), 0.25, _EYE),
    Source(WSSS.format("60[1100]"), 1, (0, 0, 190, 224), 0.25, _EYE),
    Source(WSSS.format("61[1100]"), 1, (0, 0, 160, 224), 0.25, _EYE),
    Source(WSSS.format("62[1100]"), 1, (0, 0, 130, 224), 0.25, _EYE),
    Source(WSSS.format("76[1100]"), 1, (120, 0, 224, 224), 0.25, _EYE),
    Source(WSSS.format("78[1100]"), 1, (90, 0, 224, 224), 0.25, _EYE),
    Source(WSSS.format("87[1110]"), 1, (40, 0, 224, 224), 0.25, _EYE),
    Source(WSSS.format("90[1100]"), 1, None, 0.25, _EYE),
    Source(WSSS.format("93[1100]"), 1, None, 0.25, _EYE),
    Source(WSSS.format("94[1100]"), 1, (60, 0, 224, 224), 0.25, _EYE),
    # fat (code 9): NCT-CRC-HE adipose tiles (colorectal, other patients)
    Source("nct_crc_he_samples/crc_val_he_7k/ADI/ADI-TCGA-EENSRDNW.png", 9, None, 0.5, _NCT),
    Source("nct_crc_he_samples/crc_val_he_7k/ADI/ADI-TCGA-IVLMQINC.png", 9, None, 0.5, _NCT),
    Source("nct_crc_he_samples/crc_val_he_7k/ADI/ADI-TCGA-VSNYDMDA.png", 9, None, 0.5, _NCT),
    Source("nct_crc_he_samples/nct_crc_he_100k_nonorm/ADI/ADI-AAQEFMRI.tif", 9, None, 0.5, _NCT),
)
"""Hand-listed crops; the stroma and lymphocyte crops are found from the files (below)."""

REAL_CROP: Box = (1280, 1024, 2304, 2048)
"""The demo's real crop of region-a0sk: tumour 34 %, stroma 33 %, necrosis 33 % of its pixels."""
MIN_SIDE = 96


def _largest_square(mask: np.ndarray, value: int, purity: float = 0.97) -> Box | None:
    """The largest square (side >= MIN_SIDE, step 16 px) whose pixels are ``value`` at ``purity``."""
    hit = np.pad((mask == value).astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = mask.shape
    for side in range(min(h, w), MIN_SIDE - 1, -16):
        for y in range(0, h - side + 1, 8):
            for x in range(0, w - side + 1, 8):
                n = hit[y + side, x + side] - hit[y, x + side] - hit[y + side, x] + hit[y, x]
                if n >= purity * side * side:
                    return x, y, x + side, y + side
    return None


def found_sources(data: Path) -> list[Source]:
    """Stroma crops ([0100] patches of TCGA-A1-A0SP), and stroma and lymphocyte squares of
    the pixel-labelled TCGA-EW-A1PB patches (mask index 1 stroma, 2 lymphocytes)."""
    out = [Source(str(p.relative_to(data)), 2, None, 0.25, _WHOLE)
           for p in sorted((data / "bcss-wsss-sample" / "training").glob("TCGA-A1-A0SP*[[]0100].png"))]
    out += [Source(str(p.relative_to(data)), 3, None, 0.25, _WHOLE)
            for p in sorted((data / "bcss-wsss-sample" / "training").glob("TCGA-A1-A0SP*[[]0010].png"))]
    for i in range(14):
        mask = read_mask(data / EW.format("mask", i))
        for index, code in ((1, 2), (2, 3)):
            box = _largest_square(mask, index)
            if box is not None:
                out.append(Source(EW.format("img", i), code, box, 0.25, _EW_MASK))
    return out


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=quality, subsampling=0)


def build_textures(data: Path, out: Path) -> int:
    """Write the bank's crops and ``provenance.csv``; returns the number of crops."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.jpg"):
        old.unlink()
    rows = []
    for k, src in enumerate([*SOURCES, *found_sources(data)]):
        rgb = read_image(data / src.path)
        x0, y0, x1, y1 = src.box or (0, 0, rgb.shape[1], rgb.shape[0])
        name = f"{k:03d}-{BCSS_CODES[src.code][0]}.jpg"
        _write_jpeg(out / name, np.ascontiguousarray(rgb[y0:y1, x0:x1]), 92)
        nct = src.path.startswith("nct")
        rows.append({"file": name, "code": src.code, "class": BCSS_CODES[src.code][0], "mpp": src.mpp,
                     "source_file": src.path, "slide": "" if nct else Path(src.path).name.split("-DX1")[0],
                     "crop_box": f"{x0} {y0} {x1} {y1}", "how": src.how,
                     "dataset": NCT_SOURCE if nct else BCSS_SOURCE, "licence": NCT_LICENCE if nct else BCSS_LICENCE})
    _write_csv(out / "provenance.csv", rows)
    return len(rows)


def build_real(data: Path, out: Path) -> None:
    """The demo's real crop (JPEG) and its code mask (PNG), named like a BCSS region."""
    region = data / "bcss" / "region-a0sk"
    stem = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"
    rgb = read_image(region / "rgbs_colorNormalized" / f"{stem}.png")
    mask = read_mask(region / "masks" / f"{stem}.png")
    x0, y0, x1, y1 = REAL_CROP
    name = f"TCGA-A1-A0SK-DX1_xmin{45749 + x0}_ymin{25055 + y0}_MPP-0.2500"
    out.mkdir(parents=True, exist_ok=True)
    _write_jpeg(out / f"{name}.jpg", np.ascontiguousarray(rgb[y0:y1, x0:x1]), 90)
    with atomic_path(out / f"{name}.png") as tmp:
        Image.fromarray(np.ascontiguousarray(mask[y0:y1, x0:x1])).save(tmp, format="PNG", optimize=True)
    _write_csv(out / "provenance.csv", [{
        "image": f"{name}.jpg", "mask": f"{name}.png", "mpp": 0.25, "source_file": f"bcss/region-a0sk/*/{stem}.png",
        "slide": "TCGA-A1-A0SK", "crop_box": f"{x0} {y0} {x1} {y1}", "dataset": BCSS_REAL_SOURCE,
        "licence": BCSS_LICENCE, "mask_codes": "BCSS codes: 1 tumor, 2 stroma, 3 lymphocytic_infiltrate, "
                                               "4 necrosis_or_debris, 9 fat"}])


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description="Rebuild tissueseg's packaged assets from the shared data folder.")
    ap.add_argument("data", type=Path, help="the folder holding bcss/, bcss-wsss-sample/, nct_crc_he_samples/")
    args = ap.parse_args()
    n = build_textures(args.data, ASSETS / "textures")
    build_real(args.data, ASSETS / "real")
    print(f"{n} texture crops in {ASSETS / 'textures'}; real crop in {ASSETS / 'real'}")


if __name__ == "__main__":
    main()
