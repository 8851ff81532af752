"""DDP training (two CPU processes, gloo) matches one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from tissueseg.config import load_config
from tissueseg.manifest import load_manifest, tile_dataset
from tissueseg.schemes import bcss5
from tissueseg.synth import make_dataset

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def uneven_tiles(tmp_path_factory) -> Path:
    """Four generated 256 px regions in 64 px patches (one for val); in two of the train regions the
    top three patch rows are outside the ROI (ignored pixels, no image labels), so the labelled
    pixels and images of a global batch are spread unevenly over the processes."""
    root = tmp_path_factory.mktemp("ddp")
    pairs = make_dataset(root / "synth", n=4, size=256, seed=0, quiet=True)
    tile_dataset(pairs, root / "tiles", bcss5(), size=64, stride=64, split="slide", val_fraction=0.25,
                 test_fraction=0.0, quiet=True)
    df, _ = load_manifest(root / "tiles")
    blanked = sorted(df.loc[df["split"] == "train", "mask_path"].unique())[:2]
    for path in blanked:
        codes = np.array(Image.open(path))
        codes[:192] = 0  # outside_roi
        Image.fromarray(codes).save(path)
    rows = df["mask_path"].isin(blanked) & (df["y"] < 192)
    df.loc[rows, [c for c in df if c.startswith("label_")]] = 0
    df.to_parquet(root / "tiles" / "manifest.parquet")
    return root / "tiles"


def _overrides(tiles: Path, out: Path, loss: str) -> list[str]:
    return [f"data.manifest={tiles}", f"run.out={out}", "model.arch=fcn", "model.weights=none",
            "model.freeze_bn=true", f"method={'full' if loss == 'ce' else 'mil'}", f"loss.name={loss}", "run.batch_size=4", f"run.steps={STEPS}",
            "run.log_every=1", f"run.val_every={STEPS}", "run.checkpoint_every=2", "run.device=cpu",
            "data.stain_jitter=0.1", "optim.lr=0.003"]


def _run(overrides: list[str], record: Path, crash_at: int | None = None) -> None:
    """Train, recording for every training step the sample indices and this process's loss parts."""
    import tissueseg.train as T

    torch.set_num_threads(1)
    steps: list[dict] = []
    real_batch, real_build = T._batch, T.build_supervision

    def batch(b, *args):
        if torch.is_grad_enabled():
            steps.append({"index": b["index"].tolist()})
        return real_batch(b, *args)

    def build(method, ctx):
        sup = real_build(method, ctx)
        real_loss = sup.loss

        def loss(*args):
            p = real_loss(*args)
            if torch.is_grad_enabled():
                steps[-1].update(total=float(p.total.detach()), count=float(p.count))
                if len(steps) == crash_at:
                    raise RuntimeError("killed")
            return p

        sup.loss = loss
        return sup

    T._batch, T.build_supervision = batch, build
    summary: dict = {"steps": steps}
    try:
        result = T.train(load_config(None, overrides), quiet=True)
        summary["history"] = result.history[["step", "train_loss", "val_miou", "val_loss"]].to_dict("list")
    finally:
        T._batch, T.build_supervision = real_batch, real_build
        record.write_text(json.dumps(summary))


def _worker(rank: int, world: int, port: int, overrides: list[str], records: Path, crash_at: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    _run(overrides, records / f"rank{rank}.json", crash_at)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(overrides: list[str], records: Path, crash_at: int | None = None) -> list[dict]:
    records.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(2, _free_port(), overrides, records, crash_at), nprocs=2, join=True)
    return [json.loads((records / f"rank{r}.json").read_text()) for r in range(2)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("loss", ["ce", "mil-max"])
def test_two_processes_match_one_on_the_same_global_batch(uneven_tiles, tmp_path, loss):
    one_rec = tmp_path / "one.json"
    _run(_overrides(uneven_tiles, tmp_path / "one", loss), one_rec)
    one = json.loads(one_rec.read_text())
    two = _spawn(_overrides(uneven_tiles, tmp_path / "two", loss), tmp_path / "records")

    # both processes ran every step on their half of the same global batch
    assert len(one["steps"]) == STEPS and all(len(r["steps"]) == STEPS for r in two)
    for s, full in enumerate(one["steps"]):
        assert len(full["index"]) == 4 and [len(r["steps"][s]["index"]) for r in two] == [2, 2]
        assert two[0]["steps"][s]["index"] == full["index"][0::2]
        assert two[1]["steps"][s]["index"] == full["index"][1::2]
    # the processes' shares really differ in what counts, so a per-process mean would not match
    naive = [np.mean([r["steps"][s]["total"] / max(r["steps"][s]["count"], 1) for r in two]) for s in range(STEPS)]
    exact = [sum(r["steps"][s]["total"] for r in two) / sum(r["steps"][s]["count"] for r in two)
             for s in range(STEPS)]
    assert max(abs(a - b) / b for a, b in zip(naive, exact)) > 0.05, (naive, exact)

    losses = one["history"]["train_loss"]
    assert one["history"]["step"] == [1, 2, 3] and losses[0] > 0
    for r in two:  # every process logs the global loss
        assert r["history"]["step"] == [1, 2, 3]
        np.testing.assert_allclose(r["history"]["train_loss"], losses, rtol=1e-5)
        np.testing.assert_allclose(r["history"]["val_loss"][-1], one["history"]["val_loss"][-1], rtol=1e-5)
        assert r["history"]["val_miou"][-1] == pytest.approx(one["history"]["val_miou"][-1], abs=1e-3)
    np.testing.assert_allclose(exact, losses, rtol=1e-5)
    _assert_same_weights(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")
    assert (tmp_path / "two" / "best.pt").is_file() and (tmp_path / "two" / "metrics.csv").is_file()


def test_ddp_resumes_after_a_crash(uneven_tiles, tmp_path):
    overrides = _overrides(uneven_tiles, tmp_path / "two", "ce")
    with pytest.raises(Exception, match="killed"):
        _spawn(overrides, tmp_path / "crashed", crash_at=3)  # both processes die in step 3: last.pt of step 2
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["state"]["step"] == 2
    resumed = _spawn(overrides, tmp_path / "resumed")
    assert [len(r["steps"]) for r in resumed] == [1, 1]  # only step 3 was trained again
    assert resumed[0]["history"]["step"] == [1, 2, 3]

    _run(_overrides(uneven_tiles, tmp_path / "one", "ce"), tmp_path / "one.json")
    _assert_same_weights(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["state"]
    assert len(state["rng_ranks"]) == 2 and not torch.equal(state["rng_ranks"][0]["torch"],
                                                            state["rng_ranks"][1]["torch"])
