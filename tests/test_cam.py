"""CAM pseudo-masks: fusion, per-class normalisation, label restriction, refinement, the mask source."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tissueseg import io
from tissueseg.data import PatchDataset, RegionCache
from tissueseg.models.classifier import gap_logits
from tissueseg.schemes import IGNORE, ClassDef, ClassScheme
from tissueseg.weak import cam
from tissueseg.weak.tta import to_input

torch.set_num_threads(1)
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class ColourModel(torch.nn.Module):
    """A stand-in classifier: the class maps of classes red, green, blue are those channels, pooled."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        return [F.avg_pool2d(x, 4), F.avg_pool2d(x, 8)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gap_logits(self.forward_maps(x)).mean(dim=1) * 20 - 5


def _scheme() -> ClassScheme:
    return ClassScheme("rgb", (ClassDef("red", (255, 0, 0), (1,)), ClassDef("green", (0, 255, 0), (2,)),
                               ClassDef("blue", (0, 0, 255), (3,))))


def _stripes(h: int = 64, w: int = 64) -> np.ndarray:
    """Red left third, green middle third, blue right third."""
    rgb = np.zeros((h, w, 3), np.uint8)
    for c, x0 in enumerate((0, w // 3, 2 * w // 3)):
        rgb[:, x0:, :] = 0
        rgb[:, x0:, c] = 200
    return rgb


def test_normalise_per_class_rectifies_and_scales_each_class_to_one():
    maps = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]], [[0.5, 0.25], [0.0, -3.0]], [[-1.0, -2.0], [-3.0, -4.0]]])
    out = cam.normalise_per_class(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    torch.testing.assert_close(out[1], torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    assert (out[2] == 0).all()


def test_fuse_cams_resizes_and_weights_the_depths():
    fine = torch.zeros(2, 4, 4)
    fine[0, :, :2] = 1.0  # class 0 on the left half
    coarse = torch.zeros(2, 1, 1)
    coarse[1] = 1.0  # class 1 everywhere
    out = cam.fuse_cams([fine, coarse], [1.0, 3.0], (8, 8))
    assert out.shape == (2, 8, 8)
    torch.testing.assert_close(out[0, :, :3], torch.full((8, 3), 0.25))  # bilinear: the edge blurs over 2 px
    torch.testing.assert_close(out[0, :, 5:], torch.zeros(8, 3))
    torch.testing.assert_close(out[1], torch.full((8, 8), 0.75))
    with pytest.raises(ValueError, match="weights"):
        cam.fuse_cams([fine, coarse], [1.0], (8, 8))


def test_an_absent_class_never_appears_and_a_single_label_patch_is_whole():
    scores = torch.rand(3, 16, 16)
    scores[2, :8] = 5.0  # the highest score, but class 2 is not in the label
    mask = cam.pseudo_mask(scores, np.array([1, 1, 0]))
    assert set(np.unique(mask)) <= {0, 1} and (mask == np.where(scores[1] > scores[0], 1, 0)).all()
    torch.testing.assert_close(cam.restrict_to_labels(scores, [1, 1, 0])[2], torch.zeros(16, 16))
    assert (cam.pseudo_mask(scores, np.array([0, 0, 1])) == 2).all()  # whatever the scores
    assert (cam.pseudo_mask(scores, np.array([0, 0, 0])) == IGNORE).all()
    ignore = np.zeros((16, 16), bool)
    ignore[3, 4] = True
    out = cam.pseudo_mask(scores, np.array([0, 1, 0]), ignore)
    assert out[3, 4] == IGNORE and (out[~ignore] == 1).all()


def test_refinement_moves_the_boundary_onto_a_colour_edge():
    h, w, edge = 32, 64, 40
    rgb = np.full((h, w, 3), 60, np.uint8)
    rgb[:, edge:] = 220  # dark left, light right
    x = np.arange(w, dtype=np.float32)
    ramp = np.clip((x - 16) / 32, 0, 1)  # blurry scores crossing at x = 32, 8 px left of the edge (radius 16 sees it)
    scores = np.stack([np.tile(1 - ramp, (h, 1)), np.tile(ramp, (h, 1))])
    before = cam.pseudo_mask(scores, [1, 1])
    after = cam.pseudo_mask(cam.refine(rgb, scores, radius=16, eps=1e-3), [1, 1])
    assert (before[:, 33:edge] == 1).all()  # wrong before: class 1 starts at 32
    assert (after[:, : edge - 1] == 0).all() and (after[:, edge + 1 :] == 1).all()


def test_white_pixels_finds_glass_but_not_specks():
    rgb = np.full((40, 40, 3), 120, np.uint8)
    rgb[:20, :20] = 240  # 400 px of glass
    rgb[30, 30] = 250  # one white speck
    white = cam.white_pixels(rgb, 200, min_size=16)
    assert white[:20, :20].all() and white.sum() == 400


def test_patch_pseudo_masks_follow_the_class_maps_with_and_without_tta():
    rgb = _stripes()
    truth = np.repeat(np.array([0] * 21 + [1] * 21 + [2] * 22, np.uint8)[None], 64, 0)
    images = np.stack([rgb, rgb, rgb])
    labels = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0]])
    for tta in ("none", "flip", "d4"):
        masks = cam.patch_pseudo_masks(ColourModel(), images, labels, IDENTITY, cam.CamOptions(weights=(0.5, 0.5),
                                                                                               tta=tta))
        assert (masks[0] == truth)[:, 4:-4].mean() > 0.9  # the 8 px maps blur the stripes' edges a little
        assert set(np.unique(masks[1])) == {0, 2} and (masks[2] == 1).all()


