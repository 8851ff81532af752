import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image

from tissueseg.batch import available_cores, run_batch
from tissueseg.io import (InputError, atomic_path, encode_png, list_images, png_text, read_image, read_mask,
                          write_json, write_png)

from .conftest import modes

MARK = "as imported"


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)


def test_read_image_normalises_every_mode_to_rgb(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[0, 0, 3] = 0  # transparent pixel -> white (glass)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == rgb.shape and out[0, 0].tolist() == [255, 255, 255] and np.array_equal(out[1:], rgb[1:])
    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(read_image(tmp_path / "grey.png"), np.dstack([grey] * 3))
    Image.fromarray(rgb).quantize(8).save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == rgb.shape
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert np.array_equal(read_image(tmp_path / "g16.png")[..., 0], grey)


def test_read_mask_modes_and_refusals(tmp_path):
    codes = np.arange(20, dtype=np.uint8).reshape(4, 5)
    Image.fromarray(codes).save(tmp_path / "l.png")
    assert np.array_equal(read_mask(tmp_path / "l.png"), codes)
    write_png(tmp_path / "p.png", codes, palette=[0] * 768)
    assert np.array_equal(read_mask(tmp_path / "p.png"), codes)
    Image.fromarray(codes.astype(np.uint16)).save(tmp_path / "16.png")
    assert np.array_equal(read_mask(tmp_path / "16.png"), codes)
    Image.fromarray(codes.astype(np.uint16) * 300).save(tmp_path / "big.png")
    with pytest.raises(InputError, match=r"big.png: mask values 0\.\.5700 do not fit"):
        read_mask(tmp_path / "big.png")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="rgb.png: mask must be single-channel"):
        read_mask(tmp_path / "rgb.png")


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for name in ("trunc.png", "junk.png", "missing.png"):
        with pytest.raises(InputError) as err:
            read_image(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name) + ": ") and "\n" not in str(err.value)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.png"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []
    write_png(target, np.zeros((3, 3), np.uint8))
    assert target.exists() and [p.name for p in target.parent.iterdir()] == ["out.png"]


def test_written_files_follow_the_umask(tmp_path, umask):
    write_png(tmp_path / "sub" / "a.png", np.zeros((3, 3), np.uint8), text={"k": "v"})
    write_json(tmp_path / "b.json", {"x": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"c")
    assert modes(tmp_path) == {"sub": 0o777 & ~umask, "sub/a.png": 0o666 & ~umask, "b.json": 0o666 & ~umask,
                               "c.bin": 0o666 & ~umask}
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "d.jpg")
    assert png_text(tmp_path / "sub" / "a.png") == {"k": "v"} and png_text(tmp_path / "d.jpg") == {}


def test_list_images_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder holds no image files"):
        list_images([tmp_path / "empty"])
    with pytest.raises(InputError, match="nope: no such file or folder"):
        list_images([tmp_path / "nope"])


def _square(x: int) -> int:
    if x == 3:
        raise InputError(f"item{x}.png", "broken")
    if x == 5:
        raise ValueError("bad value")
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_run_batch_skips_and_reports_in_order(workers):
    res = run_batch(_square, list(range(7)), workers=workers, quiet=True)
    assert res.ok == [0, 1, 4, 16, 36]
    assert res.skipped == [("3", "item3.png: broken"), ("5", "5: bad value")]
    assert "5 files done, 2 skipped" in res.summary()


def test_run_batch_on_a_local_dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = run_batch(_square, list(range(7)), scheduler=cluster.scheduler_address, quiet=True)
    assert res.ok == [0, 1, 4, 16, 36] and len(res.skipped) == 2


def _probe(_: int) -> dict:
    """What a worker sees: its threads (torch and OpenCV imported only now), and MARK."""
    import cv2
    import torch

    from tissueseg.batch import thread_budget

    return {"pid": os.getpid(), "torch": torch.get_num_threads(), "cv2": cv2.getNumThreads(),
            "omp": os.environ.get("OMP_NUM_THREADS"), "budget": thread_budget(), "mark": MARK}


def test_pool_workers_are_spawned_with_their_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "MARK", "changed in the parent")
    res = run_batch(_probe, list(range(4)), workers=2, quiet=True)
    share = max(1, available_cores() // 2)
    assert len(res.ok) == 4 and os.getpid() not in {r["pid"] for r in res.ok}
    for r in res.ok:
        assert r["mark"] == "as imported"  # spawned: a forked worker would see the parent's change
        assert r["torch"] == r["cv2"] == r["budget"] == share and r["omp"] == str(share)


def _log_and_square(x: int) -> int:
    logging.getLogger("tissueseg.test_worker").warning("item %d", x)
    return x * x


def test_worker_log_records_reach_the_parent_loggers(caplog):
    with caplog.at_level(logging.WARNING, logger="tissueseg"):
        res = run_batch(_log_and_square, [1, 2, 3], workers=2, quiet=True)
    assert res.ok == [1, 4, 9]
    records = [r for r in caplog.records if r.name == "tissueseg.test_worker"]
    assert sorted(r.getMessage() for r in records) == ["item 1", "item 2", "item 3"]
    assert all(r.process != os.getpid() for r in records)


def test_huge_images_are_read_without_lifting_pil_guard_for_others(tmp_path, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1200 px is a "bomb" to PIL now
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    assert np.array_equal(read_image(tmp_path / "big.png"), rgb)  # our reads have their own limit
    assert Image.MAX_IMAGE_PIXELS == 100
    monkeypatch.setattr("tissueseg.io.MAX_PIXELS", 1000)
    with pytest.raises(InputError, match=r"big.png: 30x40 px is more than tissueseg reads \(1000 px\)"):
        read_image(tmp_path / "big.png")


def test_greyscale_and_odd_modes_read_as_he_are_named_in_a_warning(tmp_path, rgb, caplog):
    grey = rgb[..., 0]
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "grey_rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey_l.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    with caplog.at_level(logging.WARNING, logger="tissueseg"):
        for name in ("grey_rgb.png", "grey_l.png", "alpha.png", "plain.png"):
            read_image(tmp_path / name)
    messages = {r.getMessage() for r in caplog.records if r.name == "tissueseg.io"}
    assert messages == {
        f"{tmp_path / 'grey_rgb.png'}: read as H&E but greyscale (all three channels equal)",
        f"{tmp_path / 'grey_l.png'}: read as H&E but mode L converted to RGB; greyscale (all three channels equal)",
        f"{tmp_path / 'alpha.png'}: read as H&E but mode RGBA converted to RGB",
    }


@pytest.mark.parametrize("shape", [(9, 12), (9, 12, 3), (9, 12, 4)])
def test_encode_png_is_lossless_for_views_and_every_channel_count(tmp_path, shape):
    big = np.random.default_rng(1).integers(0, 256, (20, 30) + shape[2:], dtype=np.uint8)
    view = big[3:12, 5:17]  # a crop: not contiguous
    (tmp_path / "v.png").write_bytes(encode_png(view))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "v.png")), view)
    labels = big[3:12, 5:17, 0] if len(shape) == 3 else view
    (tmp_path / "p.png").write_bytes(encode_png(labels, palette=list(range(256)) * 3))
    pal = Image.open(tmp_path / "p.png")
    assert pal.mode == "P" and np.array_equal(np.asarray(pal), labels)
