"""The process environment of the tests and the local benchmarks, set before boto or Ray is imported.

S3 credentials and endpoint are set *before* anything imports boto, so every client (s3fs,
pyarrow, Ray workers started later) talks to the loopback server and never probes EC2 metadata
or the internet. Ray reads its auth settings at import: the test cluster runs with token auth,
as a real one.
"""

from __future__ import annotations

import os
import secrets


def configure() -> None:
    """Set the test environment (only what is not set already, except the fixed switches) and
    keep the local cluster and this driver on 127.0.0.1 (:data:`serve_app.run.LOOPBACK_ENV`)."""
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
    # Ray Train's controller polls its workers every 2 s, and a worker's report waits for that
    # poll: the tests' tiny epochs take about 1 s, so every epoch and every failure waited on it.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # One actor per worker group that watches for node drains (spot preemption): a single-node
    # test cluster has none, and each group start paid for another process.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

    from serve_app.run import use_loopback

    use_loopback()
