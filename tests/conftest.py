"""Shared fixtures: the real data in ../shared (tests skip cleanly when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from tests
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(os.environ.get("TISSUESEG_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))
"""``../shared/data`` next to the checkout; ``TISSUESEG_SHARED_DATA`` points elsewhere (e.g. from a worktree)."""


REQUIRE_SHARED = os.environ.get("TISSUESEG_REQUIRE_SHARED", "") not in ("", "0")
"""Set in CI (.ci/run): a test that needs ../shared fails instead of skipping when it is absent."""


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        if REQUIRE_SHARED:
            pytest.fail(f"real data not available: {path} (TISSUESEG_REQUIRE_SHARED is set)")
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def one_thread():
    """One intra-op torch thread: on 2 shared cores, two threads per process oversubscribe badly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest):
    """Run the test under a umask (and restore it after): outputs must follow it."""
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of everything under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def bcss_masks_dir() -> Path:
    """The four real full-region BCSS masks (codes 0..21)."""
    return _shared("bcss/masks")


@pytest.fixture(scope="session")
def bcss_meta_dir() -> Path:
    return _shared("bcss/meta")


@pytest.fixture(scope="session")
def bcss_region_dir() -> Path:
    """One real BCSS region (TCGA-A1-A0SK, 3136 x 2240 at 0.25 µm/px, all tissue) and its mask, in the BCSS layout."""
    return _shared("bcss/region-a0sk")


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    """Two real Aperio SVS slides."""
    return _shared("slides")


@pytest.fixture(scope="session")
def kaggle_sample_dir() -> Path:
    """Two real 512x512 BCSS H&E patches (binary masks)."""
    return _shared("bcss/kaggle512_binary_sample")


@pytest.fixture(scope="session")
def nct_dir() -> Path:
    """A few real NCT-CRC-HE tiles per tissue class."""
    return _shared("nct_crc_he_samples")


@pytest.fixture(scope="session")
def nct_mosaic(nct_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Real 224 px NCT-CRC tiles at 0.5 µm/px laid out as tissue on glass.

    Rows of the three CRC-VAL-HE-7K tiles of MUC, ADI (fat between other tissue, as in a
    section), STR and NORM, with the real BACK tile (glass) between the tiles and all
    around: ``(rgb (1344, 1568, 3), class index per pixel with -1 = BACK, class names)``.
    """
    from tissueseg.io import read_image

    names = ["ADI", "MUC", "STR", "NORM"]
    back = read_image(next(nct_dir.glob("*/BACK/*")))
    rows, classes = [np.concatenate([back] * 7, axis=1)], [[-1] * 7]
    for name in ("MUC", "ADI", "STR", "NORM"):
        tiles = [read_image(p) for p in sorted(nct_dir.glob(f"crc_val_he_7k/{name}/*.png"))]
        rows.append(np.concatenate([back, tiles[0], back, tiles[1], back, tiles[2], back], axis=1))
        classes.append([-1, *[names.index(name), -1] * 2, names.index(name), -1])
    rows.append(rows[0])
    classes.append(classes[0])
    return np.concatenate(rows), np.kron(np.array(classes), np.ones((224, 224), dtype=int)), names


@pytest.fixture(scope="session")
def bcss_wsss_dir() -> Path:
    """The real BCSS-WSSS sample in its published layout (training/, val/img, val/mask)."""
    return _shared("bcss-wsss-sample")
