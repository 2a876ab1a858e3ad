"""Configuration of the Serve app: frozen dataclasses built from the ``args`` of ``serve_app/config.yaml``.

The YAML file is a regular Ray Serve config (``serve run`` / ``serve deploy`` accept it);
its application's ``args`` mapping is this module's :class:`ServeConfig`, validated with
the project's loader (:func:`matting_lib.config.from_dict`), so a bad key fails with its name
(``ConfigError: limits.max_upload_mb: must be > 0``).

Units: sizes in megabytes (MB = 10^6 bytes), times in seconds, brightness in [0, 1]
(mean Rec.601 luma, see :mod:`matting_lib.routing`). Relative paths (checkpoints, the
history database, the result store) are relative to the repository root, so the same file
works whatever directory ``serve run`` or ``python -m serve_app`` is started from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from matting_lib.config import ConfigError, apply_overrides, from_dict, load_yaml, require
from matting_lib.routing import BrightnessRouter
from matting_lib.inference.backends import BACKENDS
from matting_lib.refine import MODES as REFINE_MODES
from serve_app.params import MAX_SIDE, MIN_SIDE

REPO_ROOT = Path(__file__).resolve().parents[1]
"""Base of relative paths in the config."""

DEFAULT_CONFIG_PATH = Path(__file__).resolve().with_name("config.yaml")
IMPORT_PATH = "serve_app.app:build_app"
"""The application builder that ``config.yaml`` names."""
PLACEMENTS = ("separate", "ingress")
"""Values of ``model_deployment.placement``."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model: a name (what clients and the router use) and its checkpoint."""

    name: str
    """Model name, e.g. 'base'; the Serve deployment is called ``model_<name>``."""
    checkpoint: str
    """Checkpoint URI: a local path (relative to the repository root) or s3://bucket/key; an
    ONNX export (``.onnx``, from ``python -m ray_jobs.export``) runs on ONNX Runtime."""
    backend: str = ""
    """This model's inference backend; empty = ``model_deployment.backend``."""

    def __post_init__(self) -> None:
        require(bool(self.name) and self.name.replace("_", "").replace("-", "").isalnum(), "models.name",
               f"must be letters, digits, '-' or '_', got {self.name!r}")
        require(bool(self.checkpoint), f"models.{self.name}.checkpoint", "must not be empty")
        require(self.backend in ("", *BACKENDS), f"models.{self.name}.backend",
                f"must be one of {', '.join(BACKENDS)} (or empty), got {self.backend!r}")


