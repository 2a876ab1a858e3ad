"""ONNX Runtime backend: the torch :class:`~matting_lib.inference.predictor.Predictor`'s policy, an ORT forward.

    predictor = OnnxPredictor.from_onnx("models/base.int8.onnx")   # or s3://...
    predictor = OnnxPredictor.from_checkpoint("models/base.pt")    # exported in memory (FP32)
    alpha = predictor.predict(image)                               # same API as Predictor

Prefer :func:`matting_lib.inference.load.load_predictor`, which picks the backend from config.

Only the forward pass differs from the torch predictor (resizing, batching and upsampling are
inherited). The ONNX graph (from :func:`matting_lib.inference.export.export_onnx`) takes float32
``image`` (N, 3, H, W) in [0, 1], any N, H, W, and returns float32 ``alpha`` (N, 1, H, W);
FP16 and INT8 exports keep float32 inputs and outputs. The model's internal pad to a multiple
of its stride is in the graph with dynamic amounts, but its mode was fixed to reflect by
tracing; inputs with a side under the stride (where the torch model may switch to replicate
padding) are padded here, before the graph, by the model's own
:func:`matting_lib.nets.unet.pad_to_multiple`, so both backends see the same pixels.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from matting_lib import io
from matting_lib.checkpoint import upgrade_model_config
from matting_lib.config import ModelConfig, from_dict
from matting_lib.inference.export import (INPUT_NAME, META_PREFIX, OUTPUT_NAME, REFINER_INPUTS, REFINER_META,
                                          OPSET, REFINER_OUTPUT, export_onnx)
from matting_lib.inference.export_cache import cached_export, export_key
from matting_lib.inference.predictor import Predictor, load_parts
from matting_lib.refine import resolve_mode
from matting_lib.nets.unet import crop, pad_to_multiple

ORT_SHRINK = ("memory.enable_memory_arena_shrinkage", "cpu:0")
"""ONNX Runtime run option that frees the unused part of its CPU memory arena after the run."""


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an ImportError saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the ONNX backend needs onnxruntime: pip install onnxruntime") from e
    return ort


def providers(device: str | torch.device) -> list[str]:
    """ORT execution providers for ``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA when ORT has it)."""
    available = onnxruntime().get_available_providers()
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if kind == "auto":
        kind = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"device {device!r}: this onnxruntime has no CUDA provider (available: {', '.join(available)})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' for the ONNX backend, got {device!r}")


def omp_threads() -> int | None:
    """``$OMP_NUM_THREADS`` as a positive int, or None where it is unset or not one."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n >= 1 else None


