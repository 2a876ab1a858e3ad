"""The matting U-Net: [low-light module] -> normalise -> encoder -> gated-skip decoder -> alpha.

    image (B, C, H, W) in [0, 1]
      -> pad (reflect, or replicate when too small) to a multiple of 32
      -> LowLightEnhancer on RGB (optional)        enhanced (B, 3, H', W')
      -> the encoder's input normalisation on RGB  x (B, C, H', W')
         (its ``input_mean``/``input_std``; ImageNet mean/std when it declares none)
      -> encoder                                   features at strides 2, 4, 8, 16, 32
      -> decoder: from stride 32 up, one block per skip (strides 16, 8, 4, 2 and the
         image itself at stride 1): bilinear x2, attention-gated skip, concat, 2 x conv
      -> 1x1 conv -> sigmoid -> crop               alpha (B, 1, H, W) in [0, 1]
With ``output_stride: 2`` the decoder stops after the stride-2 block and the 1x1 conv's
logits are upsampled bilinearly to the input size before the sigmoid.

Bilinear upsampling plus convolution (no transposed conv, no checkerboard); the input image
as the finest skip keeps hair-level detail that stride-2 features lose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matting_lib.config import ModelConfig
from matting_lib.nets.encoders import get_encoder
from matting_lib.nets.enhancer import LowLightEnhancer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, "Attention U-Net").

    ``forward(skip, gate)``: skip (B, Cs, H, W) and the up-sampled decoder features
    gate (B, Cg, H, W) -> skip * a, with a = sigmoid(psi(relu(Wx skip + Wg gate))) of shape
    (B, 1, H, W) in (0, 1).
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_skip = nn.Sequential(nn.Conv2d(skip_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.w_gate = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Conv2d(inter_channels, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.psi(F.relu(self.w_skip(skip) + self.w_gate(gate))))
        return skip * a


class DecoderBlock(nn.Module):
    """Bilinear up-sampling to the skip's size, optional attention gate on the skip, concat,
    two 3x3 conv-BN-ReLU. (B, Cin, h, w), (B, Cs, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, attention: bool) -> None:
        super().__init__()
        inter = max(8, min(in_channels, skip_channels) // 2)
        self.gate = AttentionGate(skip_channels, in_channels, inter) if attention else None
        self.conv = nn.Sequential(
            conv_bn_relu(in_channels + skip_channels, out_channels), conv_bn_relu(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Decoder blocks from the deepest feature up; the skips, deep to shallow, are the
    encoder features except the deepest, then the network input (stride 1)."""

    def __init__(
        self, encoder_channels: tuple[int, ...], image_channels: int, decoder_channels: tuple[int, ...], attention: bool,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        self.output_stride = output_stride
        skips = tuple(reversed(encoder_channels[:-1])) + ((image_channels,) if output_stride == 1 else ())
        if len(decoder_channels) != len(skips):
            what = "encoder strides 16..2 and the image" if output_stride == 1 else "encoder strides 16..2; output_stride 2"
            raise ValueError(
                f"model.decoder_channels: needs {len(skips)} entries (one per skip: {what}), got {len(decoder_channels)}"
            )
        ins = (encoder_channels[-1],) + tuple(decoder_channels[:-1])
        self.blocks = nn.ModuleList(
            [DecoderBlock(i, s, o, attention) for i, s, o in zip(ins, skips, decoder_channels)]
        )

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """features: encoder maps shallow to deep; image: (B, C, H, W) -> (B, decoder_channels[-1],
        H / output_stride, W / output_stride)."""
        skips = features[-2::-1] + ([image] if self.output_stride == 1 else [])
        x = features[-1]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (B, C, H, W) on all sides so H and W become multiples of ``multiple``.

    Reflect padding, or replicate where the image is too small to reflect. Returns the
    padded tensor and (left, right, top, bottom) for :func:`crop`.

    Already aligned inputs go through ``F.pad`` with zero pads too (a plain copy) rather
    than an early return: a branch on the pad values would be frozen by ONNX tracing, and the
    exported graph would then skip padding for every size. Traced for ONNX, the pad amounts
    stay dynamic and the mode is fixed to reflect, which is what this function picks for
    every side of 12 px or more (:mod:`matting_lib.inference.onnx_runtime` pads smaller inputs itself).
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
    return F.pad(x, pads, mode=mode), pads


def crop(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    left, right, top, bottom = pads
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


class MattingUNet(nn.Module):
    """U-Net matting network built from a :class:`ModelConfig` (kept as ``self.config``).

    ``forward(image)``: image (B, in_channels, H, W) float RGB[+extra] in [0, 1], any H, W
    -> alpha (B, 1, H, W) in [0, 1].

    Parts: ``lowlight`` (LowLightEnhancer or None), ``encoder``, ``decoder``, ``head``.
    BatchNorm layers whose parameters are frozen stay in eval mode under ``train()``, so a
    frozen encoder does not drift its running statistics.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.lowlight = LowLightEnhancer(config.lowlight_iterations, scale=config.lowlight_scale) if config.lowlight else None
        self.encoder = get_encoder(config.encoder, config.encoder_width, config.in_channels)
        self.decoder = UNetDecoder(
            tuple(self.encoder.out_channels), config.in_channels, tuple(config.decoder_channels), config.attention,
            output_stride=config.output_stride,
        )
        self.head = nn.Conv2d(config.decoder_channels[-1], 1, 1)
        self.stride = max(self.encoder.strides)
        mean = getattr(self.encoder, "input_mean", IMAGENET_MEAN)
        std = getattr(self.encoder, "input_std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_all(image)["alpha"]

    def forward_all(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``alpha`` (B, 1, H, W) in [0, 1]; with the low-light module also ``enhanced``
        (B, 3, H, W) in [0, 1] and ``curves`` (B, 3 * iterations, H, W) in [-1, 1], for the
        Zero-DCE losses. (Under DDP, call the wrapper's ``forward`` for gradient sync.)"""
        x, pads = pad_to_multiple(image, self.stride)
        rgb, extra = x[:, :3], x[:, 3:]
        out: dict[str, torch.Tensor] = {}
        if self.lowlight is not None:
            rgb, curves = self.lowlight.enhance(rgb)
            out["enhanced"], out["curves"] = crop(rgb, pads), crop(curves, pads)
        x = torch.cat([(rgb - self.mean) / self.std, extra], dim=1)
        features = self.encoder(x)
        logits = self.head(self.decoder(features, x))
        if self.config.output_stride != 1:  # a fixed property: ONNX tracing keeps the same branch for every size
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(logits)
        out["alpha"] = crop(alpha, pads)
        return out

    def train(self, mode: bool = True) -> "MattingUNet":
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
                    m.eval()
        return self
