"""Inference: a checkpoint in, alpha mattes at the input's own size out.

    predictor = Predictor.from_checkpoint("models/base.pt")          # or s3://...
    alpha = predictor.predict(image)            # uint8 (H, W, 3) RGB or encoded bytes
    alphas = predictor.predict_batch([a, b, c])  # several at once
    predictor = load_predictor(uri, backend="auto")  # matting_lib.inference.load: torch, or ONNX Runtime

Backends: this module's :class:`Predictor` runs torch; :class:`matting_lib.inference.onnx_runtime.OnnxPredictor`
subclasses it and replaces only ``_forward`` with an ONNX Runtime session, so both share the
resizing and batching policy below. :func:`matting_lib.inference.load.load_predictor` is the one
entry point that chooses.

Policy for big inputs: the network sees the image resized (area averaging) so its long side
is at most ``max_side`` and at most the model's own ``working_side`` (its config: the scale it
was trained to see; the smaller wins); the predicted alpha is upsampled bilinearly to the
original size.
(Guided-filter edge refinement of the upsampled alpha was tried and measured worse than plain
bilinear upsampling: on the 18 real mattes of the development set, alpha downscaled 4x and
upsampled again scored SAD 3.29 bilinear against 3.73 at best guided, over eps 1e-2..1e-4 and
radius 1..3, grey guide. So there is no refinement step.)

Batching: images whose working sizes are equal are stacked into one forward pass (chunks of
``batch_size``); images of other sizes run in their own passes. Nothing is padded to a common
size, so an image's matte is the same alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import cv2
import numpy as np
import torch
from torch import nn

from matting_lib.data.decode import MAX_PIXELS, decode_image

ImageInput = Union[np.ndarray, bytes, bytearray, memoryview]
"""A uint8 RGB array (H, W, 3), a grey (H, W) array, or an encoded image file."""

DEFAULT_MAX_SIDE = 1024


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def as_rgb(image: ImageInput, name: str = "<image>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode bytes or check an array; returns uint8 (H, W, 3) RGB.

    Raises:
        matting_lib.data.ImageDecodeError: undecodable bytes (a ValueError).
        ValueError: an array of the wrong dtype or shape.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), name=name, max_pixels=max_pixels)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: image array must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: image array must be (H, W, 3) RGB or (H, W) grey, got shape {arr.shape}")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ValueError(f"{name}: {arr.shape[1]}x{arr.shape[0]} is over the {max_pixels} pixel limit")
    return arr


def working_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """The (h, w) the network sees: long side capped at ``max_side`` (None or 0 = no cap)."""
    if not max_side or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def to_working_size(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """``rgb`` (H, W, 3) resized by area averaging to :func:`working_size` (itself when it fits)."""
    h, w = rgb.shape[:2]
    wh, ww = working_size(h, w, max_side)
    return rgb if (wh, ww) == (h, w) else cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA)


@dataclass
class Predictor:
    """Runs a matting model on images of any size. See the module docstring for the policy."""

    model: nn.Module
    device: torch.device = field(default_factory=lambda: resolve_device("auto"))
    max_side: int | None = DEFAULT_MAX_SIDE
    """Long side the network works at; larger inputs are downscaled, their alpha upsampled."""
    batch_size: int = 4
    """Largest forward pass."""
    precision: str = "off"
    """'off' (fp32), 'fp16' or 'bf16' autocast; half precision only on CUDA."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Where the model came from: checkpoint URI, metrics, config."""

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device)
        self._check_policy()
        if self.precision not in ("off", "fp16", "bf16"):
            raise ValueError(f"precision must be 'off', 'fp16' or 'bf16', got {self.precision!r}")
        if self.precision != "off" and self.device.type != "cuda":
            raise ValueError(f"precision {self.precision!r} needs a CUDA device, got {self.device}")
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, uri: str, **kwargs: Any) -> "Predictor":
        """Load a matting_lib checkpoint from a local path or any fsspec URI (s3:// included)."""
        from matting_lib.checkpoint import load_checkpoint

        ck = load_checkpoint(uri)
        meta = {"checkpoint": uri, "metrics": dict(ck.metrics), "model_config": ck.model_config, "data_fingerprint": ck.data_fingerprint}
        return cls(ck.build_model(), metadata=meta, **kwargs)

    @property
    def working_side(self) -> int:
        """The model's own working long side (``ModelConfig.working_side``; 0 = none)."""
        cfg = self.metadata.get("model_config") or getattr(self.model, "config", None)
        return int(getattr(cfg, "working_side", 0) or 0)

    def effective_side(self, max_side: int | None = -1) -> int | None:
        """The long side the network works at for a call with ``max_side`` (-1 = the predictor's)."""
        side = self.max_side if max_side == -1 else max_side
        own = self.working_side
        return (min(side, own) if side else own) if own else side

    def _check_policy(self) -> None:
        """Validate the backend-independent settings (``max_side``, ``batch_size``)."""
        if self.max_side is not None and not (32 <= int(self.max_side) <= 8192):
            raise ValueError(f"max_side must be in [32, 8192] or None, got {self.max_side}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    # ----------------------------------------------------------------------- inference
    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, h, w, 3) -> float32 (N, h, w) alpha in [0, 1]. The one backend-specific
        step: :class:`matting_lib.inference.onnx_runtime.OnnxPredictor` overrides it."""
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if self.precision == "off":
            y = self.model(x)
        else:
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            with torch.autocast(device_type="cuda", dtype=dtype):
                y = self.model(x)
        return y[:, 0].float().clamp_(0, 1).cpu().numpy()

    def predict_batch(self, images: Sequence[ImageInput], max_side: int | None = -1) -> list[np.ndarray]:
        """Alpha mattes, float32 (H, W) in [0, 1] at each input's own size, in input order.

        ``max_side``: override the predictor's working long side for this call (-1 = keep); the
        model's own ``working_side`` still caps it.
        """
        side = self.effective_side(max_side)
        rgbs = [as_rgb(im, name=f"image[{i}]") for i, im in enumerate(images)]
        work = [to_working_size(rgb, side) for rgb in rgbs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(work):
            groups.setdefault(im.shape[:2], []).append(i)
        small: list[np.ndarray | None] = [None] * len(work)
        for idx in groups.values():
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k : k + self.batch_size]
                out = self._forward(np.stack([work[i] for i in chunk]))
                for i, a in zip(chunk, out):
                    small[i] = a
        results = []
        for rgb, a in zip(rgbs, small):
            h, w = rgb.shape[:2]
            if a.shape != (h, w):
                a = np.clip(cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
            results.append(a.astype(np.float32, copy=False))
        return results

    def predict(self, image: ImageInput, max_side: int | None = -1) -> np.ndarray:
        """Alpha matte of one image, float32 (H, W) in [0, 1] at the input's size."""
        return self.predict_batch([image], max_side=max_side)[0]