@dataclass(frozen=True)
class AutoscalingSettings:
    """Serve ``autoscaling_config`` of each model deployment (times in seconds)."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 2.0
    """Queued + running requests per replica that autoscaling aims at."""
    metrics_interval_s: float | None = None
    """How often replicas report load; None = Serve's default (10 s). Deprecated by Ray in favour of the
    RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S variables; short windows in tests still need it."""
    look_back_period_s: float = 15.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0

    def __post_init__(self) -> None:
        require(self.min_replicas >= 1, "model_deployment.autoscaling.min_replicas", "must be >= 1")
        require(self.max_replicas >= self.min_replicas, "model_deployment.autoscaling.max_replicas",
               "must be >= min_replicas")
        require(self.target_ongoing_requests > 0, "model_deployment.autoscaling.target_ongoing_requests", "must be > 0")
        require(self.metrics_interval_s is None or self.metrics_interval_s > 0,
               "model_deployment.autoscaling.metrics_interval_s", "must be > 0")
        require(self.look_back_period_s > 0, "model_deployment.autoscaling.look_back_period_s", "must be > 0")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            require(getattr(self, name) >= 0, f"model_deployment.autoscaling.{name}", "must be >= 0")

    def to_serve(self) -> dict[str, Any]:
        """The mapping Serve's ``autoscaling_config`` takes (unset fields left to Serve)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelDeploymentSettings:
    """Resources, batching and inference policy shared by every model deployment."""

    num_cpus: float = 0.25
    """CPUs reserved per replica; fractions let every deployment fit on a 2-core machine."""
    num_gpus: float = 0.0
    """GPUs per replica (0 on CPU machines)."""
    device: str = "auto"
    """Torch device: 'auto' (CUDA when present), 'cpu', 'cuda:0'..."""
    backend: str = "auto"
    """Inference backend: 'torch' (eager), 'onnx' (ONNX Runtime, the checkpoint exported at its first
    load and cached by its sha256 under ``$MATTING_CACHE_DIR/onnx``, :mod:`matting_lib.inference.export_cache`) or 'auto': ONNX Runtime on CPU, where ``bench/inference.py`` measured it
    faster, torch on CUDA (see :func:`matting_lib.inference.load.load_predictor`)."""
    num_threads: int = 1
    """Intra-op threads of each replica's forward pass (0 = the library default, one per core).
    Replicas hold fractions of a CPU, so one thread each avoids oversubscribing the cores."""
    max_side: int = 1024
    """Long side (px) the network works at by default (the model's own working side caps it);
    its alpha is then refined to the input's full size (``refine``)."""
    refine: str = "auto"
    """Default refinement mode of requests that ask for ``auto``: ``auto`` (the checkpoint's learned
    refiner when it carries one, else ``off``), ``learned``, ``classical`` or ``off``."""
    subject_prior: bool = True
    """When the network's alpha is empty, let the ImageNet subject prior find the subject
    (:mod:`matting_lib.refine.prior`): a tiger, a horse or a cup the network never learned."""
    max_batch_size: int = 1
    """Largest dynamic batch (@serve.batch); 1 disables batching. On CPU batching loses: a batch
    of 4 runs slower per image than 4 single images (bench/serve.py), so 1 is the default; raise
    it to 4-8 on a GPU."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits to fill up."""
    max_ongoing_requests: int = 8
    """Requests a replica accepts at once (the rest queue at the caller)."""
    health_check_period_s: float = 10.0
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)
    placement: str = "separate"
    """Where the models run. ``separate``: one Serve deployment per model, called by the ingress
    through Ray (each model autoscales on its own and can sit on GPU nodes). ``ingress``: every
    model is loaded inside each ingress replica, which then reserves ``num_cpus`` + ``num_gpus``
    on top of ``ingress.num_cpus`` and autoscales with ``autoscaling``: no Ray call per image, the
    lowest latency on a small CPU machine (``bench/serve.py``). Hot swap then goes through the
    ingress: ``deployments: [{name: ingress, user_config: {checkpoints: {base: URI}}}]``."""

    def __post_init__(self) -> None:
        require(self.placement in PLACEMENTS, "model_deployment.placement",
                f"must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        require(0 < self.num_cpus <= 64, "model_deployment.num_cpus", f"must be in (0, 64], got {self.num_cpus}")
        require(self.num_gpus >= 0, "model_deployment.num_gpus", "must be >= 0")
        require(self.backend in BACKENDS, "model_deployment.backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        require(0 <= self.num_threads <= 256, "model_deployment.num_threads", f"must be in [0, 256], got {self.num_threads}")
        require(MIN_SIDE <= self.max_side <= MAX_SIDE, "model_deployment.max_side",
                f"must be in [{MIN_SIDE}, {MAX_SIDE}], got {self.max_side}")
        require(self.refine in ("auto", *REFINE_MODES), "model_deployment.refine",
                f"must be one of auto, {', '.join(REFINE_MODES)}, got {self.refine!r}")
        require(self.max_batch_size >= 1, "model_deployment.max_batch_size", "must be >= 1")
        require(self.batch_wait_timeout_s >= 0, "model_deployment.batch_wait_timeout_s", "must be >= 0")
        require(self.max_ongoing_requests >= 1, "model_deployment.max_ongoing_requests", "must be >= 1")
        require(self.health_check_period_s > 0, "model_deployment.health_check_period_s", "must be > 0")


@dataclass(frozen=True)
class IngressSettings:
    """The HTTP ingress deployment (decoding, routing, post-processing, history)."""

    num_cpus: float = 0.1
    num_replicas: int = 1
    max_ongoing_requests: int = 64
    model_timeout_s: float = 120.0
    """A model call taking longer answers 504."""
    model_retries: int = 1
    """Retries of a model call whose replica died (matting is idempotent)."""
    batch_concurrency: int = 4
    """Files of one /v1/batch request processed at once (lets @serve.batch fill batches)."""

    def __post_init__(self) -> None:
        require(0 < self.num_cpus <= 64, "ingress.num_cpus", f"must be in (0, 64], got {self.num_cpus}")
        require(self.num_replicas >= 1, "ingress.num_replicas", "must be >= 1")
        require(self.max_ongoing_requests >= 1, "ingress.max_ongoing_requests", "must be >= 1")
        require(self.model_timeout_s > 0, "ingress.model_timeout_s", "must be > 0")
        require(0 <= self.model_retries <= 5, "ingress.model_retries", "must be in [0, 5]")
        require(self.batch_concurrency >= 1, "ingress.batch_concurrency", "must be >= 1")


@dataclass(frozen=True)
class LimitSettings:
    """What an upload may be. Over a limit -> a 4xx JSON error naming the limit."""

    max_upload_mb: float = 20.0
    """Largest /v1/matte request body, and largest file inside a batch or zip."""
    max_batch_upload_mb: float = 100.0
    """Largest /v1/batch request body."""
    max_batch_files: int = 100
    """Most images in one batch (files or zip entries)."""
    max_zip_total_mb: float = 200.0
    """Largest total uncompressed size of a zip's entries (zip bombs)."""
    body_timeout_s: float = 10.0
    """Longest wait for the next piece of a request body; a client that sends nothing for longer
    (a ``Content-Length`` larger than what it sends, a stalled upload) gets 408 ``request_timeout``."""
    body_total_timeout_s: float = 60.0
    """Longest time a whole request body may take, however it trickles in (a client that sends a byte
    every few seconds never trips ``body_timeout_s``): past it, 408 ``request_timeout``. Headers are read
    by Ray Serve's proxy before the app sees the request: see ``serve_app/README.md`` for what bounds them."""
    max_pixels: int = 40_000_000
    """Largest width x height, checked from the header before decoding (decompression bombs).
    (The largest ``max_side`` a request may ask for is not a setting: it is
    :data:`serve_app.params.MAX_SIDE`, which bounds a replica's memory.)"""

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_batch_upload_mb", "max_zip_total_mb"):
            require(getattr(self, name) > 0, f"limits.{name}", "must be > 0")
        require(self.max_batch_files >= 1, "limits.max_batch_files", "must be >= 1")
        require(self.max_pixels >= 1, "limits.max_pixels", "must be >= 1")
        require(0 < self.body_timeout_s <= 600, "limits.body_timeout_s", "must be in (0, 600]")
        require(0 < self.body_total_timeout_s <= 3600, "limits.body_total_timeout_s", "must be in (0, 3600]")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_batch_upload_bytes(self) -> int:
        return int(self.max_batch_upload_mb * 1_000_000)

    @property
    def max_zip_total_bytes(self) -> int:
        return int(self.max_zip_total_mb * 1_000_000)


@dataclass(frozen=True)
class AdmissionSettings:
    """Admission control by cost, per ingress replica (:mod:`serve_app.admission`): the decoded
    megapixels in flight are bounded, because memory grows with pixels, not with requests."""

    max_megapixels: float = 48.0
    """Budget of decoded megapixels in flight per ingress replica (cache misses, from decode to the
    encoded result; each file of a batch too). A 6000x6000 photo takes 36 of it and about 0.9 GB at
    peak, so the default (one such photo plus smaller ones beside it) keeps a replica that holds the
    models (``placement: ingress``, ``make serve``) near 2 GB, and 2 replicas well inside 24 GB.
    With ``placement: separate`` the model replicas only ever hold images that an ingress admitted,
    so each is bounded by (ingress replicas) x this budget."""
    wait_s: float = 5.0
    """How long a request past the budget waits for room before it is answered 503 ``overloaded``."""
    retry_after_s: int = 5
    """The ``Retry-After`` (seconds) of that 503."""

    def __post_init__(self) -> None:
        require(self.max_megapixels > 0, "admission.max_megapixels", "must be > 0")
        require(0 <= self.wait_s <= 600, "admission.wait_s", "must be in [0, 600]")
        require(1 <= self.retry_after_s <= 3600, "admission.retry_after_s", "must be in [1, 3600]")


@dataclass(frozen=True)
class CacheSettings:
    """Content-hash cache of results (per ingress replica, in memory)."""

    max_mb: float = 64.0
    """Bound on the cached result bytes; least recently used entries go first. 0 disables."""

    def __post_init__(self) -> None:
        require(self.max_mb >= 0, "cache.max_mb", "must be >= 0")


@dataclass(frozen=True)
class HistorySettings:
    """Request history: rows in SQLite, result files in an object store."""

    db_path: str = ".serve_data/history.sqlite"
    """SQLite file (a local path; relative to the repository root)."""
    store_uri: str = ".serve_data/results"
    """Where result images go: a local folder or s3://bucket/prefix."""
    max_entries: int = 1000
    """Oldest entries beyond this are deleted with their files."""
    max_mb: float = 2000.0
    """Byte cap of the store (results + thumbnails, MB): past it the oldest entries are deleted with their
    files, on every insert. An entry is stored before the oldest make room, so the store can exceed the
    cap by at most the newest entry (a single entry larger than the cap is kept alone)."""
    max_age_days: float = 30.0
    """Entries older than this are deleted with their files."""
    thumbnail_side: int = 160
    """Long side (px) of the stored thumbnails."""

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1_000_000)

    def __post_init__(self) -> None:
        require(bool(self.db_path) and "://" not in self.db_path, "history.db_path", "must be a local file path")
        require(bool(self.store_uri), "history.store_uri", "must not be empty")
        require(self.max_entries >= 1, "history.max_entries", "must be >= 1")
        require(self.max_age_days > 0, "history.max_age_days", "must be > 0")
        require(self.max_mb > 0, "history.max_mb", "must be > 0")
        require(16 <= self.thumbnail_side <= 1024, "history.thumbnail_side", "must be in [16, 1024]")


@dataclass(frozen=True)
class CorrectionSettings:
    """Corrected mattes users save as training data (``POST /v1/corrections``,
    :mod:`matting_lib.data.corrections`): one seed-format dataset per tenant (API key)."""

    enabled: bool = True
    store_uri: str = ".serve_data/corrections"
    """Where corrections go: a local folder (relative to the repository root) or s3://bucket/prefix;
    ``python -m ray_jobs.learn_corrections`` reads them from there."""

    def __post_init__(self) -> None:
        require(bool(self.store_uri), "corrections.store_uri", "must not be empty")


def _default_models() -> tuple[ModelSpec, ...]:
    return (ModelSpec("base", "models/base.pt"), ModelSpec("lowlight", "models/lowlight.pt"))


@dataclass(frozen=True)
class ServeConfig:
    """Everything the app needs; the ``args`` of the application in ``serve_app/config.yaml``."""

    models: tuple[ModelSpec, ...] = field(default_factory=_default_models)
    """Served models; one Serve deployment each."""
    routing: BrightnessRouter = field(default_factory=BrightnessRouter)
    """Brightness routing: the rule and its settings are one class, :class:`matting_lib.routing.BrightnessRouter`."""
    model_deployment: ModelDeploymentSettings = field(default_factory=ModelDeploymentSettings)
    ingress: IngressSettings = field(default_factory=IngressSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    corrections: CorrectionSettings = field(default_factory=CorrectionSettings)
    api_key: str = ""
    """Bearer token required on every /v1 route; empty = read ``api_key_env``; both empty = open."""
    api_key_env: str = "MATTING_API_KEY"
    """Environment variable (in the ingress replica) holding the API key when ``api_key`` is empty."""

    def __post_init__(self) -> None:
        require(len(self.models) >= 1, "models", "at least one model is required")
        names = [m.name for m in self.models]
        require(len({n.casefold() for n in names}) == len(names), "models",
                f"model names must be unique, ignoring case (requests name them in any case), got {names}")
        for key in ("bright_model", "dark_model"):
            name = getattr(self.routing, key)
            require(name in names, f"routing.{key}", f"{name!r} is not a configured model (models: {', '.join(names)})")

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def resolve_api_key(self) -> str:
        """The key in force: the config's, else the environment's; '' means no key."""
        return self.api_key or (os.environ.get(self.api_key_env, "") if self.api_key_env else "")


def resolve_path(path: str, root: Path = REPO_ROOT) -> str:
    """A URI as given, or a local path made absolute against ``root``."""
    if "://" in path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


def with_resolved_paths(cfg: ServeConfig, root: Path = REPO_ROOT) -> ServeConfig:
    """The config with every relative path (checkpoints, history, corrections) made absolute against ``root``."""
    models = tuple(dataclasses.replace(m, checkpoint=resolve_path(m.checkpoint, root)) for m in cfg.models)
    history = dataclasses.replace(
        cfg.history, db_path=resolve_path(cfg.history.db_path, root), store_uri=resolve_path(cfg.history.store_uri, root)
    )
    corrections = dataclasses.replace(cfg.corrections, store_uri=resolve_path(cfg.corrections.store_uri, root))
    return dataclasses.replace(cfg, models=models, history=history, corrections=corrections)


def serve_config_from_args(args: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> ServeConfig:
    """Validate an application's ``args`` (plus ``key=value`` overrides) into a :class:`ServeConfig`."""
    data = apply_overrides(dict(args or {}), overrides)
    return from_dict(ServeConfig, data)


def load_serve_yaml(path: str | Path = DEFAULT_CONFIG_PATH) -> dict[str, Any]:
    """The Serve config file as a mapping, checked against Ray's own ``ServeDeploySchema``."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    data = load_yaml(path)
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: not a valid Serve config: {e}") from None
    return data


def app_entry(serve_yaml: Mapping[str, Any]) -> dict[str, Any]:
    """The application of a Serve config that runs this app (``import_path: serve_app.app:build_app``)."""
    apps = [a for a in serve_yaml.get("applications", []) if a.get("import_path") == IMPORT_PATH]
    require(len(apps) == 1, "applications", f"expected exactly one application with import_path {IMPORT_PATH}")
    return apps[0]
