"""Label grids from label maps and manifests, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tissueseg import io
from tissueseg.manifest import tile_image
from tissueseg.schemes import IGNORE, ClassDef, ClassScheme
from tissueseg.weak import labelgrid


def _labels() -> np.ndarray:
    """A 4x6 label map = a 2x3 grid of 2x2 cells: pure 0 | mixed 0/1 | ignore / pure 2 | 1 + one 2 | 2."""
    return np.array([
        [0, 0, 0, 1, IGNORE, IGNORE],
        [0, 0, 0, 1, IGNORE, IGNORE],
        [2, 2, 1, 1, 2, 2],
        [2, 2, 1, 2, 2, 2],
    ], np.uint8)


def test_cell_labels_follow_the_threshold_and_ignore():
    g = labelgrid.cell_labels(_labels(), 2, 3, threshold=0.3)
    assert g.shape == (2, 3, 3)
    assert g[0, 0].tolist() == [1, 0, 0]
    assert g[0, 1].tolist() == [1, 1, 0]
    assert g[0, 2].tolist() == [0, 0, 0]  # outside the ROI: no label
    assert g[1, 1].tolist() == [0, 1, 0]  # one pixel of 2 in 4 = 0.25 < 0.3
    assert labelgrid.cell_labels(_labels(), 2, 3, threshold=0.2)[1, 1].tolist() == [0, 1, 1]


def test_cell_labels_pad_the_last_partial_cell():
    g = labelgrid.cell_labels(_labels(), 4, 3, threshold=0.05)
    assert g.shape == (1, 2, 3)
    assert g[0, 1].tolist() == [0, 0, 1]  # columns 4..5 (past the border: padding): class 2 and ignore only
    assert g[0, 0].tolist() == [1, 1, 1]


def test_grid_from_manifest_equals_cell_labels(tmp_path):
    scheme = ClassScheme("abc", tuple(ClassDef(n, (i * 60, 0, 0), (i + 1,)) for i, n in enumerate("abc")))
    rng = np.random.default_rng(0)
    codes = np.repeat(np.repeat(rng.integers(0, 4, (6, 8)), 8, 0), 8, 1).astype(np.uint8)  # 48x64, 8-px blocks
    codes[:5, :3] = 2  # a sliver across cells
    io.write_png(tmp_path / "r.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    io.write_png(tmp_path / "m.png", codes)
    df = tile_image(tmp_path / "r.png", tmp_path / "m.png", scheme, size=16, stride=16, edge="pad", min_roi=0.0,
                    mpp=0.25)
    grids = labelgrid.grids_from_manifest(df, scheme)
    expected = labelgrid.cell_labels(scheme.apply(codes), 16, 3, threshold=0.05)
    assert list(grids) == [str((tmp_path / "r.png").resolve())]
    np.testing.assert_array_equal(next(iter(grids.values())), expected)


def test_grid_from_manifest_refuses_overlapping_tiles(tmp_path):
    scheme = ClassScheme("a", (ClassDef("a", (1, 2, 3), (1,)),))
    io.write_png(tmp_path / "r.png", np.zeros((32, 32, 3), np.uint8))
    io.write_png(tmp_path / "m.png", np.ones((32, 32), np.uint8))
    df = tile_image(tmp_path / "r.png", tmp_path / "m.png", scheme, size=16, stride=8, mpp=0.25)
    with pytest.raises(ValueError, match="grid"):
        labelgrid.grids_from_manifest(df, scheme)
