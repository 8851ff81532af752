"""Real against generated H&E, class by class: the statistics synth is matched to.

Sources: real BCSS pixels of slides TCGA-A1-A0SP (single-label BCSS-WSSS patches: tumour
[1000], stroma [0100], lymphocytes [0010]) and TCGA-EW-A1PB (pixel-labelled val patches:
stroma, lymphocytes), which the texture bank also draws on; the evaluation region
TCGA-A1-A0SK (mask classes, 16 px in from every class edge), measured to set the
procedural necrosis and fat (no other slide here has them); and generated regions
(``--seeds``) with procedural textures only (``none``) and with the built-in bank.

Per class: stain vectors (Macenko, per source), haematoxylin and eosin densities on the
BCSS reference vectors (p10 / p50 / p90), the fraction of near-white pixels, nuclei
(haematoxylin above Otsu's threshold of the source, opened: cover, count per 10^4 µm^2,
median area in µm^2) and, for stroma, fibre coherence (structure tensor, 0 = isotropic,
1 = all one direction, on 2 µm scale).

Run: python bench/synth_stats.py [--data ../shared/data] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.feature import structure_tensor
from skimage.filters import threshold_otsu

from tissueseg.io import read_image, read_mask
from tissueseg.synth import make_region, random_layout
from tissueseg.synth.stain import E_REF, H_REF

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MPP = 0.25
CLASSES = {1: "tumour", 2: "stroma", 3: "lymphocytes", 4: "necrosis", 9: "fat"}
A0SK = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / 256)


def macenko(od: np.ndarray, beta: float = 0.15, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin unit OD vectors (Macenko et al. 2009)."""
    od = od[(od > beta).all(axis=1)]
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]] * np.sign(vecs[0, [2, 1]])
    phi = np.arctan2(*(od @ plane).T[::-1])
    lo, hi = (plane @ [np.cos(a), np.sin(a)] for a in np.percentile(phi, [alpha, 100 - alpha]))
    h, e = (lo, hi) if lo[0] > hi[0] else (hi, lo)
    return h / np.linalg.norm(h), e / np.linalg.norm(e)


def densities(od: np.ndarray) -> np.ndarray:
    """Haematoxylin and eosin densities on the BCSS reference vectors (least squares)."""
    m = np.stack([H_REF / np.linalg.norm(H_REF), E_REF / np.linalg.norm(E_REF)], axis=1)
    return np.linalg.lstsq(m, od.T, rcond=None)[0].T


def nuclei(h: np.ndarray, sel: np.ndarray) -> tuple[float, float, float]:
    """Cover, count per 10^4 µm^2 and median area (µm^2) of haematoxylin blobs in ``sel``."""
    fg = ndimage.binary_opening((h > threshold_otsu(h[sel])) & sel, iterations=2)
    lab, n = ndimage.label(fg)
    areas = np.asarray(ndimage.sum(np.ones_like(h), lab, range(1, n + 1))) * MPP**2
    areas = areas[areas >= 3]  # > 3 µm^2: nuclei and pyknotic fragments, not noise
    return float(fg[sel].mean()), len(areas) / (sel.sum() * MPP**2) * 1e4, float(np.median(areas)) if len(areas) else 0.0


def coherence(rgb: np.ndarray, sel: np.ndarray) -> float:
    """Mean orientation coherence of the structure tensor (grey levels, sigma 2 µm)."""
    grey = rgb.astype(np.float64).mean(axis=2)
    arr = structure_tensor(grey, sigma=2 / MPP, order="rc")
    a, b, c = (x[sel] for x in arr)
    tr, det = a + c, a * c - b * b
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    l1, l2 = tr / 2 + disc, tr / 2 - disc
    return float(np.mean((l1 - l2) / (l1 + l2 + 1e-9)))


