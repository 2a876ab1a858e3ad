"""Shared fixtures: a real S3 protocol server (moto) on loopback, and small synthetic data.

S3 credentials and endpoint are set in the environment *before* anything imports boto
(:func:`testkit.env.configure`), so every client (s3fs, pyarrow, Ray workers started later)
talks to the loopback server and never probes EC2 metadata or the internet. The helpers
(:func:`synthetic_pair`, :func:`write_dataset`, ``ROOT``) live in :mod:`testkit`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

# One OpenMP/MKL thread for torch in this process and in everything it starts (CLI jobs, the
# test clusters, whose Ray workers already get 1): the tests' tensors are tiny, and on 2 cores
# shared with Ray a second thread mostly spins waiting for the first. test_overfit_tiny_set beside
# one busy process: 9.7 s with 1 thread, 46-93 s with 2. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from testkit import ROOT
from testkit.env import configure

configure()  # before anything imports boto or Ray: loopback S3 credentials, token auth, loopback cluster

from serve_app.run import free_port  # noqa: E402
from testkit.local_ray import start_ray_head, stop_ray_head  # noqa: E402 - after the environment above


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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test ends with torch on the intra-op threads OMP_NUM_THREADS says (1, above). A job
    run in-process may set the whole process's threads (``ray_jobs.train_refiner --threads``,
    ``load_predictor(num_threads=...)``), and a second thread spinning beside busy Ray workers made
    every later torch test in that worker about 5x dearer in CPU (test_training.py's distillation:
    5 s alone, 36 s after the refiner job had set 2 threads)."""
    yield
    torch, want = sys.modules.get("torch"), int(os.environ["OMP_NUM_THREADS"])
    if torch is not None and torch.get_num_threads() != want:
        torch.set_num_threads(want)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
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
    # A short temp dir of its own: Ray's Unix sockets live under it, and AF_UNIX paths stop at
    # 107 bytes (pytest's basetemp under xdist, /tmp/pytest-of-USER/pytest-N/popen-gwK/..., is too long).
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    cluster = start_ray_head(temp_dir)
    try:
        ray.init(address=cluster["address"], log_to_driver=True)
        yield cluster
    finally:
        ray.shutdown()
        stop_ray_head(cluster["temp_dir"])
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    """The HTTP port of the session's Serve instance. Serve's proxy keeps the port it started
    with, so every module deploys on this one and deletes its app when done (testkit.serve.
    remove_app) instead of shutting Serve down: the controller and proxy start once per session."""
    return free_port()


# --------------------------------------------------------------------------- two workers (make test: pytest -n 2)

RAY_GROUP = "ray"
"""The xdist group of every test on the session's Ray cluster (the ``ray_cluster`` fixture): they
run one after another on one worker, in file order, while the other worker takes the tests that
need no cluster."""

OWN_CLUSTER_GROUP = "own-cluster"
"""The xdist group of the tests that start a Ray cluster of their own (marked ``own_cluster``: the
launcher's). They need nothing of the session's cluster, so they are not links of its chain: they
are collected last and run on the other worker once its unit tests are done, at low priority, in
the CPU the chain leaves idle while its Ray processes start one after another (the chain alone
averages 1.4 of the 2 cores). In the chain, the launcher test added its 32 s to the critical path."""


_START_NICE = os.getpriority(os.PRIO_PROCESS, 0)
"""This worker's priority at start, which a test on the session's cluster gets back."""


def _on_session_cluster(item: pytest.Item) -> bool:
    return "ray_cluster" in getattr(item, "fixturenames", ())


def _own_cluster(item: pytest.Item) -> bool:
    return item.get_closest_marker("own_cluster") is not None and not _on_session_cluster(item)


def pytest_itemcollected(item):
    """Marked as each test is collected, before any ``pytest_collection_modifyitems`` (where
    xdist's worker turns the mark into the node id's ``@group`` suffix) can run."""
    if _on_session_cluster(item):
        item.add_marker(pytest.mark.xdist_group(RAY_GROUP))
    elif _own_cluster(item):
        item.add_marker(pytest.mark.xdist_group(OWN_CLUSTER_GROUP))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """The tests with a cluster of their own go last (the order is stable otherwise): xdist hands
    out work in collection order once the chain (the largest group) has gone to one worker."""
    items.sort(key=_own_cluster)


def pytest_runtest_setup(item):
    """Under xdist, a test on the session's cluster runs at its starting priority and every
    other test at nice 19: Ray starts its workers at nice 15, and a CPU-bound unit test at normal
    priority beside them would take their core (the first try of two workers, without this, ran
    no faster than one). The other tests fill the cores the cluster tests leave idle while they
    wait on processes, polls and the network. Without the right to raise a priority again
    (not root), every test keeps the worker's priority."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    want = _START_NICE if _on_session_cluster(item) else 19
    try:
        os.setpriority(os.PRIO_PROCESS, 0, want)
    except OSError:
        pass
