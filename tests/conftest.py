"""Shared fixtures: the real data in ../shared (tests skip cleanly when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from tests
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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


@pytest.fixture(scope="session")
def bcss_masks_dir() -> Path:
    """The four real full-region BCSS masks (codes 0..21)."""
    return _shared("bcss/masks")


@pytest.fixture(scope="session")
def bcss_meta_dir() -> Path:
    return _shared("bcss/meta")


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
def bcss_wsss_dir() -> Path:
    """The real BCSS-WSSS sample in its published layout (training/, val/img, val/mask)."""
    return _shared("bcss-wsss-sample")
