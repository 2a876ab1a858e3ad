"""The one entry point for a predictor: :func:`load_predictor` picks the backend from config.

    predictor = load_predictor("models/base.pt")        # torch, or ONNX Runtime on CPU
    predictor = load_predictor("models/base.int8.onnx")  # an export runs on ONNX Runtime

It sits above both backends (:mod:`matting_lib.inference.predictor`, torch, and
:mod:`matting_lib.inference.onnx_runtime`, ONNX Runtime), so neither imports the other's chooser.
"""

from __future__ import annotations

from typing import Any

import torch

from matting_lib.inference.backends import BACKENDS
from matting_lib.inference.onnx_runtime import OnnxPredictor
from matting_lib.inference.predictor import Predictor, resolve_device

CPU_AUTO_BACKEND = "onnx"
"""What ``backend="auto"`` runs a checkpoint with on CPU: the faster one in ``bench/inference.py``
(see :func:`load_predictor` for the figures)."""


def load_predictor(uri: str, backend: str = "auto", **kwargs: Any) -> Predictor:
    """The one entry point for a predictor, from config: a checkpoint or an exported ``.onnx``.

    Args:
        uri: a matting checkpoint (``.pt``) or an ONNX export (``.onnx``, from
            ``python -m ray_jobs.export``), local or any fsspec URI (``s3://`` included).
        backend: ``"torch"`` (torch eager), ``"onnx"`` (ONNX Runtime,
            :class:`matting_lib.inference.onnx_runtime.OnnxPredictor`) or ``"auto"``: an ``.onnx`` URI
            runs on ONNX Runtime; a checkpoint runs on torch when the device is CUDA and on
            :data:`CPU_AUTO_BACKEND` on CPU. A checkpoint on the ``onnx`` backend is exported in
            memory at load time (FP32; a second or two).
        **kwargs: the predictor's settings (``device``, ``max_side``, ``batch_size``, ``refine``,
            ``subject_prior``; torch also ``precision``; a checkpoint also ``refiner_uri``, a learned
            refiner to use instead of its own). ``num_threads`` (None = the library default) is the ORT session's
            intra-op threads on onnx; on torch it sets ``torch.set_num_threads`` for the whole
            process, which is what a serving replica or a predict worker wants.

    CPU choice for ``auto`` is ONNX Runtime, measured by ``bench/inference.py`` (base model of
    ``configs/base.yaml``, FP32, 2-core AMD EPYC, both with 2 threads, 2026-11-23): at 512²
    batch 1, 13.2 images/s on ORT against 5.7 on torch eager in one run and 7.3 against 3.9 in
    a busier one; ORT led at every size (512², 1024²) and batch (1, 4) measured (``bench/RESULTS.md``,
    "Inference").

    Raises:
        ValueError: unknown backend, an ``.onnx`` file asked to run on torch or given a ``refiner_uri``.
        CheckpointError, FileNotFoundError, OSError: an unreadable checkpoint or export.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    is_onnx = uri.lower().endswith(".onnx")
    if is_onnx and backend == "torch":
        raise ValueError(f"{uri}: an ONNX export runs only on the 'onnx' backend (got backend='torch')")
    if backend == "auto":
        device = resolve_device(kwargs.get("device", "auto")) if not is_onnx else None
        backend = "onnx" if is_onnx or (device is not None and device.type == "cpu" and CPU_AUTO_BACKEND == "onnx") else "torch"
    if is_onnx and kwargs.pop("refiner_uri", ""):
        raise ValueError(f"{uri}: an ONNX export carries its own refiner (ray_jobs.export --refiner); "
                         "a separate refiner applies to checkpoints only")
    if backend == "torch":
        threads = kwargs.pop("num_threads", None)
        if threads is not None:
            if threads < 1:
                raise ValueError(f"num_threads must be >= 1 or None, got {threads}")
            torch.set_num_threads(threads)
        return Predictor.from_checkpoint(uri, **kwargs)
    return OnnxPredictor.from_onnx(uri, **kwargs) if is_onnx else OnnxPredictor.from_checkpoint(uri, **kwargs)


def backend_name(predictor: Predictor) -> str:
    """``"onnx"`` or ``"torch"``: the backend a predictor from :func:`load_predictor` runs on."""
    return "onnx" if isinstance(predictor, OnnxPredictor) else "torch"


def parameter_count(predictor: Predictor) -> int:
    """The network's parameters, on either backend (an ONNX export's from the model config it carries)."""
    if isinstance(predictor, OnnxPredictor):
        from matting_lib.nets import build_model

        cfg = predictor.metadata.get("model_config")
        if cfg is None:
            raise ValueError(f"{predictor.metadata.get('onnx', 'ONNX export')}: no model config in its metadata")
        model = build_model(cfg)
    else:
        model = predictor.model
    return sum(t.numel() for t in model.parameters())
