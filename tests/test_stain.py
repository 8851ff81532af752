"""Stain normalisation on real H&E, blank tiles, jitter, and the normalize command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage.color import rgb2hed, rgb2lab
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

from tissueseg import io
from tissueseg.cli import main
from tissueseg.stain import fit_normalizer, stain_jitter


@pytest.fixture(scope="module")
def reference(kaggle_sample_dir) -> np.ndarray:
    return io.read_image(kaggle_sample_dir / "image" / "5067.png")


@pytest.fixture(scope="module")
def sources(nct_dir) -> list[np.ndarray]:
    """Unnormalised NCT tiles (a different lab and scanner from the BCSS reference)."""
    return [io.read_image(p) for p in sorted(nct_dir.glob("nct_crc_he_100k_nonorm/*/*.tif"))
            if p.name.split("-")[0] in ("DEB", "LYM", "MUS", "STR")]


def _stain_vectors(rgb: np.ndarray) -> np.ndarray:
    fit = NumpyMacenkoNormalizer()
    fit.fit(rgb)
    return fit.HERef / np.linalg.norm(fit.HERef, axis=0)


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(0), -1, 1)))


def test_macenko_moves_stain_vectors_to_reference(reference, sources):
    norm = fit_normalizer("macenko", reference)
    ref_vectors = _stain_vectors(reference)
    for rgb in sources:
        out = norm.transform(rgb)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        before, after = _angles(_stain_vectors(rgb), ref_vectors), _angles(_stain_vectors(out), ref_vectors)
        assert after.sum() < 0.5 * before.sum()
        assert after[0] < 1.0  # haematoxylin direction taken from the reference


def test_reinhard_matches_reference_lab_statistics(reference, sources):
    norm = fit_normalizer("reinhard", reference)
    ref_lab = rgb2lab(reference).reshape(-1, 3)
    for rgb in sources:
        lab_in, lab_out = rgb2lab(rgb).reshape(-1, 3), rgb2lab(norm.transform(rgb)).reshape(-1, 3)
        before = np.abs(lab_in.mean(0) - ref_lab.mean(0)).sum()
        after = np.abs(lab_out.mean(0) - ref_lab.mean(0)).sum()
        assert after < 0.5 * before
        assert np.abs(lab_out.std(0) - ref_lab.std(0)).sum() < np.abs(lab_in.std(0) - ref_lab.std(0)).sum()


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_blank_tile_passes_unchanged(reference, method):
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(235, 4, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert np.array_equal(fit_normalizer(method, reference).transform(glass), glass)
    with pytest.raises(ValueError, match="too little tissue"):
        fit_normalizer(method, glass)


def test_jitter_identity_and_bounds(reference):
    x = torch.from_numpy(reference[:64, :64].copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(stain_jitter(x, 0.0), x, atol=2e-5, rtol=0)
    batch = torch.stack([x, x.flip(2)])
    g = torch.Generator().manual_seed(3)
    out = stain_jitter(batch, 0.05, g)
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], x, atol=1e-3)
    # the perturbation is per image and per stain: H density changes by alpha*s + beta
    hed_in = rgb2hed(x.permute(1, 2, 0).numpy())
    hed_out = rgb2hed(out[0].permute(1, 2, 0).numpy())
    tissue = hed_in[..., 0] > 0.02
    ratio = np.median(np.abs(hed_out[..., 0][tissue] - hed_in[..., 0][tissue]))
    assert 0 < ratio < 0.1
    again = stain_jitter(batch, 0.05, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again)
    assert float((out - batch).abs().max()) < 0.35


def test_cli_normalize_writes_resumes_and_skips(tmp_path, kaggle_sample_dir, nct_dir):
    src = sorted(nct_dir.glob("nct_crc_he_100k_nonorm/*/*.tif"))[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "out"
    args = ["normalize", *map(str, src), str(bad), "--reference", str(kaggle_sample_dir / "image" / "5067.png"),
            "--out", str(out), "--quiet", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 3, res.output  # finished, with a skipped input
    summary = json.loads(res.stdout)
    assert len(summary["results"]) == 3 and len(summary["skipped"]) == 1 and "broken.png" in summary["skipped"][0]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.png" for p in src)
    assert io.read_image(out / f"{src[0].stem}.png").shape == (224, 224, 3)
    again = json.loads(CliRunner().invoke(main, args).stdout)
    assert again["counts"] == {"kept": 3}
    # another method made the outputs: refused per image (the files stay), replaced with --overwrite
    before = (out / f"{src[0].stem}.png").read_bytes()
    other = json.loads(CliRunner().invoke(main, [*args, "--method", "reinhard"]).stdout)
    assert not other["results"] and len(other["skipped"]) == 4
    assert all("--overwrite" in r for r in other["skipped"] if "broken" not in r)
    assert (out / f"{src[0].stem}.png").read_bytes() == before
    redo = json.loads(CliRunner().invoke(main, [*args, "--method", "reinhard", "--overwrite"]).stdout)
    assert sum(redo["counts"].values()) == 3 and "kept" not in redo["counts"]
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / src[0].name).write_bytes(src[0].read_bytes())
    dup = CliRunner().invoke(main, [*args[:-2], str(twin), "--quiet"])
    assert dup.exit_code == 1 and f"{src[0]} and {twin / src[0].name}: two images share the name" in dup.output
