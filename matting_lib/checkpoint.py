"""Self-describing checkpoint files: weights + model config + training config + metrics.

One file (``*.pt``, torch's zip container) holds everything needed to rebuild the model:

    {
      "format": "matting-checkpoint", "version": 1,
      "model_config": {...},        # ModelConfig as plain data
      "train_config": {...},        # TrainConfig as plain data (may be empty)
      "metrics": {...},             # e.g. {"val_sad": 12.3, "epoch": 7}
      "data_fingerprint": "sha256:...",
      "state_dict": {...},          # model weights
      "training_state": {...},      # optional: optimizer / scheduler / scaler / epoch, for resume
      "refiner": {"config": {...}, "state_dict": {...}, "metrics": {...}},  # optional: the learned
                                    # full-resolution refiner (matting_lib.refine) served with it
    }

A refiner trained on its own is stored in the same container with the header
``"format": "matting-refiner"`` and the ``refiner`` section's three keys at the top level
(:func:`save_refiner`); :func:`load_refiner` reads either kind of file.

Files are read with ``torch.load(weights_only=True)``, so loading never executes code from
the file. Writes are atomic (temporary file + rename locally; single PUT on S3). Integrity:
the zip container stores a CRC-32 of every record (the pickled metadata and each tensor's
bytes); ``torch.load`` does not check them, so :func:`parse_checkpoint` verifies every CRC
and the central directory before unpickling anything. A truncated file (at any offset) or a
flipped bit in any record is a :class:`CheckpointError` naming the file, never a model with
some wrong weights. This needs no change of format: files written by any version load.

Stored model configs are read in today's terms (:func:`upgrade_model_config`): files written
while ``working_side`` took ``0`` for "no limit" load with None, its one meaning now. The
files themselves are not rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from matting_lib import io
from matting_lib.config import ConfigError, ModelConfig, from_dict, to_dict

FORMAT = "matting-checkpoint"
REFINER_FORMAT = "matting-refiner"
VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable checkpoint: not one at all, truncated, or the wrong architecture."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``build_model()`` rebuilds the network with its weights."""

    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    training_state: dict[str, Any] | None = None
    uri: str = ""
    refiner: dict[str, Any] | None = None
    """The attached learned refiner: ``{"config", "state_dict", "metrics"}``, or None."""

    def build_refiner(self) -> nn.Module | None:
        """The attached :class:`matting_lib.refine.net.EdgeRefiner` in eval mode, or None."""
        return None if self.refiner is None else build_refiner(self.refiner, self.uri)

    def build_model(self) -> nn.Module:
        """The model described by ``model_config`` with these weights loaded strictly."""
        from matting_lib.nets import build_model

        model = build_model(self.model_config, load_pretrained=False)
        report = load_weights(model, self.state_dict, strict=True, source=self.uri)
        assert report.complete
        return model


@dataclass(frozen=True)
class LoadReport:
    """What a (partial) load did. ``skipped`` = keys in the file not loaded (unexpected or wrong shape)."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatch: tuple[str, ...]

    @property
    def skipped(self) -> tuple[str, ...]:
        return self.unexpected + self.shape_mismatch

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}; "
            f"unexpected {len(self.unexpected)}; shape mismatch {len(self.shape_mismatch)}"
        )


def data_fingerprint(items: Iterable[Mapping[str, Any] | str]) -> str:
    """A stable hash of a dataset's identity: sorted image/mask URIs and sizes from manifest rows."""
    h = hashlib.sha256()
    keys = []
    for it in items:
        if isinstance(it, str):
            keys.append(it)
        else:
            keys.append(json.dumps({k: it.get(k) for k in ("image_uri", "mask_uri", "height", "width", "split")}, sort_keys=True))
    for k in sorted(keys):
        h.update(k.encode())
        h.update(b"\n")
    return f"sha256:{h.hexdigest()[:32]}"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    return value


