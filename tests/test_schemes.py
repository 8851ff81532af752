import json

import numpy as np
import pytest

from tissueseg.schemes import BCSS_CODES, IGNORE, bcss5, bcss22, bcss_wsss4, load_scheme, scheme_from_dict


def test_bcss22_maps_each_code_to_its_own_class_and_ignores_outside_roi():
    s = bcss22()
    assert s.num_classes == 21
    codes = np.arange(22, dtype=np.uint8)
    labels = s.apply(codes)
    assert labels[0] == IGNORE
    assert labels[1:].tolist() == list(range(21))
    assert [tuple(c) for c in s.colors] == [BCSS_CODES[c][1] for c in range(1, 22)]
    assert s.names[0] == "tumor" and s.names[-1] == "other"


@pytest.mark.parametrize(
    "code,group",
    [(1, "tumor"), (19, "tumor"), (20, "tumor"), (2, "stroma"), (3, "inflammatory"), (10, "inflammatory"),
     (11, "inflammatory"), (4, "necrosis"), (9, "other"), (5, "other"), (6, "other"), (8, "other"),
     (12, "other"), (13, "other"), (14, "other"), (15, "other"), (16, "other"), (17, "other"),
     (18, "other"), (21, "other")],
)
def test_bcss5_every_source_code_lands_in_its_group(code, group):
    s = bcss5()
    assert s.names[s.apply(np.array([code], np.uint8))[0]] == group


def test_bcss5_keeps_plain_tumor_and_ignores_outside_roi_and_exclude():
    s = bcss5()
    labels = s.apply(np.arange(22, dtype=np.uint8))
    assert labels[1] == s.names.index("tumor")
    assert labels[0] == IGNORE and labels[7] == IGNORE
    # every one of the 22 codes is either a class or ignored: nothing unknown
    assert set(s.known_codes.tolist()) >= set(range(22))


def test_wsss4_four_classes_rest_ignored():
    s = bcss_wsss4()
    labels = s.apply(np.arange(22, dtype=np.uint8))
    assert s.names == ["tumor", "stroma", "lymphocytic_infiltrate", "necrosis"]
    assert labels[1] == 0 and labels[2] == 1 and labels[3] == 2 and labels[4] == 3
    assert (labels[[0, 5, 6, 7, 8, 9, 12, 21]] == IGNORE).all()


def test_unknown_codes_raise_with_their_values():
    with pytest.raises(ValueError, match=r"codes \[30\]"):
        bcss22().apply(np.array([[1, 30]], np.uint8))


def test_fold_counts_matches_apply():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 22, size=(50, 40)).astype(np.uint8)
    s = bcss5()
    per_class, ignored = s.fold_counts(np.bincount(mask.ravel(), minlength=256))
    labels = s.apply(mask)
    assert per_class.tolist() == [int((labels == k).sum()) for k in range(s.num_classes)]
    assert ignored == int((labels == IGNORE).sum())


def test_user_scheme_from_yaml_and_json(tmp_path):
    spec = {"name": "merged", "ignore": [0, 7],
            "classes": [{"name": "tumour", "color": [255, 0, 0], "codes": [1, 19, 20]},
                        {"name": "rest", "codes": [2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21]}]}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    (tmp_path / "s.yaml").write_text(
        "name: merged\nignore: [0, 7]\nclasses:\n  - {name: tumour, color: [255, 0, 0], codes: [1, 19, 20]}\n"
        "  - {name: rest, codes: [2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21]}\n")
    for f in ("s.json", "s.yaml"):
        s = load_scheme(tmp_path / f)
        assert s.names == ["tumour", "rest"]
        assert s.colors[1].tolist() == list(BCSS_CODES[2][1])  # default colour: first code's BCSS colour
        assert s.apply(np.array([20, 9, 7], np.uint8)).tolist() == [0, 1, IGNORE]
        assert scheme_from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_bad_schemes_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mapped twice"):
        scheme_from_dict({"classes": [{"name": "a", "codes": [1]}, {"name": "b", "codes": [1]}]})
    with pytest.raises(ValueError, match="not a built-in scheme"):
        load_scheme("nope")
    (tmp_path / "bad.yaml").write_text("classes: [{name: a}]\n")
    with pytest.raises(ValueError, match=r"bad.yaml: invalid scheme"):
        load_scheme(tmp_path / "bad.yaml")
