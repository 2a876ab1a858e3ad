"""A disk cache of the in-memory ONNX exports that the ``onnx`` backend makes of a checkpoint.

Exporting a checkpoint to ONNX costs seconds and prints torch.onnx's constant-folding warnings at
every replica start; the result depends only on the checkpoint's bytes, the refiner's bytes (when a
separate one is given), the export and network code, torch's version and the opset. Those are the
cache key (sha256), so a new checkpoint, a new refiner or changed code is a new export, never a stale
one. Files go to ``<cache>/onnx/<key>.onnx``, ``<cache>`` being ``$MATTING_CACHE_DIR`` or
``~/.cache/matting`` (:func:`matting_lib.data.manifest.cache_dir`); ``MATTING_ONNX_CACHE=off`` turns it
off. Writes are atomic (a temporary file renamed into place), so replicas starting together never read
half a file; a cache that cannot be written is skipped. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from matting_lib import io

logger = logging.getLogger(__name__)

SWITCH_ENV = "MATTING_ONNX_CACHE"
"""Set to ``off`` (or ``0``) to export at every load."""


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of the code an export depends on: the exporter, the networks and the learned refiner."""
    root = Path(__file__).resolve().parents[1]
    files = sorted([root / "inference" / "export.py", root / "refine" / "net.py", *(root / "nets").rglob("*.py")])
    h = hashlib.sha256(torch.__version__.encode())
    for f in files:
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def export_key(checkpoint_uri: str, refiner_uri: str = "", opset: int = 0) -> str:
    """The cache key of the export of ``checkpoint_uri`` (with ``refiner_uri`` when given)."""
    h = hashlib.sha256(f"opset={opset}\0{code_fingerprint()}\0".encode())
    for uri in (checkpoint_uri, refiner_uri):
        h.update(hashlib.sha256(io.read_bytes(uri)).digest() if uri else b"-")
    return h.hexdigest()


def cache_enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def cache_folder() -> Path:
    from matting_lib.data.manifest import cache_dir

    return Path(cache_dir()) / "onnx"


def cached_export(key: str, export: Callable[[], bytes]) -> bytes:
    """The export stored under ``key``, or ``export()`` stored there and returned."""
    if not cache_enabled():
        return export()
    path = cache_folder() / f"{key}.onnx"
    try:
        data = path.read_bytes()
        if data:
            logger.info("ONNX export from the cache: %s", path)
            return data
    except OSError:
        pass
    data = export()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not cache the ONNX export in %s: %s", path.parent, e)
    return data