def test_class_gate_and_gated_argmax():
    gate = cam.class_gate(np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.2]]), threshold=0.5)
    np.testing.assert_array_equal(gate, [[True, False, True], [False, True, False]])  # none above: the top one
    probs = np.zeros((3, 2, 2))
    probs[1] = 1.0
    probs[2] = 0.5
    allowed = np.ones((3, 2, 2), bool)
    allowed[1, 0] = False
    np.testing.assert_array_equal(cam.gated_argmax(probs, allowed), [[2, 2], [1, 1]])


def test_patch_gates_per_patch_of_a_region():
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[:, :32, 0] = 255  # red patch, then green, then blue
    rgb[:, 32:64, 1] = 255
    rgb[:, 64:, 2] = 255
    gates = cam.patch_gates(ColourModel(), rgb, 32, IDENTITY, threshold=0.5)
    assert gates.shape == (3, 64, 96)
    for c in range(3):
        assert gates[c, :, 32 * c : 32 * c + 32].all() and gates[c].sum() == 64 * 32


def _region_manifest(tmp_path, rgb: np.ndarray, size: int) -> pd.DataFrame:
    path = io.write_png(tmp_path / "region.png", rgb)
    h, w = rgb.shape[:2]
    rows = []
    for y in range(0, h, size):
        for x in range(0, w, size):
            win = rgb[y : y + size, x : x + size]
            present = [int((win[..., c] > 100).mean() >= 0.05) for c in range(3)]
            rows.append({"image_path": str(path), "x": x, "y": y, "size": size, "width": w, "height": h,
                         **{f"label_{n}": v for n, v in zip(("red", "green", "blue"), present)}})
    return pd.DataFrame(rows)


def test_cam_pseudo_masks_source_is_cached_once_and_picklable(tmp_path):
    rgb = _stripes(64, 96)  # stripes 32 px wide; patches of 48 px: mixed ones
    df = _region_manifest(tmp_path, rgb, 48)
    df = df[~((df["x"] == 48) & (df["y"] == 48))]  # one patch without a manifest row: ignored
    cache = RegionCache(tmp_path / "cache")
    model = ColourModel()
    options = cam.CamOptions(weights=(0.5, 0.5), tta="none")
    source = cam.CamPseudoMasks(df, _scheme(), cache, model, IDENTITY, options, quiet=True)
    path = str(df["image_path"].iloc[0])
    mask = np.asarray(source(path))
    truth = np.repeat(np.array([0] * 32 + [1] * 32 + [2] * 32, np.uint8)[None], 64, 0)
    assert (mask[48:, 48:] == IGNORE).all()
    known = mask != IGNORE
    assert (mask[known] == truth[known]).mean() > 0.9
    calls = model.calls
    again = cam.CamPseudoMasks(df, _scheme(), RegionCache(tmp_path / "cache"), model, IDENTITY, options, quiet=True)
    assert model.calls == calls  # read back from the cache, not recomputed
    np.testing.assert_array_equal(np.asarray(again(path)), mask)
    clone = pickle.loads(pickle.dumps(source))
    assert clone.model is None
    np.testing.assert_array_equal(np.asarray(clone(path)), mask)
    np.testing.assert_array_equal(source.pixel_counts(3), np.bincount(mask[known], minlength=3))
    source.write_previews(tmp_path / "previews", _scheme())
    assert io.read_image(tmp_path / "previews" / "region.png").shape == (64, 96, 3)
    other = cam.CamPseudoMasks(df, _scheme(), cache, model, IDENTITY, cam.CamOptions(weights=(1.0, 0.0), tta="none"),
                               quiet=True)
    assert model.calls > calls  # other options: computed anew
    ds = PatchDataset(df, _scheme(), cache, targets="masks", label_source=other, normalize=IDENTITY)
    sample = ds[0]
    assert sample["mask"].shape == (48, 48) and set(sample["mask"].unique().tolist()) <= {0, 1}


