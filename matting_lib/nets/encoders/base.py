"""The encoders' shared shape: ``stages`` run in order, each stage's output is a feature map."""

from __future__ import annotations

import torch
from torch import nn


class StagedEncoder(nn.Module):
    """Base of every encoder in :data:`matting_lib.nets.encoders.ENCODERS`: subclasses build
    ``self.stages`` (an ``nn.ModuleList``, shallow to deep); ``forward`` returns every stage's
    output, the feature maps shallow to deep."""

    stages: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