def checkpoint_bytes(
    model: nn.Module,
    *,
    model_config: ModelConfig | None = None,
    train_config: Any = None,
    metrics: Mapping[str, Any] | None = None,
    data_fingerprint: str = "",
    training_state: Mapping[str, Any] | None = None,
    refiner: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise a checkpoint to bytes (what :func:`save_checkpoint` writes). ``refiner``: a
    section from :func:`refiner_section` to serve with the model."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    cfg = model_config or getattr(model, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError("model has no ModelConfig (pass model_config=...)")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": to_dict(cfg),
        "train_config": _plain(train_config) or {},
        "metrics": {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in (metrics or {}).items()},
        "data_fingerprint": data_fingerprint,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if training_state is not None:
        payload["training_state"] = dict(training_state)
    if refiner is not None:
        payload["refiner"] = dict(refiner)
    buf = _io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(uri: str, model: nn.Module, **kwargs: Any) -> str:
    """Write a checkpoint atomically to a local path or fsspec URI; returns ``uri``.

    Keyword arguments are those of :func:`checkpoint_bytes`.
    """
    io.write_bytes(uri, checkpoint_bytes(model, **kwargs))
    return uri


def upgrade_model_config(data: Any) -> Any:
    """A model config as stored by any version (a checkpoint's ``model_config``, an ONNX export's
    metadata), in today's terms: ``working_side: 0``, "no limit" until None took that meaning,
    becomes None. Anything that is not a mapping is returned as it is, for the loader to refuse."""
    if isinstance(data, Mapping) and data.get("working_side") == 0:
        return {**data, "working_side": None}
    return data


def parse_checkpoint(data: bytes, source: str = "<bytes>") -> Checkpoint:
    """Decode checkpoint bytes; raises :class:`CheckpointError` naming ``source``."""
    if len(data) == 0:
        raise CheckpointError(f"{source}: empty file, not a checkpoint")
    if not data.startswith(b"PK"):
        raise CheckpointError(f"{source}: not a checkpoint (not a torch zip container)")
    _verify_container(data, source)
    try:
        payload = torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/UnpicklingError/EOFError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "zip" in msg.lower() or "central directory" in msg.lower() or isinstance(e, EOFError):
            raise CheckpointError(f"{source}: truncated or corrupt checkpoint ({msg})") from None
        raise CheckpointError(f"{source}: unreadable checkpoint ({type(e).__name__}: {msg})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a matting checkpoint (no '{FORMAT}' header)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{source}: checkpoint version {payload['version']} is newer than this code ({VERSION})")
    try:
        model_config = from_dict(ModelConfig, upgrade_model_config(payload["model_config"]))
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{source}: invalid model config in checkpoint: {e}") from None
    train_config = payload.get("train_config") or {}
    if isinstance(train_config, Mapping) and "model" in train_config:  # TrainConfig as plain data: the same upgrade
        train_config = {**train_config, "model": upgrade_model_config(train_config["model"])}
    return Checkpoint(
        model_config=model_config,
        state_dict=payload["state_dict"],
        train_config=train_config,
        metrics=payload.get("metrics") or {},
        data_fingerprint=payload.get("data_fingerprint", ""),
        training_state=payload.get("training_state"),
        uri=source,
        refiner=payload.get("refiner"),
    )


def _verify_container(data: bytes, source: str) -> None:
    """Check the zip's directory and every record's CRC-32; raises :class:`CheckpointError`."""
    try:
        with zipfile.ZipFile(_io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{source}: truncated or corrupt checkpoint ({e})") from None
    if bad is not None:
        raise CheckpointError(f"{source}: corrupt checkpoint: record {bad!r} fails its CRC-32 check")


def load_checkpoint(uri: str) -> Checkpoint:
    """Read a checkpoint from a local path or any fsspec URI (``s3://`` included)."""
    try:
        data = io.read_bytes(uri)
    except FileNotFoundError:
        raise CheckpointError(f"{uri}: checkpoint file not found") from None
    return parse_checkpoint(data, source=uri)


# ----------------------------------------------------------------------------- refiners
def refiner_section(model: nn.Module, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An :class:`matting_lib.refine.net.EdgeRefiner` as plain data: config, weights, metrics."""
    return {
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": dict(metrics or {}),
    }


def save_refiner(uri: str, model: nn.Module, metrics: Mapping[str, Any] | None = None) -> str:
    """Write a refiner on its own (header ``matting-refiner``), atomically; returns ``uri``."""
    buf = _io.BytesIO()
    torch.save({"format": REFINER_FORMAT, "version": VERSION, **refiner_section(model, metrics)}, buf)
    io.write_bytes(uri, buf.getvalue())
    return uri


def build_refiner(section: Mapping[str, Any], source: str) -> nn.Module:
    from matting_lib.refine.net import EdgeRefiner, RefinerConfig

    try:
        cfg = dict(section["config"])
        if "context_dilations" in cfg:
            cfg["context_dilations"] = tuple(cfg["context_dilations"])
        model = EdgeRefiner(RefinerConfig(**cfg))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid refiner config: {e}") from None
    load_weights(model, section["state_dict"], strict=True, source=f"{source} (refiner)")
    return model.eval()


def load_refiner_section(uri: str) -> dict[str, Any]:
    """The refiner section of a refiner file, or of a matting checkpoint that carries one.

    Raises:
        CheckpointError: missing, corrupt, or a matting checkpoint without a refiner.
    """
    try:
        data = io.read_bytes(uri)
    except FileNotFoundError:
        raise CheckpointError(f"{uri}: refiner file not found") from None
    if not data.startswith(b"PK"):
        raise CheckpointError(f"{uri}: not a refiner (not a torch zip container)")
    _verify_container(data, uri)
    try:
        payload = torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - as in parse_checkpoint
        raise CheckpointError(f"{uri}: unreadable refiner ({type(e).__name__})") from None
    if isinstance(payload, dict) and payload.get("format") == REFINER_FORMAT:
        return {k: payload[k] for k in ("config", "state_dict", "metrics") if k in payload}
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if not payload.get("refiner"):
            raise CheckpointError(f"{uri}: this matting checkpoint carries no refiner")
        return dict(payload["refiner"])
    raise CheckpointError(f"{uri}: not a refiner (no '{REFINER_FORMAT}' header)")


def load_refiner(uri: str) -> nn.Module:
    """The :class:`matting_lib.refine.net.EdgeRefiner` stored at ``uri`` (see :func:`load_refiner_section`), in eval mode."""
    return build_refiner(load_refiner_section(uri), uri)


def load_model(uri: str) -> nn.Module:
    """Shortcut: the model stored at ``uri``, in eval mode."""
    return load_checkpoint(uri).build_model().eval()


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = False, source: str = ""
) -> LoadReport:
    """Load weights into ``model``.

    ``strict=False`` is partial loading for fine-tuning (e.g. a base model into a model
    with a low-light module): matching keys with matching shapes load; the rest are
    reported, never silently dropped. ``strict=True`` raises :class:`CheckpointError`
    listing the differences (wrong architecture).
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    own = model.state_dict()
    loadable = {}
    mismatch = []
    unexpected = []
    for k, v in state_dict.items():
        if k not in own:
            unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            mismatch.append(k)
        else:
            loadable[k] = v
    missing = [k for k in own if k not in state_dict]
    report = LoadReport(tuple(sorted(loadable)), tuple(missing), tuple(unexpected), tuple(mismatch))
    if strict and not report.complete:
        def head(keys: tuple[str, ...]) -> str:
            return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

        raise CheckpointError(
            f"{source or 'checkpoint'}: wrong architecture for this model: "
            f"missing [{head(report.missing)}], unexpected [{head(report.unexpected)}], "
            f"shape mismatch [{head(report.shape_mismatch)}]"
        )
    model.load_state_dict(loadable, strict=False)
    return report
