"""What every Ray job shares: the CLI shape, connecting to (or starting) a cluster, storage.

Jobs run the same way locally (a local cluster is started when none is running), inside a
cluster, and through ``ray job submit`` (which sets ``RAY_ADDRESS``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

from matting_lib import io
from matting_lib.config import ConfigError, TrainConfig, load_config

# Environment variables forwarded to Ray workers: storage access (S3 clients in tasks and actors).
FORWARDED_ENV = io.STORAGE_ENV

KEEP_IDLE_WORKERS_ENV = {"RAY_idle_worker_killing_time_threshold_ms": "60000"}
"""Raylet setting for the clusters this project starts on one machine (read from the raylet's
environment). Ray ends task workers left idle beyond one per CPU after 1 s, so on a small node
every epoch's Ray Data tasks started fresh workers that import torch and the project again
(about 4 s of CPU each): a 4-epoch tiny run on 2 cores took 8.5 s per epoch, 1.5-2.5 s with
idle workers kept for 60 s."""


def job_parser(description: str) -> argparse.ArgumentParser:
    """The jobs' common options; parse with ``parse_intermixed_args`` so key=value overrides may
    come before and after options (``--config c.yaml a=1 --address auto b=2``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config under configs/")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, a running local cluster, or a new one)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.0.lr=1e-4 data.uri=s3://bucket/ds")
    return p


def load_job_config(path: str, overrides: Sequence[str], cls: type = TrainConfig) -> Any:
    """Load and validate; on error print one clear line and exit 2 (no traceback)."""
    try:
        return load_config(path, overrides, cls=cls)
    except ConfigError as e:
        fail(f"config error: {e}", code=2)


def fail(msg: str, code: int = 1) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.update(extra or {})
    return env


def init_ray(address: str | None = None, env: dict[str, str] | None = None) -> None:
    """Connect to a cluster (``address``, ``$RAY_ADDRESS`` or a running local one) or start one.

    A locally started cluster gets a small object store (the default takes 30% of RAM) and keeps
    idle workers (:data:`KEEP_IDLE_WORKERS_ENV`). Forwarded S3 variables reach every worker
    through the job's runtime environment.
    """
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env(env)}
    address = address or os.environ.get("RAY_ADDRESS")
    logging.getLogger("ray").setLevel(logging.WARNING)
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    try:
        ray.init(address="auto", runtime_env=runtime_env, log_to_driver=True)
    except ConnectionError:
        store = int(os.environ.get("MATTING_OBJECT_STORE_BYTES", str(512 * 1024 * 1024)))
        for k, v in KEEP_IDLE_WORKERS_ENV.items():
            os.environ.setdefault(k, v)  # the raylet that ray.init starts inherits it
        ray.init(object_store_memory=store, runtime_env=runtime_env, include_dashboard=False, log_to_driver=True)


def storage_args(storage_path: str, endpoint_url: str = "") -> dict[str, Any]:
    """RunConfig storage arguments for a local folder or ``s3://bucket/prefix``.

    With an explicit endpoint, a pyarrow S3 filesystem is built (plain-HTTP aware);
    otherwise the URI is passed through and pyarrow honours ``$AWS_ENDPOINT_URL``.
    """
    if storage_path.startswith("s3://") and endpoint_url:
        import pyarrow.fs as pafs

        scheme = "https" if endpoint_url.startswith("https") else "http"
        host = endpoint_url.split("://", 1)[-1]
        fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme, connect_timeout=5, request_timeout=30)
        return {"storage_path": storage_path[len("s3://"):], "storage_filesystem": fs}
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
    return {"storage_path": storage_path}


class SetupError(ValueError):
    """Nothing can be predicted: the message names the option and what is wrong with it."""


def check_output(uri: str) -> None:
    """Create a local output folder, or check that an ``s3://`` bucket exists."""
    if io.protocol(uri) == "file":
        try:
            io.makedirs(uri)
        except OSError as e:
            raise SetupError(f"--output: cannot create folder {uri} ({e.strerror or e})") from None
        return
    if io.protocol(uri) == "s3":
        bucket = "s3://" + uri.split("://", 1)[1].split("/", 1)[0]
        if not io.exists(bucket):
            raise SetupError(f"--output: bucket {bucket} does not exist")
