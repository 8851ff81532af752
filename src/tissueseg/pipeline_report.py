"""The pipeline's HTML report, assembled from what the stages wrote (see :mod:`tissueseg.report`)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import io
from .colorize import colorize
from .report import Report
from .schemes import ClassScheme


def sample_patches(manifest: pd.DataFrame, scheme: ClassScheme, n: int, out: Path) -> list[tuple[Path, str]]:
    """Up to ``n`` patches, the purest one of each class first: image and palette mask side by side."""
    manifest = manifest[manifest["mask_path"].notna()] if "mask_path" in manifest else manifest.iloc[:0]
    if n <= 0 or manifest.empty:
        return []
    picks: list[int] = []
    for name in scheme.names:
        col = f"frac_{name}"
        if col in manifest and manifest[col].max() > 0:
            picks.append(int(manifest[col].idxmax()))
    picks = list(dict.fromkeys(picks))[:n]
    rest = manifest.index.difference(picks)
    if len(picks) < n and len(rest):
        picks += list(np.random.default_rng(0).choice(rest, size=min(n - len(picks), len(rest)), replace=False))
    files = []
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i in picks:
        row = manifest.loc[i]
        if row["image_path"] not in cache:
            cache = {row["image_path"]: (io.read_image(row["image_path"]), scheme.apply(io.read_mask(row["mask_path"])))}
        rgb, labels = cache[row["image_path"]]
        x, y, s = int(row["x"]), int(row["y"]), int(row["size"])
        crop = rgb[y : y + s, x : x + s]
        pal = np.asarray(colorize(labels[y : y + s, x : x + s], scheme).convert("RGB"))
        gap = np.full((crop.shape[0], 4, 3), 255, np.uint8)
        path = out / f"{row['image_id']}_x{x}_y{y}.png"
        io.write_png(path, np.concatenate([crop, gap, pal], axis=1))
        present = [n for n in scheme.names if row.get(f"label_{n}", 0)]
        files.append((path, f"{row['image_id'][:16]}… x={x} y={y}: {', '.join(present) or 'no label'}"))
    return files


def build_report(cfg: Any, out: Path, scheme: ClassScheme, shown: list[tuple[Path, Path]], color_dir: Path,
                 stats_dir: Path, tiles_dir: Path, models: dict[str, dict[str, Any]]) -> Path:
    """Write ``out/report.html`` from the stages' outputs and return its path."""
    from .manifest import load_manifest

    colors = dict(zip(scheme.names, scheme.colors.tolist()))
    rep = Report("tissueseg report", f"{out} · scheme {scheme.name} · {len(models)} model(s)")

    stats = json.loads((stats_dir / "stats.json").read_text())
    rows = [{"name": r["class"], "color": r["color"], "pixels": r["pixels"], "proportion": r["proportion"],
             "images": r["images"], "weight_inverse": r["weight_inverse"], "weight_median": r["weight_median"]}
            for r in stats["classes"]]
    rep.add_class_table("Dataset class proportions", rows, stats_dir / "proportions.png",
                        note=f"{stats['images']} images; {stats['labelled_pixels']:,} labelled pixels, "
                             f"{stats['ignored_pixels']:,} ignored ({scheme.ignore_name}) left out of the proportions.")

    manifest, _ = load_manifest(tiles_dir)
    split_counts = manifest.groupby("split").agg(regions=("image_id", "nunique"), patches=("image_id", "size"))
    rep.add_table("Tiles and splits", [{"split": s, **{k: int(v) for k, v in r.items()}}
                                        for s, r in split_counts.iterrows()],
                  note="Splits never put one slide on both sides.")
    samples = sample_patches(manifest, scheme, cfg.samples, out / "report_assets" / "samples")
    rep.add_figures("Sample patches with their masks", samples, width=300,
                    note="Each: the H&E patch, then its mask in the scheme's colours; the caption lists its image labels.")
    rep.add_figures("Regions and their masks", [(color_dir / f"{m.stem}_overlay.png", m.stem[:24]) for _, m in shown]
                    + [(color_dir / "legend.png", "legend")], width=260)

    pseudo = [(p, f"{name}: {p.stem[:24]}") for name, m in models.items()
              for p in sorted((m["train_dir"] / "pseudo-masks").glob("*.png"))[:4]]
    if pseudo:
        rep.add_figures("Pseudo-masks of the weak model", pseudo, width=260,
                        note="What the weak model was trained on: masks made from the image labels of small patches "
                             "only (docs/weak-supervision.md); compare with the regions' true masks above.")
    rep.add_figures("Training curves", [(m["train_dir"] / "curves.png", name) for name, m in models.items()],
                    width=560)
    evaluated = {name: m for name, m in models.items() if "metrics" in m}
    if evaluated:
        rep.add_scores("Held-out evaluation", {n: m["metrics"] for n, m in evaluated.items()},
                       confusion={n: m["eval_dir"] / "confusion.png" for n, m in evaluated.items()}, colors=colors,
                       note=f"Regions of split '{cfg.predict.split}', scheme {scheme.name}; "
                            f"{scheme.ignore_name} pixels are not scored.")
        figs = []
        for name, m in evaluated.items():
            for d in sorted(Path(m["pred_dir"]).iterdir()):
                figs.append((d / "overlay.png", f"{name}: {d.name[:24]}"))
        rep.add_figures("Predictions on held-out regions", figs, width=360)
    _other_regions(rep, cfg, out, scheme, models, colors)
    slides = []
    for name, m in models.items():
        if "slide_dir" in m:
            for d in sorted(Path(m["slide_dir"]).iterdir()):
                slides += [(d / "overlay.png", f"{name}: {d.name} overlay"), (d / "thumbnail.png", f"{name}: labels")]
    if slides:
        rep.add_figures("Whole-slide predictions", slides, width=420)
    rep.add_text("Configuration", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    rep.add_text("Versions", "\n".join(f"{k}: {v}" for k, v in versions().items()))
    return rep.write(out / "report.html")


def _other_regions(rep: Report, cfg: Any, out: Path, scheme: ClassScheme, models: dict[str, dict[str, Any]],
                   colors: dict) -> None:
    """``predict.regions``: scores side by side, then per region the tissue, the truth and every model's labels."""
    scored = {name: m for name, m in models.items() if "regions_metrics" in m}
    if not scored:
        return
    rep.add_scores(cfg.predict.regions_title, {n: m["regions_metrics"] for n, m in scored.items()},
                   confusion={n: m["regions_eval_dir"] / "confusion.png" for n, m in scored.items()}, colors=colors,
                   note=f"{len(cfg.predict.regions)} region(s) with masks, predicted by every model and scored "
                        f"apart from the held-out split (scheme {scheme.name}).")
    assets = out / "report_assets" / "regions"
    figs = []
    for region in cfg.predict.regions:
        rgb, labels = io.read_image(region.image), scheme.apply(io.read_mask(region.mask))
        step = max(1, -(-max(labels.shape) // 1024))
        tissue, truth = assets / f"{region.image.stem}_tissue.png", assets / f"{region.image.stem}_truth.png"
        io.write_png(tissue, np.ascontiguousarray(rgb[::step, ::step]))
        io.write_png(truth, colorize(np.ascontiguousarray(labels[::step, ::step]), scheme))
        figs += [(tissue, f"{region.image.stem[:24]}: tissue"), (truth, "truth")]
        figs += [(Path(m["regions_pred_dir"]) / region.image.stem / "thumbnail.png", f"{name}: prediction")
                 for name, m in scored.items()]
    rep.add_figures(f"{cfg.predict.regions_title}: tissue, truth and predictions", figs, width=280)


def versions() -> dict[str, str]:
    """Versions of Python and the main libraries (for the report)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("tissueseg", "torch", "segmentation-models-pytorch", "timm", "numpy", "openslide-python",
                "openslide-bin", "tifffile", "zarr"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
