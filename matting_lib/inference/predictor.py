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
is at most ``max_side`` (the convention of :mod:`matting_lib.resize`: None = no cap, and in a
call :data:`~matting_lib.resize.KEEP`, the default, = the predictor's own) and at most the
model's own ``working_side`` (its config: the scale it
was trained to see; the smaller wins). Its coarse alpha then goes through the refinement stage,
:func:`matting_lib.refine.refine_alpha`, which decides every pixel at the input's own size:
``learned`` (the checkpoint's attached refiner, the default when there is one), ``classical``,
or ``off`` (bilinear upsampling, the default without a refiner). ``subject_prior`` lets an
ImageNet activation map stand in for an empty coarse alpha (:mod:`matting_lib.refine.prior`).

Batching: images whose working sizes are equal are stacked into one forward pass (chunks of
``batch_size``); images of other sizes run in their own passes. Nothing is padded to a common
size, so an image's matte is the same alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn

from matting_lib.data.decode import MAX_PIXELS, decode_image
from matting_lib.resize import KEEP, MaxSide, check_side, downscale_long_side
from matting_lib.refine import RefineInfo, RefineParams, refine_alpha, resolve_mode
from matting_lib.refine.hints import Hints, StrokeParams, apply_strokes, shrink_mask

ImageInput = Union[np.ndarray, bytes, bytearray, memoryview]
"""A uint8 RGB array (H, W, 3), a grey (H, W) array, or an encoded image file."""

DEFAULT_MAX_SIDE = 1024
MAX_SIDE_RANGE = (32, 8192)


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


def load_parts(uri: str, refiner_uri: str = "") -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """A checkpoint's network, its learned refiner (``refiner_uri``'s instead when given, else the
    one it carries, or None) and the metadata every predictor keeps: what both backends load."""
    from matting_lib.checkpoint import load_checkpoint, load_refiner

    ck = load_checkpoint(uri)
    refiner = load_refiner(refiner_uri) if refiner_uri else ck.build_refiner()
    meta = {"checkpoint": uri, "metrics": dict(ck.metrics), "model_config": ck.model_config,
            "data_fingerprint": ck.data_fingerprint, "refiner": refiner_uri or (uri if refiner is not None else "")}
    return ck.build_model(), refiner, meta


@dataclass
class Predictor:
    """Runs a matting model on images of any size. See the module docstring for the policy."""

    model: nn.Module
    device: torch.device = field(default_factory=lambda: resolve_device("auto"))
    max_side: int | None = DEFAULT_MAX_SIDE
    """Long side the network works at; larger inputs are downscaled, their alpha upsampled
    (None = no cap: the network sees the full size, unless the model's own ``working_side`` caps it)."""
    batch_size: int = 4
    """Largest forward pass."""
    precision: str = "off"
    """'off' (fp32), 'fp16' or 'bf16' autocast; half precision only on CUDA."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Where the model came from: checkpoint URI, metrics, config."""
    refiner: nn.Module | None = None
    """The learned full-resolution refiner (:class:`matting_lib.refine.net.EdgeRefiner`), or None."""
    refine: str = "auto"
    """Default refinement mode: ``auto`` (learned with a refiner, else off) or one of
    :data:`matting_lib.refine.MODES`."""
    subject_prior: bool = True
    """Let the ImageNet subject prior stand in for an empty coarse alpha."""
    refine_params: RefineParams = field(default_factory=RefineParams)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device)
        self.refine = resolve_mode(self.refine, self.has_refiner)
        self._check_policy()
        if self.precision not in ("off", "fp16", "bf16"):
            raise ValueError(f"precision must be 'off', 'fp16' or 'bf16', got {self.precision!r}")
        if self.precision != "off" and self.device.type != "cuda":
            raise ValueError(f"precision {self.precision!r} needs a CUDA device, got {self.device}")
        self.model = self.model.to(self.device).eval()
        if self.refiner is not None:
            self.refiner = self.refiner.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, uri: str, refiner_uri: str = "", **kwargs: Any) -> "Predictor":
        """Load a matting_lib checkpoint from a local path or any fsspec URI (s3:// included).
        ``refiner_uri``: a refiner to use instead of the one the checkpoint carries."""
        model, refiner, meta = load_parts(uri, refiner_uri)
        return cls(model, metadata=meta, refiner=refiner, **kwargs)

    @property
    def has_refiner(self) -> bool:
        """Whether the ``learned`` refinement mode is available."""
        return self.refiner is not None

    @property
    def working_side(self) -> int | None:
        """The model's own working long side, None when it has none (``ModelConfig.working_side``)."""
        cfg = self.metadata.get("model_config") or getattr(self.model, "config", None)
        return getattr(cfg, "working_side", None)

    def effective_side(self, max_side: MaxSide = KEEP) -> int | None:
        """The long side the network works at for a call with ``max_side`` (:data:`KEEP` = the
        predictor's, None = no cap of the call's own): the smaller of it and :attr:`working_side`,
        None when neither caps."""
        side = self.max_side if max_side is KEEP else check_side(max_side, "max_side", *MAX_SIDE_RANGE)
        caps = [c for c in (side, self.working_side) if c is not None]
        return min(caps) if caps else None

    def _check_policy(self) -> None:
        """Validate the backend-independent settings (``max_side``, ``batch_size``)."""
        self.max_side = check_side(self.max_side, "max_side", *MAX_SIDE_RANGE)
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

    @torch.inference_mode()
    def _refiner_coefficients(self, image_lr: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """The learned refiner: uint8 (h, w, 3) and float32 (h, w) -> float32 (4, h, w). The
        second backend-specific step (ONNX Runtime overrides it too)."""
        x = torch.from_numpy(image_lr).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        c = torch.from_numpy(coarse).to(self.device)[None, None].float()
        return self.refiner(x, c)[0][0].float().cpu().numpy()

    def _prior(self):
        from matting_lib.refine.prior import shared_prior

        return shared_prior()

    def matte_batch(self, images: Sequence[ImageInput], max_side: MaxSide = KEEP,
                    refine: str | None = None) -> list[tuple[np.ndarray, RefineInfo]]:
        """Like :meth:`predict_batch`, with what the refinement stage did for each image."""
        mode = self.refine if refine is None else resolve_mode(refine, self.has_refiner)
        side = self.effective_side(max_side)
        rgbs = [as_rgb(im, name=f"image[{i}]") for i, im in enumerate(images)]
        work = [downscale_long_side(rgb, side) for rgb in rgbs]
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
        coefficients = self._refiner_coefficients if self.has_refiner else None
        prior = self._prior() if self.subject_prior else None
        return [refine_alpha(rgb, lr, a, mode, coefficients, prior, self.refine_params)
                for rgb, lr, a in zip(rgbs, work, small)]

    def matte_hinted(self, image: ImageInput, hints: Hints, max_side: MaxSide = KEEP, refine: str | None = None,
                     strokes: StrokeParams = StrokeParams()) -> tuple[np.ndarray, RefineInfo]:
        """One image's alpha with a user's corrections (:mod:`matting_lib.refine.hints`): the network
        sees the box's crop (the whole image without a box) at its working size, strokes correct its
        alpha there, the refinement stage decides every pixel of the crop at full size, then the
        stroked pixels are set (keep 1, remove 0) and everything outside the box is 0.

        Raises:
            matting_lib.refine.hints.HintError: hints that do not fit the image (a ValueError).
        """
        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        hints.check(h, w)
        mode = self.refine if refine is None else resolve_mode(refine, self.has_refiner)
        y0, y1, x0, x1 = hints.crop(h, w)
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        lr = downscale_long_side(crop, self.effective_side(max_side))
        coarse = self._forward(lr[None])[0]
        marks = hints.marks[y0:y1, x0:x1] if hints.marks is not None else np.zeros(crop.shape[:2], np.int8)
        keep, remove, outside = marks > 0, marks < 0, hints.outside_box(h, w)[y0:y1, x0:x1]
        lh, lw = lr.shape[:2]
        coarse = apply_strokes(lr, coarse, shrink_mask(keep, lh, lw), shrink_mask(remove, lh, lw), strokes,
                               outside=shrink_mask(outside, lh, lw))
        coefficients = self._refiner_coefficients if self.has_refiner else None
        prior = self._prior() if self.subject_prior and not keep.any() else None
        alpha_crop, info = refine_alpha(crop, lr, coarse, mode, coefficients, prior, self.refine_params)
        alpha_crop[keep] = 1.0
        alpha_crop[remove | outside] = 0.0
        alpha = np.zeros((h, w), np.float32)
        alpha[y0:y1, x0:x1] = alpha_crop
        return alpha, info

    def predict_batch(self, images: Sequence[ImageInput], max_side: MaxSide = KEEP,
                      refine: str | None = None) -> list[np.ndarray]:
        """Alpha mattes, float32 (H, W) in [0, 1] at each input's own size, in input order.

        ``max_side``: override the predictor's working long side for this call (:data:`KEEP`, the
        default, = the predictor's; None = no cap); the model's own ``working_side`` still caps it. ``refine``: the refinement mode for this
        call (None = the predictor's :attr:`refine`).
        """
        return [a for a, _ in self.matte_batch(images, max_side, refine)]

    def predict(self, image: ImageInput, max_side: MaxSide = KEEP, refine: str | None = None) -> np.ndarray:
        """Alpha matte of one image, float32 (H, W) in [0, 1] at the input's size."""
        return self.predict_batch([image], max_side=max_side, refine=refine)[0]