def test_cam_pseudo_masks_of_whole_images(tmp_path):
    paths = [io.write_png(tmp_path / f"p{i}.png", _stripes(48, 48)) for i in range(2)]
    df = pd.DataFrame({"image_path": [str(p) for p in paths], "label_red": [1, 0], "label_green": [0, 1],
                       "label_blue": [1, 0]})
    source = cam.CamPseudoMasks(df, _scheme(), RegionCache(tmp_path / "c"), ColourModel(), IDENTITY,
                                cam.CamOptions(weights=(0.5, 0.5), tta="none"), quiet=True)
    first, second = np.asarray(source(str(paths[0]))), np.asarray(source(str(paths[1])))
    assert set(np.unique(first)) == {0, 2} and (first[:, :12] == 0).all() and (first[:, -12:] == 2).all()
    assert (second == 1).all()


def test_cam_pseudo_masks_refuse_overlapping_patches(tmp_path):
    df = _region_manifest(tmp_path, _stripes(64, 64), 32)
    df.loc[0, "x"] = 16
    with pytest.raises(ValueError, match="grid"):
        cam.CamPseudoMasks(df, _scheme(), RegionCache(tmp_path / "c"), ColourModel(), IDENTITY, quiet=True)


def test_tta_undoes_its_transforms():
    """The stand-in model commutes with flips and quarter turns: every TTA gives the plain maps back."""
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    plain = cam.patch_cams(ColourModel(), rgb, IDENTITY, (0.5, 0.5), tta="none")
    for tta in ("flip", "d4"):
        torch.testing.assert_close(cam.patch_cams(ColourModel(), rgb, IDENTITY, (0.5, 0.5), tta=tta), plain)
    wide = np.concatenate([rgb, rgb], axis=2)  # 32 x 64: quarter turns change the shape
    assert cam.patch_cams(ColourModel(), wide, IDENTITY, (0.5, 0.5), tta="d4").shape == (2, 3, 32, 64)


def test_min_score_ignores_pixels_no_label_explains():
    rgb = _stripes()
    rgb[:, :8] = 0  # black: no class map responds
    masks = cam.patch_pseudo_masks(ColourModel(), rgb[None], np.array([[1, 1, 1]]), IDENTITY,
                                   cam.CamOptions(weights=(1.0, 0.0), tta="none", min_score=0.3))
    assert (masks[0][:, :4] == IGNORE).all() and (masks[0][:, 12:] != IGNORE).all()
    whole = cam.patch_pseudo_masks(ColourModel(), rgb[None], np.array([[0, 1, 0]]), IDENTITY,
                                   cam.CamOptions(min_score=0.3))
    assert (whole == 1).all()  # a single-label patch stays whole


def test_restrict_region_keeps_each_patch_to_its_labels():
    scores = torch.zeros(3, 20, 30)
    scores[2] = 1.0  # the segmenter says class 2 everywhere
    scores[0, :, :15] = 0.5
    corners = np.array([[0, 0], [15, 0], [0, 15]])  # 15 px patches, edges past the region; (15, 15) unlabelled
    labels = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 0]])
    out = cam.restrict_region(scores, corners, 15, labels)
    assert (out[:15, :15] == 0).all() and (out[:15, 15:] == 2).all() and (out[15:, :15] == 1).all()
    assert (out[15:, 15:] == IGNORE).all()


def test_context_is_seen_but_cut_off():
    rgb = _stripes(64, 96)  # stripes 32 px wide, on the 32 px patches
    truth = np.repeat(np.array([0] * 32 + [1] * 32 + [2] * 32, np.uint8)[None], 64, 0)
    corners = np.array([[x, y] for y in (0, 32) for x in (0, 32, 64)])
    labels = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 1]] * 2)
    for context in (0, 16):
        mask = cam.region_pseudo_mask(ColourModel(), rgb, corners, 32, labels, IDENTITY,
                                      cam.CamOptions(tta="none", context=context))
        assert mask.shape == (64, 96) and (mask == truth).mean() > 0.95  # a shifted crop would miss 16 px columns


def test_margin_ignores_pixels_between_two_labels():
    rgb = _stripes()
    rgb[:, 20:24] = (100, 100, 0)  # red and green alike: no clear winner
    opts = cam.CamOptions(weights=(1.0, 0.0), tta="none", margin=0.2)
    mask = cam.patch_pseudo_masks(ColourModel(), rgb[None], np.array([[1, 1, 1]]), IDENTITY, opts)[0]
    assert (mask[:, 21:23] == IGNORE).all() and (mask[:, :16] == 0).all() and (mask[:, 48:] == 2).all()
    assert (mask == IGNORE).mean() < 0.1  # only the ties (and the blurred 1 px at the other stripe edge)


