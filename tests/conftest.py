"""Shared fixtures: a real S3 protocol server (moto) on loopback, and small synthetic data.

S3 credentials and endpoint are set in the environment *before* anything imports boto,
so every client (s3fs, pyarrow, Ray workers started later) talks to the loopback server
and never probes EC2 metadata or the internet.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# Short S3 timeouts so a broken endpoint fails fast in tests.
os.environ.setdefault("MATTING_S3_CONNECT_TIMEOUT", "2")
os.environ.setdefault("MATTING_S3_READ_TIMEOUT", "10")
os.environ.setdefault("MATTING_S3_MAX_ATTEMPTS", "2")
os.environ.setdefault("MATTING_S3_RETRY_SECONDS", "2")  # the retry window (default 10 s); fault tests set their own
# Ray reads its auth settings at import: the test cluster runs with token auth, as a real one.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from infra.local_ray import free_port, start_ray_head, stop_ray_head, use_loopback  # noqa: E402 - after the environment above

use_loopback()  # the test cluster and this driver on 127.0.0.1 only (infra.local_ray.LOOPBACK_ENV)


@pytest.fixture(scope="session", autouse=True)
def _manifest_cache(tmp_path_factory):
    """Manifests that ensure_manifest caches go to a session folder, not ~/.cache."""
    old = os.environ.get("MATTING_CACHE_DIR")
    os.environ["MATTING_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MATTING_CACHE_DIR", None)
    else:
        os.environ["MATTING_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL and sets AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        if old is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = old


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields ``s3://<name>``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    # s3fs caches listings per instance; drop them so each test sees the new bucket.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def synthetic_pair(rng: np.random.Generator, h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A random textured image (uint8 HxWx3) and a soft-edged blob alpha (uint8 HxW)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = rng.uniform(0.2, 0.35) * min(h, w)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    alpha = np.clip((r - d) / 3.0 + 0.5, 0, 1)
    fg = np.array(rng.integers(120, 255, size=3), dtype=np.float32)
    bg = rng.uniform(0, 90, size=(h, w, 3)).astype(np.float32)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return image.round().astype(np.uint8), (alpha * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_cluster(s3_server, tmp_path_factory):
    """A real local Ray cluster started with ``ray start --head`` (dashboard and job server on).

    Token authentication is on, as on a real cluster: the token is in RAY_AUTH_TOKEN and
    clients (this driver, ``ray job submit``) set RAY_AUTH_MODE=token. The cluster inherits
    the S3 environment, so its workers reach the moto server. Yields a dict with the GCS
    ``address`` and the ``dashboard`` URL; this process is connected as a driver.
    """
    import ray

    # Workers import the project from the checkout, even if it is not pip-installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # Job entrypoints say "python": the cluster resolves it on its PATH, as an activated venv would.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    cluster = start_ray_head(str(tmp_path_factory.mktemp("ray")))
    try:
        ray.init(address=cluster["address"], log_to_driver=True)
        yield cluster
    finally:
        ray.shutdown()
        stop_ray_head(cluster["temp_dir"])


def write_dataset(root: str, n_train: int, n_val: int, size: int = 64, seed: int = 0) -> str:
    """A tiny synthetic dataset in the seed format at ``root`` (local path or s3://); no ``val.txt`` when ``n_val`` is 0."""
    from matting_lib import io
    from matting_lib.data.decode import encode_png

    rng = np.random.default_rng(seed)
    splits = {"train": [f"tr{i:03d}" for i in range(n_train)], "val": [f"va{i:03d}" for i in range(n_val)]}
    for names in splits.values():
        for name in names:
            image, alpha = synthetic_pair(rng, size, size)
            io.write_bytes(io.join(root, "images", f"{name}.png"), encode_png(image))
            io.write_bytes(io.join(root, "masks", f"{name}.png"), encode_png(alpha))
    for split, names in splits.items():
        if names:  # n_val=0: the seeds' layout, images/ masks/ and train.txt only
            io.write_text(io.join(root, f"{split}.txt"), "\n".join(names) + "\n")
    return root
