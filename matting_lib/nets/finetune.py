"""Fine-tuning helpers: staged unfreezing, layer-wise learning rates, parameter counts.

The seed's three-stage schedule maps onto :func:`set_trainable`:

    "head"  decoder + head (+ low-light module); encoder frozen
    "late"  additionally the later half of the encoder stages
    "all"   everything

They work on any model with ``encoder`` (with ``stages`` or ``stage_modules()``),
``decoder``, ``head`` and an optional ``lowlight`` attribute, i.e. :class:`MattingUNet`.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

Trainable = Literal["head", "late", "all"]


def encoder_stages(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's stages, shallow to deep."""
    if hasattr(encoder, "stage_modules"):
        return list(encoder.stage_modules())
    return list(encoder.stages)


def set_trainable(
    model: nn.Module, trainable: Trainable, *, late_stages: int | None = None, lowlight: bool = True
) -> None:
    """Set ``requires_grad`` for a fine-tuning stage, then re-apply ``model.train(...)`` so
    frozen BatchNorm layers stay in eval mode (their running statistics stop updating).

    Args:
        trainable: "head", "late" or "all" (see the module docstring).
        late_stages: encoder stages unfrozen by "late"; default half of them, rounded down.
        lowlight: whether the low-light module (if any) trains; False freezes it.
    """
    stages = encoder_stages(model.encoder)
    n_late = len(stages) // 2 if late_stages is None else late_stages
    counts = {"head": 0, "late": n_late, "all": len(stages)}
    if trainable not in counts:
        raise ValueError(f"trainable must be one of {list(counts)}, got {trainable!r}")
    model.encoder.requires_grad_(trainable == "all")
    for stage in stages[len(stages) - counts[trainable] :]:
        stage.requires_grad_(True)
    model.decoder.requires_grad_(True)
    model.head.requires_grad_(True)
    if getattr(model, "lowlight", None) is not None:
        model.lowlight.requires_grad_(lowlight)
    model.train(model.training)


def param_groups(
    model: nn.Module, lr: float, encoder_lr: float | None = None, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with layer-wise learning rates.

    Groups "encoder" (at ``encoder_lr``, default ``lr``), "decoder" (decoder and head) and
    "lowlight" (at ``lr``), each split off a "<name>_no_decay" group (biases, norm weights,
    layer scales: every parameter with ndim <= 1) with weight decay 0. Only parameters with
    ``requires_grad``; empty groups are left out. Every group has "name", "params", "lr",
    "weight_decay".
    """
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    lowlight = getattr(model, "lowlight", None)
    lowlight_ids = {id(p) for p in lowlight.parameters()} if lowlight is not None else set()
    parts: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": [], "lowlight": []}
    for p in model.parameters():
        if p.requires_grad:
            part = "encoder" if id(p) in encoder_ids else "lowlight" if id(p) in lowlight_ids else "decoder"
            parts[part].append(p)
    groups = []
    for part, params in parts.items():
        part_lr = encoder_lr if (part == "encoder" and encoder_lr is not None) else lr
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        if decay:
            groups.append({"name": part, "params": decay, "lr": part_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"name": f"{part}_no_decay", "params": no_decay, "lr": part_lr, "weight_decay": 0.0})
    return groups


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
