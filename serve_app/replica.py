"""What the ingress and the model replicas share without loading a network: their
``user_config`` parsing and handing freed memory back to the OS.

Kept apart from :mod:`serve_app.model` so that an ingress whose models run in their own
deployments (``model_deployment.placement: separate``) never imports torch: a faster replica
start and a smaller ingress process.
"""

from __future__ import annotations

import ctypes
import urllib.parse
from typing import Any, Mapping, Sequence

TRIM_AFTER_PIXELS = 4_000_000
"""After an image with at least this many pixels (about 2000x2000), or one worked at more than the
configured ``max_side``, the process hands the memory it freed back to the OS (:func:`release_memory`)."""


def checkpoint_label(uri: str) -> str:
    """What clients are shown of a checkpoint (``X-Matting-Checkpoint``, ``GET /v1/models``): a local
    path (or ``file://`` URI) by its file name only, ``/srv/models/base.pt`` -> ``base.pt``, so no
    response reveals the server's directories; a remote URI (``s3://bucket/models/base.pt``) whole,
    without any user info, query or fragment. Internally (the cache key, hot swap) the full URI is kept."""
    if "://" not in uri or uri.startswith("file://"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or path
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_user_config(user_config: Mapping[str, Any] | None, default_checkpoint: str) -> str:
    """The checkpoint URI a ``user_config`` asks for (``default_checkpoint`` when it names none)."""
    cfg = dict(user_config or {})
    unknown = sorted(set(cfg) - {"checkpoint"})
    if unknown:
        raise ValueError(f"user_config: unknown key {unknown[0]!r} (valid keys: checkpoint)")
    uri = cfg.get("checkpoint") or default_checkpoint
    if not isinstance(uri, str):
        raise ValueError(f"user_config.checkpoint must be a string URI, got {uri!r}")
    return uri


def parse_ingress_user_config(user_config: Mapping[str, Any] | None, models: Sequence[str], placement: str) -> dict[str, str]:
    """The checkpoints an ingress ``user_config`` swaps to (``{"checkpoints": {name: URI}}``),
    which only ``model_deployment.placement: ingress`` accepts; ValueError names what is wrong."""
    cfg = dict(user_config or {})
    unknown = sorted(set(cfg) - {"checkpoints"})
    if unknown:
        raise ValueError(f"ingress user_config: unknown key {unknown[0]!r} (valid keys: checkpoints)")
    checkpoints = cfg.get("checkpoints") or {}
    if checkpoints and placement != "ingress":
        raise ValueError("ingress user_config.checkpoints needs model_deployment.placement: ingress; "
                         "with separate model deployments, set user_config.checkpoint on model_<name>")
    if not isinstance(checkpoints, Mapping) or not set(checkpoints) <= set(models) or not all(
        isinstance(v, str) and v for v in checkpoints.values()
    ):
        raise ValueError(f"ingress user_config.checkpoints: expected a mapping of model names "
                         f"({', '.join(models)}) to URIs, got {checkpoints!r}")
    return dict(checkpoints)


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), so the RSS of a process that
    served a large image falls back instead of staying at its peak. A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
