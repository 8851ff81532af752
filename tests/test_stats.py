import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tissueseg import io
from tissueseg.cli import main
from tissueseg.schemes import bcss5, bcss22
from tissueseg.stats import class_weights, count_classes, count_codes, dataset_stats, plot_proportions


def _reference(mask: np.ndarray) -> np.ndarray:
    values, counts = np.unique(mask, return_counts=True)
    ref = np.zeros(256, np.int64)
    ref[values] = counts
    return ref


def _readme_counts(readme) -> dict[str, dict[int, int]]:
    """The per-code pixel table of the BCSS README (section 2), an independent source."""
    rows = re.findall(r"^\| (TCGA\S+\.png) \| \d+ x \d+ \| ([\d: ]+) \|$", readme.read_text(), re.M)
    return {name: {int(c): int(n) for c, n in (kv.split(":") for kv in cells.split())} for name, cells in rows}


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (4097, 4099)])  # the last one spans two 2**24 chunks
def test_count_codes_matches_np_unique_on_generated_masks(shape):
    rng = np.random.default_rng(shape[0])
    mask = rng.integers(0, 256, shape).astype(np.uint8)
    mask[: shape[0] // 2] = 3  # one dominant code, as in real masks
    counts = count_codes(mask)
    assert counts.dtype == np.int64 and counts.shape == (256,)
    np.testing.assert_array_equal(counts, _reference(mask))
    np.testing.assert_array_equal(count_codes(mask[:, ::2]), _reference(mask[:, ::2]))  # non-contiguous view


def test_count_classes_folds_codes_and_refuses_unknown_ones():
    mask = np.array([[0, 0, 1, 19], [20, 7, 2, 2]], np.uint8)
    per_class, ignored = count_classes(mask, bcss5())
    assert ignored == 3  # two outside_roi + one exclude
    assert dict(zip(bcss5().names, per_class.tolist())) == {
        "tumor": 3, "stroma": 2, "inflammatory": 0, "necrosis": 0, "other": 0}
    with pytest.raises(ValueError, match=r"\[99\]"):
        count_classes(np.array([[99]], np.uint8), bcss22())


def test_real_bcss_masks_match_np_unique_and_the_dataset_readme(bcss_masks_dir):
    table = _readme_counts(bcss_masks_dir.parent / "README.md")
    files = sorted(bcss_masks_dir.glob("*.png"))
    assert len(table) == len(files) == 4
    for f in files:
        mask = io.read_mask(f)
        counts = count_codes(mask)
        np.testing.assert_array_equal(counts, _reference(mask))
        assert {c: int(n) for c, n in enumerate(counts) if n} == table[f.name]


def test_dataset_stats_on_real_masks_bcss22_and_bcss5(bcss_masks_dir):
    table = _readme_counts(bcss_masks_dir.parent / "README.md")
    total = {c: sum(t.get(c, 0) for t in table.values()) for c in range(22)}
    st22 = dataset_stats([bcss_masks_dir], bcss22(), quiet=True)
    assert len(st22.per_image) == 4 and st22.ignored == 0 and not st22.skipped
    assert st22.class_pixels.tolist() == [total[c] for c in range(1, 22)]
    np.testing.assert_allclose(st22.proportions.sum(), 1.0)
    st5 = dataset_stats([bcss_masks_dir], bcss5(), quiet=True)
    assert st5.ignored == total[7]  # exclude is ignored in bcss5
    tumor = total[1] + total[19] + total[20]
    labelled = sum(total.values()) - total[7] - total[0]
    assert st5.labelled == labelled
    assert st5.proportions[bcss5().names.index("tumor")] == pytest.approx(tumor / labelled)
    assert st5.images_with.tolist() == [4, 4, 3, 3, 2]  # "other": fat (A0SK, A0SX), blood + vessel (A0SX)
    row = st5.per_image.set_index("image").loc["TCGA-A2-A0D2-DX1_xmin96887_ymin22299_MPP-0.2500.png"]
    assert row["ignored"] == 1703 and row["width"] == 3391 and row["height"] == 2418
    assert row["prop_tumor"] == pytest.approx(4091997 / (3391 * 2418 - 1703))


def test_proportions_exclude_ignored_pixels_and_skip_bad_files(tmp_path):
    Image.fromarray(np.array([[0, 0, 0, 1], [1, 2, 2, 2]], np.uint8), "L").save(tmp_path / "a.png")
    Image.fromarray(np.array([[50]], np.uint8), "L").save(tmp_path / "bad.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    st = dataset_stats([tmp_path], bcss22(), quiet=True)
    assert st.ignored == 3 and st.labelled == 5
    assert st.proportions[:2].tolist() == [0.4, 0.6]
    reasons = " | ".join(r for _, r in st.skipped)
    assert len(st.skipped) == 2 and "bad.png" in reasons and "[50]" in reasons and "broken.png" in reasons


def test_class_weights_hand_computed():
    counts = np.array([10, 30, 60, 0])
    # inverse: 1/f = 10, 10/3, 10/6 -> mean 5 -> 2, 2/3, 1/3 ; absent class 0
    np.testing.assert_allclose(class_weights(counts, "inverse"), [2, 2 / 3, 1 / 3, 0])
    # median: f = 10/50, 30/100, 60/100 = .2 .3 .6 -> median .3 -> 1.5, 1, .5
    np.testing.assert_allclose(class_weights(counts, "median", present_in=np.array([50, 100, 100, 0])),
                               [1.5, 1, 0.5, 0])
    np.testing.assert_allclose(class_weights(counts, "median"), [3, 1, 0.5, 0])  # f = .1 .3 .6
    assert class_weights(counts, "none").tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        class_weights(counts, "sqrt")


def test_dataset_median_weights_use_pixels_of_images_containing_the_class(tmp_path):
    # image a: 4 px, class 0 x1, class 1 x3 ; image b: 6 px, class 1 x6
    Image.fromarray(np.array([[1, 2, 2, 2]], np.uint8), "L").save(tmp_path / "a.png")
    Image.fromarray(np.full((2, 3), 2, np.uint8), "L").save(tmp_path / "b.png")
    st = dataset_stats([tmp_path], bcss22(), quiet=True)
    assert st.present_in[:3].tolist() == [4, 10, 0]
    # f0 = 1/4, f1 = 9/10 -> median .575 -> 2.3, 0.63889
    np.testing.assert_allclose(st.weights("median")[:2], [0.575 / 0.25, 0.575 / 0.9])


def test_chart_is_a_valid_png(tmp_path):
    s = bcss5()
    path = plot_proportions(np.array([0.5, 0.3, 0.19, 0.01, 0.0]), s, tmp_path / "p.png", log=True)
    img = Image.open(path)
    img.verify()
    assert img.format == "PNG" and img.size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_cli_json_matches_outputs_and_refuses_to_overwrite(bcss_masks_dir, tmp_path):
    out = tmp_path / "st"
    args = ["stats", str(bcss_masks_dir), "--out", str(out), "--scheme", "bcss5", "--json", "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary == json.loads((out / "stats.json").read_text())
    table = _readme_counts(bcss_masks_dir.parent / "README.md")
    assert summary["ignored_pixels"] == sum(t.get(7, 0) for t in table.values())
    assert summary["classes"][0]["class"] == "tumor"
    assert summary["classes"][0]["pixels"] == sum(t.get(1, 0) for t in table.values())
    assert sorted(p.name for p in out.iterdir()) == ["classes.csv", "per_image.csv", "proportions.png", "stats.json"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists" in again.output and "--overwrite" in again.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_two_workers_give_the_same_table(tmp_path):
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 22, (30, 40)).astype(np.uint8), "L").save(
            tmp_path / f"m{i}.png")
    one = dataset_stats([tmp_path], bcss22(), quiet=True)
    two = dataset_stats([tmp_path], bcss22(), workers=2, quiet=True)
    assert one.per_image.equals(two.per_image)
