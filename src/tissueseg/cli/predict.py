"""``tissueseg predict``: sliding-window prediction on regions and whole-slide images."""

from __future__ import annotations

from pathlib import Path

import click

from . import common

SLIDE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".svs", ".ndpi", ".mrxs", ".scn", ".vms",
                  ".vmu", ".bif", ".svslide", ".dcm")


@click.command(epilog="""\b
Example:
  tissueseg predict slides/ --model runs/bcss5/best.pt --out predictions --batch 16
  tissueseg predict tcga.svs --model best.pt --out pred --mpp 0.25 --target-mpp 2.0 --json
  tissueseg predict held-out/ --model runs/weak/best.pt --out pred-no-gate --gate-power 0
""")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint written by `tissueseg train`.")
@common.out_option()
@click.option("--scheme", default=None, metavar="NAME|FILE",
              help="Class names and colours for the outputs (default: the model's; same number of classes).")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="µm/px of the inputs' level 0 (overrides the file; needed when it has none).")
@click.option("--target-mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Predict at this µm/px (default: the model's).")
@click.option("--window", type=click.IntRange(min=8), default=None, help="Window size in px (default: the model's patch size).")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="Overlap of neighbouring windows.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per batch.")
@click.option("--probabilities", is_flag=True, help="Also write per-class probabilities (uint8 TIFF).")
@click.option("--tissue-detection", "tissue", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True,
              help="Predict only on detected tissue; glass gets no class. auto: on for whole-slide images "
                   "(pyramids, or one level over 2^28 px), off for regions (one-level PNG, JPEG, TIFF up to "
                   "2^28 px), where every pixel gets a class.")
@click.option("--flip-tta/--no-flip-tta", default=None,
              help="Average over flips, or not (default: as the model was trained, cam.flip_tta).")
@click.option("--gate-window", type=click.IntRange(min=1), default=None, metavar="PX",
              help="Window of the class gate of a `cam` model (default: the model's, cam.local_gate).")
@click.option("--gate-power", type=click.FloatRange(min=0), default=None,
              help="Power of the class gate of a `cam` model (default: the model's, cam.local_gate_power); "
                   "0: no gate.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@common.batch_options
def command(inputs: tuple[Path, ...], model_path: Path, out: Path, scheme: str | None, mpp: float | None,
            target_mpp: float | None, window: int | None, overlap: float, batch_size: int, probabilities: bool,
            tissue: str, flip_tta: bool | None, gate_window: int | None, gate_power: float | None, device: str,
            workers: int, scheduler: str | None, as_json: bool, overwrite: bool, quiet: bool) -> None:
    """Predict tissue classes on regions and slides (out/<stem>/: labels.tiff, regions.geojson, areas.csv, ...).

    out/<stem>/summary.json and labels.png (regions) record the class scheme, which evaluate
    reads. On a rerun, a prediction made from the same input file, model and options is kept
    (an interrupted one resumes); one made otherwise is skipped unless --overwrite. Two
    inputs with the same file stem are refused. --flip-tta, --gate-window and --gate-power
    change what the checkpoint adds to the model at prediction, without retraining.
    """
    from ..checkpoint import InferenceChanges
    from ..infer import predict_files
    from ..io import list_images
    from ..schemes import load_scheme

    files = list_images(inputs, suffixes=SLIDE_SUFFIXES)
    result = predict_files(
        model_path, files, out, workers=workers, scheduler=scheduler, quiet=quiet, mpp=mpp, target_mpp=target_mpp,
        window=window, overlap=overlap, batch_size=batch_size, probabilities=probabilities,
        tissue={"auto": "auto", "on": True, "off": False}[tissue],
        device=device, scheme=load_scheme(scheme) if scheme else None, overwrite=overwrite,
        changes=InferenceChanges(flip_tta, gate_window, gate_power),
    )
    if not result.ok:
        raise ValueError("nothing predicted: " + "; ".join(reason for _, reason in result.skipped))
    rows = [r.to_dict() for r in result.ok]
    lines = [f"{'input':<32} {'size (px)':>13} {'MP':>7} {'s':>7} {'MP/s':>6}  areas (mm²)"]
    for r in result.ok:
        size = f"{r.size[0]}x{r.size[1]}"
        areas = ", ".join(f"{a['class']} {a['area_mm2']:.3g}" for a in r.areas if a["pixels"])
        rate = "done" if r.already_done else f"{r.megapixels / max(r.seconds, 1e-9):.2f}"
        lines.append(f"{Path(r.path).name[:32]:<32} {size:>13} {r.megapixels:>7.2f} {r.seconds:>7.1f} {rate:>6}  {areas}")
    lines.append(result.summary("images"))
    common.emit({"out": str(out), "results": rows, "skipped": [{"input": i, "reason": why} for i, why in result.skipped]},
                as_json, "\n".join(lines), skipped=len(result.skipped))
