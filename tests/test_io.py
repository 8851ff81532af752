import numpy as np
import pytest
from PIL import Image

from tissueseg.batch import run_batch
from tissueseg.io import InputError, atomic_path, list_images, png_text, read_image, read_mask, write_json, write_png

from .conftest import modes


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
