"""Models: shapes, ASPP rates, FCN score maps, and the shipped ImageNet weights on real images."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skdata

from tissueseg import io
from tissueseg.models import FCN, ModelConfig, build_model, encoders, normalization

torch.set_num_threads(1)


def _batch(rgb: np.ndarray, cfg: ModelConfig, size: int = 224) -> torch.Tensor:
    x = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    mean, std = (torch.tensor(v)[:, None, None] for v in normalization(cfg))
    return ((torch.from_numpy(x).permute(2, 0, 1) - mean) / std)[None]


LITE0 = "tf_efficientnet_lite0"


def _shipped(arch: str) -> torch.nn.Module:
    """The shipped Lite0 weights loaded by position into timm's ``arch``."""
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(dict(zip(model.state_dict(), encoders.shipped_state_dict(LITE0).values())))
    return model.eval()


@pytest.fixture(scope="module")
def lite0_imagenet() -> torch.nn.Module:
    model = timm.create_model(LITE0, pretrained=False)
    encoders.load_shipped(model, LITE0)
    return model.eval()


def test_deeplab_output_size_and_paper_aspp_rates():
    model = build_model(ModelConfig(weights="none"), 4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 4, 64, 96)
    aspp = model.decoder.aspp[0]
    rates = [m[0][0].dilation[0] for m in list(aspp.convs)[1:4]]
    assert rates == [6, 12, 18]
    model8 = build_model(ModelConfig(weights="none", output_stride=8), 2)
    assert [m[0][0].dilation[0] for m in list(model8.decoder.aspp[0].convs)[1:4]] == [12, 24, 36]


def test_deeplab_refuses_stride_32():
    with pytest.raises(ValueError, match="output_stride"):
        build_model(ModelConfig(weights="none", output_stride=32), 3)


def test_fcn_maps_logits_and_background_zero_init():
    model = build_model(ModelConfig(arch="fcn", weights="none"), 5, background_index=4).eval()
    assert isinstance(model, FCN) and model.output_stride == 8
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        maps, logits = model.forward_maps(x), model(x)
    assert maps.shape == (1, 5, 8, 10) and logits.shape == (1, 5, 64, 80)
    assert torch.all(maps[:, 4] == 0) and not torch.all(maps[:, 0] == 0)
    up = torch.nn.functional.interpolate(maps, size=(64, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, up)


def test_fcn_vgg16_native_stride_and_explicit_stride_error():
    model = build_model(ModelConfig(arch="fcn", encoder="vgg16", weights="none"), 3)
    assert model.output_stride == 32
    with pytest.raises(ValueError, match="output_stride"):
        build_model(ModelConfig(arch="fcn", encoder="vgg16", weights="none", output_stride=8), 3)


def test_imagenet_offline_without_shipped_weights_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="weights=none"):
        build_model(ModelConfig(encoder="resnet18"), 3)


def test_shipped_weights_pair_with_timm_by_position():
    mapped = encoders.shipped_state_dict(LITE0)
    target = timm.create_model(LITE0, pretrained=False).state_dict()
    assert list(mapped) == list(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    assert normalization(ModelConfig()) == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize(
    "image, classes",
    [(skdata.chelsea(), range(281, 286)), (skdata.coffee(), (967, 968))],  # cats; espresso, cup
    ids=["cat", "coffee"],
)
def test_shipped_weights_classify_real_photos(lite0_imagenet, image, classes):
    with torch.no_grad():
        probs = lite0_imagenet(_batch(image, ModelConfig())).softmax(1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[list(classes)].sum()) > 0.5


CAT, ESPRESSO = 285, 967  # ImageNet: Egyptian cat, espresso


def test_shipped_weights_are_loaded_into_the_tf_architecture_they_were_trained_in():
    """The TF port (SAME padding, BatchNorm eps 1e-3) is surer of the right class in timm's
    tf_ model than in the plain one; these probabilities are the regression figures."""
    assert ModelConfig().encoder == LITE0
    x = torch.cat([_batch(skdata.chelsea(), ModelConfig()), _batch(skdata.coffee(), ModelConfig())])
    probs = {}
    for arch in (LITE0, "efficientnet_lite0"):
        with torch.no_grad():
            p = _shipped(arch)(x).softmax(1)
        assert p.argmax(1).tolist() == [CAT, ESPRESSO], arch
        probs[arch] = p[[0, 1], [CAT, ESPRESSO]]
    torch.testing.assert_close(probs[LITE0], torch.tensor([0.773, 0.902]), atol=0.01, rtol=0)
    assert bool((probs[LITE0] > probs["efficientnet_lite0"] + 0.05).all())


def test_pretrained_encoder_in_segmenters_matches_classifier(lite0_imagenet):
    for arch in ("deeplabv3plus", "fcn"):
        model = build_model(ModelConfig(arch=arch), 3)
        body = model.encoder.model if arch == "deeplabv3plus" else model.encoder
        ref = lite0_imagenet.state_dict()
        for key, value in body.state_dict().items():
            torch.testing.assert_close(value, ref[key], msg=key)


def test_pretrained_features_on_real_he_separate_tissues(lite0_imagenet, nct_dir):
    """ImageNet features of real H&E tiles: flip-stable, and same-tissue tiles closer than
    different-tissue ones (random init gives near-identical features for every tile)."""
    tiles = sorted(nct_dir.glob("crc_val_he_7k/*/*.png"))
    names = [p.parent.name for p in tiles]
    same = torch.tensor([[a == b for b in names] for a in names]) & ~torch.eye(len(names), dtype=torch.bool)
    diff = torch.tensor([[a != b for b in names] for a in names])
    x = torch.cat([_batch(io.read_image(p), ModelConfig()) for p in tiles])
    random = timm.create_model(LITE0, pretrained=False).eval()

    def features(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.forward_head(model.forward_features(batch), pre_logits=True)

    gaps = {}
    for name, model in (("imagenet", lite0_imagenet), ("random", random)):
        f = torch.nn.functional.normalize(features(model, x), dim=1)
        sim = f @ f.T
        gaps[name] = float(sim[same].mean() - sim[diff].mean())
    assert gaps["imagenet"] > 0.05 and gaps["imagenet"] > 5 * gaps["random"]
    flip = torch.nn.functional.cosine_similarity(features(lite0_imagenet, x), features(lite0_imagenet, x.flip(3)))
    assert float(flip.mean()) > 0.8


def test_init_encoder_starts_a_segmenter_from_a_classifier_of_the_same_encoder():
    from tissueseg.models.classifier import build_classifier

    torch.manual_seed(0)
    classifier = build_classifier("tf_efficientnet_lite0", 3, weights="none")
    for arch in ("deeplabv3plus", "fcn"):
        model = build_model(ModelConfig(arch=arch, weights="none"), 3)
        decoder = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder")}
        encoders.init_encoder(model, classifier)
        body = model.encoder.model if arch == "deeplabv3plus" else model.encoder
        for key, value in classifier.encoder.state_dict().items():
            torch.testing.assert_close(body.state_dict()[key], value)
        for key, value in decoder.items():  # the rest is left as built
            torch.testing.assert_close(model.state_dict()[key], value)
    other = build_model(ModelConfig(arch="deeplabv3plus", encoder="resnet18", weights="none"), 3)
    with pytest.raises(ValueError, match="does not fit"):
        encoders.init_encoder(other, classifier)
