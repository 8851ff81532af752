"""Does a model trained on generated H&E carry over to real tissue?

For every textures setting and seed: generate the demo's training data (``demo_config``'s
numbers: 9 random-layout regions of 1024 px, data seed = seed), tile it as the demo does
(128 px, stride 64, bcss-sites split), train the demo's FULL model with the demo's budget
(DeepLabv3+ / EfficientNet-Lite0 ImageNet, 200 steps x batch 8, run seed = seed; best.pt by
generated validation mIoU, as the demo keeps), then predict the real BCSS region
TCGA-A1-A0SK (``region-a0sk``, never used for textures) with tissue detection off and the
demo's window and overlap, and score it against its real mask (bcss5). The goal figure is
the mean IoU over tumour, stroma and necrosis. The held-out generated regions the demo
predicts (test split, at most 2) are scored too, for the gap between the two.

Run: OMP_NUM_THREADS=1 python bench/transfer.py --textures none builtin --seeds 0 1
     [--region ../shared/data/bcss/region-a0sk] [--threads 1] [--out bench-out/transfer] [--keep]
Writes <out>/transfer.md (the table) and <out>/transfer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

REGION = Path(__file__).resolve().parents[2] / "shared" / "data" / "bcss" / "region-a0sk"
GOAL_CLASSES = ("tumor", "stroma", "necrosis")


def score(pred_png: Path, mask: Path, scheme) -> dict:
    """bcss5 scores of a predicted label PNG against a real code mask."""
    from tissueseg import io
    from tissueseg.metrics import confusion_matrix, scores

    cm = confusion_matrix(io.read_mask(pred_png), scheme.apply(io.read_mask(mask)), scheme.num_classes)
    return scores(cm, scheme.names) | {"confusion": cm.tolist()}


def predict_and_score(predictor, pairs: list[tuple[Path, Path]], out: Path, window: int, overlap: float) -> dict:
    """Predict every image (tissue detection off) and score all of them together."""
    from tissueseg.infer import predict_image
    from tissueseg.metrics import scores

    cm = np.zeros((predictor.scheme.num_classes,) * 2, np.int64)
    for image, mask in pairs:
        res = predict_image(predictor, image, out, window=window, overlap=overlap, tissue=False, device="cpu",
                            quiet=True, overwrite=True)
        cm += np.asarray(score(Path(res.outputs["labels.png"]), mask, predictor.scheme)["confusion"])
    return scores(cm, predictor.scheme.names) | {"confusion": cm.tolist()}


def run_one(textures: str, seed: int, region: Path, work: Path) -> dict:
    """Generate, tile, train and score one setting; returns the scores and timings."""
    from tissueseg.checkpoint import load_predictor
    from tissueseg.config import TrainConfig
    from tissueseg.manifest import find_dataset, load_manifest, pair_files, tile_dataset
    from tissueseg.pipeline import demo_config
    from tissueseg.schemes import load_scheme
    from tissueseg.synth import make_dataset
    from tissueseg.train import train

    cfg = demo_config(work)
    scheme = load_scheme(cfg.scheme)
    t0 = time.perf_counter()
    make_dataset(work / "data", n=9, size=1024, seed=seed, textures=textures, quiet=True)
    t_synth = time.perf_counter() - t0
    pairs, _, _ = pair_files(*find_dataset(work / "data"))
    t = cfg.tile
    tile_dataset(pairs, work / "tiles", scheme, size=t.size, stride=t.stride, edge=t.edge, min_roi=t.min_roi,
                 label_threshold=t.label_threshold, split=t.split, val_fraction=t.val_fraction,
                 test_fraction=t.test_fraction, seed=t.seed, quiet=True)
    spec = json.loads(json.dumps(cfg.train["full"]))
    spec.setdefault("data", {})["manifest"] = str(work / "tiles" / "manifest.parquet")
    spec["run"] |= {"out": str(work / "train"), "seed": seed, "device": "cpu"}
    t0 = time.perf_counter()
    result = train(TrainConfig.model_validate(spec), quiet=True, overwrite=True)
    t_train = time.perf_counter() - t0
    predictor = load_predictor(result.best or result.last)
    window, overlap = cfg.predict.window, cfg.predict.overlap
    t0 = time.perf_counter()
    real_pairs, _, _ = pair_files(*find_dataset(region))
    real = predict_and_score(predictor, real_pairs, work / "pred-real", window, overlap)
    t_real = time.perf_counter() - t0
    manifest, _ = load_manifest(work / "tiles")
    held = manifest.loc[manifest["split"] == cfg.predict.split, ["image_path", "mask_path"]].drop_duplicates()
    held = held.sort_values("image_path").head(cfg.predict.max_regions)
    generated = predict_and_score(predictor, [(Path(i), Path(m)) for i, m in held.itertuples(index=False)],
                                  work / "pred-generated", window, overlap)
    iou = {n: real["per_class"][n]["iou"] for n in scheme.names}
    return {
        "textures": textures, "seed": seed, "real_iou": iou,
        "real_recall": {n: real["per_class"][n]["recall"] for n in scheme.names},
        "goal_miou": float(np.mean([iou[n] for n in GOAL_CLASSES])), "real_miou": real["miou"],
        "real_confusion": real["confusion"],
        "generated_miou": generated["miou"], "best_step": result.best_step, "best_val_miou": result.best_miou,
        "seconds": {"synth": round(t_synth, 1), "train": round(t_train, 1), "predict_real": round(t_real, 1)},
    }


def table(rows: list[dict]) -> str:
    names = list(rows[0]["real_iou"])
    head = ["textures", "seed", *[f"IoU {n}" for n in names], "mIoU tum/str/nec", "mIoU (real, all)",
            "mIoU (generated held-out)", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["textures"], str(r["seed"]), *[f"{r['real_iou'][n]:.3f}" for n in names], f"**{r['goal_miou']:.3f}**",
                 f"{r['real_miou']:.3f}", f"{r['generated_miou']:.3f}", f"{r['seconds']['train']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--textures", nargs="+", default=["none", "builtin"],
                    help="textures settings of tissueseg.synth.make_dataset (none = procedural only)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="data and training seeds")
    ap.add_argument("--region", type=Path, default=REGION, help="real BCSS folder scored on (rgbs + masks)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=Path("bench-out/transfer"))
    ap.add_argument("--keep", action="store_true", help="keep each run's data, model and predictions in <out>/runs/")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if not args.region.is_dir():
        raise SystemExit(f"{args.region}: no such folder (give --region)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for textures in args.textures:
        for seed in args.seeds:
            if args.keep:
                row = run_one(textures, seed, args.region, args.out / "runs" / f"{Path(textures).name}-{seed}")
            else:
                with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
                    row = run_one(textures, seed, args.region, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = table(rows)
    (args.out / "transfer.md").write_text(text + "\n")
    (args.out / "transfer.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
