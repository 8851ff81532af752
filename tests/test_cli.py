"""What every command shares: exit statuses, warnings on stderr, -v."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tissueseg import io
from tissueseg.cli import main
from tissueseg.synth import make_region


def test_help_documents_the_exit_statuses():
    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert ("Exit status: 0 done; 1 error (a one-line message on stderr); 2 bad command line; 3 finished, but "
            "some inputs were skipped (listed in the summary); 130 interrupted") in text
    assert "-v, --verbose" in text


def _inputs(tmp_path: Path) -> tuple[list[Path], list[Path], Path]:
    """Two generated H&E regions and masks, plus one corrupt file of each kind."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(2):
        rgb, codes = make_region((48, 64), seed=i)
        io.write_png(images / f"r{i}.png", rgb)
        io.write_png(masks / f"r{i}.png", codes)
    for folder in (images, masks):
        (folder / "zbroken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return sorted(images.iterdir()), sorted(masks.iterdir()), images


@pytest.mark.parametrize("command", ["stats", "colorize", "normalize"])
def test_a_batch_with_one_bad_file_finishes_with_exit_status_3(tmp_path, command):
    images, masks, image_dir = _inputs(tmp_path)
    args = {"stats": ["stats", "--scheme", "bcss5"], "colorize": ["colorize", "--images", str(image_dir)],
            "normalize": ["normalize", "--reference", str(images[0]), "--method", "reinhard"]}[command]
    inputs = images if command == "normalize" else masks
    clean = CliRunner().invoke(main, [*args, *map(str, inputs[:2]), "--out", str(tmp_path / "clean"), "-q"])
    assert clean.exit_code == 0, clean.output
    res = CliRunner().invoke(main, [*args, *map(str, inputs), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 3, res.output
    assert f"skipped {inputs[2]}: cannot decode image" in res.output and "2 " in res.output


def test_warnings_reach_stderr_and_verbose_adds_notes(tmp_path):
    _, masks, image_dir = _inputs(tmp_path)
    grey = io.read_image(image_dir / "r1.png").mean(axis=2).astype(np.uint8)
    io.write_png(image_dir / "r1.png", np.dstack([grey] * 3))
    args = ["colorize", *map(str, masks[:2]), "--images", str(image_dir), "-q", "-j", "2"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert f"WARNING: {image_dir / 'r1.png'}: read as H&E but greyscale (all three channels equal)" in res.stderr
    assert "INFO" not in res.stderr
    res = CliRunner().invoke(main, ["-v", *args, "--out", str(tmp_path / "b")])
    assert "INFO: 2 worker processes (spawn)" in res.stderr and "WARNING" in res.stderr


def test_ctrl_c_ends_in_exit_status_130(tmp_path, monkeypatch):
    _, masks, _ = _inputs(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tissueseg.stats.dataset_stats", interrupted)
    res = CliRunner().invoke(main, ["stats", str(masks[0]), "--out", str(tmp_path / "o")])
    assert res.exit_code == 130 and "interrupted; rerun the same command to resume" in res.output