def make_session(model: bytes, device: str | torch.device = "auto", num_threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` over serialized ONNX ``model``, all graph optimisations on.

    ``num_threads``: intra-op threads; set it to the CPUs a Serve replica is given. None:
    ``$OMP_NUM_THREADS`` where it is set, as torch does (Ray sets it to a task's or actor's
    whole CPUs, the tests to 1), else ORT's default, one per core. ORT's threads spin while they
    wait for work, so a pool larger than the CPUs a process was given burns the others' time.
    """
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads is None:
        num_threads = omp_threads()
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        opts.intra_op_num_threads = num_threads
    return ort.InferenceSession(model, sess_options=opts, providers=providers(device))


def session_metadata(session: Any) -> dict[str, Any]:
    """What the exporter stored in the graph: model config (ModelConfig), stride, precision, checkpoint."""
    props = session.get_modelmeta().custom_metadata_map
    meta: dict[str, Any] = {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}
    if "model_config" in meta:
        meta["model_config"] = from_dict(ModelConfig, upgrade_model_config(json.loads(meta["model_config"])))
    meta["stride"] = int(meta.get("stride", 32))
    return meta


@dataclass
class OnnxPredictor(Predictor):
    """A :class:`Predictor` whose forward pass runs an ONNX Runtime session.

    ``model`` is the ``onnxruntime.InferenceSession``; ``device`` is ``auto``, ``cpu`` or
    ``cuda`` (the ORT provider); ``precision`` must stay ``off``: FP16 or INT8 is a property
    of the exported file. ``max_side``, ``batch_size`` and ``metadata`` are as in
    :class:`Predictor`.
    """

    num_threads: int | None = None
    """ORT intra-op threads (None: ``$OMP_NUM_THREADS`` where set, else one per core; :func:`make_session`)."""
    refiner_session: Any = None
    """ORT session of the learned refiner (from the export's ``matting.refiner_onnx``), or None."""

    @property
    def has_refiner(self) -> bool:
        return self.refiner_session is not None

    def __post_init__(self) -> None:
        if self.refiner_session is None and self.metadata.get(REFINER_META):
            self.refiner_session = make_session(base64.b64decode(self.metadata[REFINER_META]), self.device, self.num_threads)
        self.metadata.pop(REFINER_META, None)  # a base64 graph is no metadata for logs and headers
        self.refine = resolve_mode(self.refine, self.has_refiner)
        self._check_policy()
        if self.precision != "off":
            raise ValueError(
                f"precision {self.precision!r}: the ONNX backend's precision is that of the exported file "
                "(python -m ray_jobs.export --fp16 / --int8); leave precision='off'"
            )
        self.stride = int(self.metadata.get("stride", 32))

    @classmethod
    def from_onnx(cls, uri: str, device: str | torch.device = "auto", num_threads: int | None = None, **kwargs: Any) -> "OnnxPredictor":
        """Load an export (``.onnx``) from a local path or any fsspec URI (``s3://`` included)."""
        try:
            data = io.read_bytes(uri)
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri}: ONNX file not found") from None
        session = make_session(data, device, num_threads)
        meta = {"onnx": uri, **session_metadata(session)}
        return cls(session, device=device, num_threads=num_threads, metadata=meta, **kwargs)

    @classmethod
    def from_torch(
        cls, model: torch.nn.Module, device: str | torch.device = "auto", num_threads: int | None = None, **kwargs: Any
    ) -> "OnnxPredictor":
        """Export ``model`` (and ``refiner=``, a learned refiner, if given) to FP32 ONNX in memory and run it on ORT."""
        return cls.from_serialized(export_onnx(model, refiner=kwargs.pop("refiner", None)), device, num_threads, **kwargs)

    @classmethod
    def from_serialized(
        cls, onnx: bytes, device: str | torch.device = "auto", num_threads: int | None = None, **kwargs: Any
    ) -> "OnnxPredictor":
        """An export's bytes (from :func:`export_onnx`) on ORT; ``metadata=`` adds to what the graph stores."""
        session = make_session(onnx, device, num_threads)
        meta = {**session_metadata(session), **kwargs.pop("metadata", {})}
        return cls(session, device=device, num_threads=num_threads, metadata=meta, **kwargs)

    @classmethod
    def from_checkpoint(cls, uri: str, **kwargs: Any) -> "OnnxPredictor":
        """A matting checkpoint, exported to FP32 ONNX in memory (see :meth:`from_torch`)."""
        refiner_uri = kwargs.pop("refiner_uri", "")
        model, refiner, meta = load_parts(uri, refiner_uri)
        # The export is cached on disk by the checkpoint's (and refiner's) sha256 (export_cache).
        onnx = cached_export(export_key(uri, refiner_uri, OPSET), lambda: export_onnx(model, refiner=refiner))
        return cls.from_serialized(onnx, metadata=meta, **kwargs)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, h, w, 3) -> float32 (N, h, w) alpha in [0, 1], through the ORT session."""
        x = batch.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        pads = None
        if min(x.shape[-2:]) < self.stride:
            padded, pads = pad_to_multiple(torch.from_numpy(x), self.stride)
            x = padded.numpy()
        y = self.model.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x)})[0]
        if pads is not None:
            y = crop(torch.from_numpy(y), pads).numpy()
        return np.clip(y[:, 0], 0.0, 1.0).astype(np.float32, copy=False)

    def _refiner_coefficients(self, image_lr: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """The learned refiner through its ORT session: uint8 (h, w, 3), float32 (h, w) -> (4, h, w)."""
        x = np.ascontiguousarray(image_lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
        c = np.ascontiguousarray(coarse[None, None], dtype=np.float32)
        return self.refiner_session.run([REFINER_OUTPUT], dict(zip(REFINER_INPUTS, (x, c))))[0][0]


class ShrinkingSession:
    """An ONNX Runtime session whose runs on inputs larger than ``min_pixels`` (per image) free the
    arena memory they grew afterwards (:data:`ORT_SHRINK`). ORT otherwise keeps its arena at the
    largest size it ever needed: one 2048-px request would pin about 1.3 GB per replica for good,
    a 4096-px one about 4.3 GB. Runs at or below the configured working size keep the warm arena."""

    def __init__(self, session: Any, min_pixels: int):
        import onnxruntime as ort

        self.session, self.min_pixels = session, min_pixels
        self.shrink = ort.RunOptions()
        self.shrink.add_run_config_entry(*ORT_SHRINK)

    def run(self, output_names: Any, feeds: Mapping[str, np.ndarray], run_options: Any = None) -> Any:
        big = any(v.ndim == 4 and v.shape[-1] * v.shape[-2] > self.min_pixels for v in feeds.values())
        return self.session.run(output_names, feeds, run_options or (self.shrink if big else None))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)
