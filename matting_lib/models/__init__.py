"""The matting network: ``build_model(ModelConfig()) -> MattingUNet``.

>>> model = build_model(ModelConfig(encoder="mobilenetv2"))
>>> alpha = model(image)  # image (B, 3, H, W) in [0, 1] -> alpha (B, 1, H, W) in [0, 1]
"""

from __future__ import annotations

from matting_lib.config import ModelConfig
from matting_lib.models.encoders import ENCODERS, get_encoder
from matting_lib.models.finetune import count_parameters, param_groups, set_trainable
from matting_lib.models.lowlight import LowLightEnhancer
from matting_lib.models.unet import MattingUNet


def build_model(cfg: ModelConfig) -> MattingUNet:
    """The U-Net described by ``cfg``; ``model.config`` is ``cfg``.

    Raises:
        KeyError: unknown ``cfg.encoder`` (the message lists the valid names).
        ValueError: ``cfg.decoder_channels`` has the wrong length for the encoder.
    """
    return MattingUNet(cfg)


__all__ = [
    "ENCODERS",
    "LowLightEnhancer",
    "MattingUNet",
    "build_model",
    "count_parameters",
    "get_encoder",
    "param_groups",
    "set_trainable",
]
