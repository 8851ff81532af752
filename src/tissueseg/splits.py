"""Where a region comes from (BCSS names) and train/val/test splits that never share a slide."""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pandas as pd

SplitMethod = Literal["slide", "bcss-sites", "none"]
SPLIT_METHODS: tuple[str, ...] = ("slide", "bcss-sites", "none")

BCSS_TEST_SITES: frozenset[str] = frozenset({"OL", "LL", "E2", "EW", "GM", "S3"})
"""TCGA tissue-source sites held out for testing in the BCSS paper (Amgad et al. 2019)."""

_TCGA = re.compile(r"^TCGA-(?P<site>[A-Z0-9]{2})-[A-Z0-9]{4}", re.IGNORECASE)
_REGION = re.compile(r"^(?P<slide>.+?)_xmin(?P<x>\d+)_ymin(?P<y>\d+)(?:_MPP-(?P<mpp>\d+(?:\.\d+)?))?")


def parse_bcss_name(stem: str) -> dict:
    """``slide_id``, ``patient_id``, ``site``, ``xmin``, ``ymin``, ``mpp`` from a BCSS region name.

    ``TCGA-A2-A0SX-DX1_xmin53791_ymin56683_MPP-0.2500`` gives slide ``TCGA-A2-A0SX-DX1``,
    patient ``TCGA-A2-A0SX``, site ``A2``, 53791, 56683, 0.25. Other names give
    ``slide_id = stem`` and ``None`` for what they do not say.
    """
    region = _REGION.match(stem)
    slide = region["slide"] if region else stem
    tcga = _TCGA.match(slide)
    return {
        "slide_id": slide,
        "patient_id": tcga[0].upper() if tcga else None,
        "site": tcga["site"].upper() if tcga else None,
        "xmin": int(region["x"]) if region else None,
        "ymin": int(region["y"]) if region else None,
        "mpp": float(region["mpp"]) if region and region["mpp"] else None,
    }


def check_split(method: str, val_fraction: float = 0.2, test_fraction: float = 0.0) -> None:
    """``ValueError`` unless the method is known and the fractions leave room for train."""
    if method not in SPLIT_METHODS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_METHODS)} (got {method!r})")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1 "
                         f"(got {val_fraction}, {test_fraction})")


def assign_splits(
    df: pd.DataFrame,
    method: SplitMethod = "slide",
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> pd.Series:
    """``"train"``/``"val"``/``"test"`` for every row of ``df`` (needs ``slide_id``; ``site``
    and ``patient_id`` are used when present).

    - ``slide``: whole slides go to one side: the slides (grouped by patient when the
      patient is known, so two slides of one patient stay together) are shuffled with
      ``seed`` and the first ``test_fraction`` / ``val_fraction`` of them (by count, at least
      one each when the fraction is positive and two or more groups exist) become test / val.
    - ``bcss-sites``: slides from the BCSS test sites (:data:`BCSS_TEST_SITES`) are test; the
      rest is split train/val by slide as above (``test_fraction`` is not used).
    - ``none``: every row is train.
    """
    check_split(method, val_fraction, test_fraction)
    split = pd.Series("train", index=df.index, dtype=object)
    if method == "none" or df.empty:
        return split
    group = df["slide_id"].astype(str)
    if "patient_id" in df:
        group = df["patient_id"].where(df["patient_id"].notna(), group).astype(str)
    rest = np.ones(len(df), dtype=bool)
    if method == "bcss-sites":
        rest = ~df["site"].isin(BCSS_TEST_SITES).to_numpy() if "site" in df else rest
        split[~rest] = "test"
        test_fraction = 0.0
    groups = np.random.default_rng(seed).permutation(np.unique(group[rest]))
    n_test, n_val = _count(test_fraction, len(groups)), _count(val_fraction, len(groups))
    split[group.isin(groups[:n_test]) & rest] = "test"
    split[group.isin(groups[n_test : n_test + n_val]) & rest] = "val"
    return split


def _count(fraction: float, n: int) -> int:
    """Groups to take for ``fraction`` of ``n``: rounded, at least 1 when asked and n >= 2."""
    if fraction <= 0 or n < 2:
        return 0
    return max(1, int(round(fraction * n)))