def describe(name: str, rgbs: list[np.ndarray], sels: list[np.ndarray], stroma: bool) -> str:
    od = np.concatenate([optical_density(r)[s.reshape(-1)] for r, s in zip(rgbs, sels)])
    hv, ev = macenko(od)
    d = densities(od)
    white = float((np.concatenate([r[s] for r, s in zip(rgbs, sels)]).min(axis=1) > 220).mean())
    nuc = [nuclei(densities(optical_density(r))[:, 0].reshape(r.shape[:2]), s) for r, s in zip(rgbs, sels)]
    w = np.array([s.sum() for s in sels], float)
    cover, count, area = (float(np.average([n[i] for n in nuc], weights=w)) for i in range(3))
    coh = f"{np.average([coherence(r, s) for r, s in zip(rgbs, sels)], weights=w):.2f}" if stroma else ""
    p = lambda a: "/".join(f"{v:.2f}" for v in np.percentile(a, [10, 50, 90]))  # noqa: E731
    return (f"| {name} | {int(w.sum())} | {np.round(hv, 2).tolist()} | {np.round(ev, 2).tolist()} | {p(d[:, 0])} | "
            f"{p(d[:, 1])} | {white:.2f} | {cover:.2f} | {count:.0f} | {area:.1f} | {coh} |")


def real_sources(data: Path) -> list[tuple[str, int, list[np.ndarray], list[np.ndarray]]]:
    out = []
    train = data / "bcss-wsss-sample" / "training"
    for flag, code in (("1000", 1), ("0100", 2), ("0010", 3)):
        rgbs = [read_image(p) for p in sorted(train.glob(f"TCGA-A1-A0SP*[[]{flag}].png"))]
        out.append(("A0SP patches", code, rgbs, [np.ones(r.shape[:2], bool) for r in rgbs]))
    val = data / "bcss-wsss-sample" / "val"
    imgs = sorted((val / "img").glob("*.png"))
    for index, code in ((1, 2), (2, 3)):
        rgbs = [read_image(p) for p in imgs]
        sels = [ndimage.binary_erosion(read_mask(val / "mask" / p.name) == index, iterations=4) for p in imgs]
        out.append(("EW-A1PB val", code, rgbs, sels))
    region = data / "bcss" / "region-a0sk"
    rgb, mask = read_image(region / "rgbs_colorNormalized" / f"{A0SK}.png"), read_mask(region / "masks" / f"{A0SK}.png")
    for code in (1, 2, 4, 9):
        out.append(("A0SK (evaluation)", code, [rgb], [ndimage.binary_erosion(mask == code, iterations=16)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    slides = {"TCGA-A1-A0SP": sorted((args.data / "bcss-wsss-sample" / "training").glob("TCGA-A1-A0SP*.png")),
              "TCGA-EW-A1PB": sorted((args.data / "bcss-wsss-sample" / "val" / "img").glob("*.png")),
              "TCGA-A1-A0SK": sorted((args.data / "bcss" / "region-a0sk" / "rgbs_colorNormalized").glob("*.png"))}
    print("Stain vectors over all pixels (Macenko):")
    for slide, files in slides.items():
        hv, ev = macenko(np.concatenate([optical_density(read_image(f)) for f in files]))
        print(f"- {slide}: H {np.round(hv, 3).tolist()}, E {np.round(ev, 3).tolist()}")
    rows = [(f"{src}", code, rgbs, sels) for src, code, rgbs, sels in real_sources(args.data)]
    for textures in ("none", "builtin"):
        regions = [make_region((768, 768), s, layout=random_layout((768, 768), s, roi=False), textures=textures)
                   for s in args.seeds]
        for code in CLASSES:
            sels = [ndimage.binary_erosion(m == code, iterations=16) for _, m in regions]
            rows.append((f"generated, textures {textures}", code, [r for r, _ in regions], sels))
    head = ("| source | px | H vector | E vector | H p10/50/90 | E p10/50/90 | white | nuclear cover | "
            "nuclei /10^4 µm² | median nucleus µm² | fibre coherence |")
    for code, name in CLASSES.items():
        print(f"\n### {name}\n\n{head}\n|" + "---|" * 11)
        for src, c, rgbs, sels in rows:
            if c == code and sum(s.sum() for s in sels) > 0:
                print(describe(src, rgbs, sels, stroma=code == 2))


if __name__ == "__main__":
    main()