def test_region_pseudo_mask_in_several_batches_equals_one():
    rgb = _stripes(64, 96)
    corners = np.array([[x, y] for y in (0, 32) for x in (0, 32, 64)])
    labels = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 1]] * 2)
    one = cam.region_pseudo_mask(ColourModel(), rgb, corners, 32, labels, IDENTITY, cam.CamOptions(context=8))
    many = cam.region_pseudo_mask(ColourModel(), rgb, corners, 32, labels, IDENTITY, cam.CamOptions(context=8, batch=4))
    np.testing.assert_array_equal(many, one)


def test_classifier_input_of_read_only_pixels_is_normalised_without_a_warning():
    # in a fresh process: torch warns of a read-only array once per process, so an earlier test could hide it
    code = """
import warnings
import numpy as np
import torch
from tissueseg.weak.tta import to_input
rgb = np.full((1, 4, 4, 3), 51, np.uint8)
rgb.flags.writeable = False  # as a cached region is
with warnings.catch_warnings():
    warnings.simplefilter("error")
    x = to_input(rgb, ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5)))
torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([0.2, 0.0, -0.2]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class ScaledColourModel(ColourModel):
    """Class maps ``20 c - 5`` of each colour channel ``c`` in [0, 1]: logits, so the classifier has probabilities."""

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m * 20 - 5 for m in super().forward_maps(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gap_logits(self.forward_maps(x)).mean(dim=1)


def _columns(h: int, widths: list[tuple[int, tuple[int, int, int]]]) -> np.ndarray:
    """Vertical bands of the given widths and colours, left to right."""
    return np.concatenate([np.full((h, w, 3), colour, np.uint8) for w, colour in widths], axis=1)


def test_presence_weights_give_a_doubtful_class_less_of_the_patch():
    # a wide red band, a pale band where the green map is the higher (0.34 against 0.19 normalised),
    # a narrow green band: the classifier is surer of red (0.99) than of green (0.62) in the patch
    rgb = _columns(32, [(48, (200, 0, 0)), (32, (90, 110, 0)), (16, (0, 200, 0))])
    labels = np.array([[1, 1, 0]])
    plain = cam.patch_pseudo_masks(ScaledColourModel(), rgb[None], labels, IDENTITY, cam.CamOptions(tta="none"))[0]
    assert (plain[:, 60:68] == 1).all() and (plain[:, :40] == 0).all() and (plain[:, 88:] == 1).all()
    for power, middle in ((1.0, 1), (2.0, 0)):  # 0.19 x 0.99^p against 0.34 x 0.62^p
        opts = cam.CamOptions(tta="none", presence_power=power)
        mask = cam.patch_pseudo_masks(ScaledColourModel(), rgb[None], labels, IDENTITY, opts)[0]
        assert (mask[:, 60:68] == middle).all() and (mask[:, :40] == 0).all() and (mask[:, 88:] == 1).all()

    # a pale square inside the red half takes the class around it when weighed by the local presence
    rgb = _columns(32, [(8, (200, 0, 0)), (16, (90, 110, 0)), (24, (200, 0, 0)), (48, (0, 200, 0))])
    plain = cam.patch_pseudo_masks(ScaledColourModel(), rgb[None], labels, IDENTITY, cam.CamOptions(tta="none"))[0]
    assert (plain[:, 14:18] == 1).all()
    opts = cam.CamOptions(tta="none", local_presence_power=1.0, local_window=32)
    mask = cam.patch_pseudo_masks(ScaledColourModel(), rgb[None], labels, IDENTITY, opts)[0]
    assert (mask[:, :44] == 0).all() and (mask[:, 52:] == 1).all()


def test_class_presence_is_the_classifiers_probability_in_the_patch_and_around_each_pixel():
    from tissueseg.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", 3, weights="none").eval()
    rgb = _stripes(96, 96)
    patch, local = cam.class_presence(model, rgb[None], IDENTITY, 32)
    x = to_input(rgb[None], IDENTITY)
    with torch.no_grad():
        torch.testing.assert_close(patch, torch.sigmoid(model(x)))
        torch.testing.assert_close(local, model.local_presence(x, 32))
        _, inner = cam.class_presence(model, rgb[None], IDENTITY, 32, margin=16)
    torch.testing.assert_close(inner, local[..., 16:80, 16:80])
