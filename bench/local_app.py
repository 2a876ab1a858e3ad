"""A local Ray cluster with the test app deployed, for the benchmarks that need one running.

The one home of the benchmarks' cluster set-up and tear-down: :func:`local_app` (a context
manager) starts the cluster and deploys the app, and stops both however the benchmark ends;
:func:`bench_checkpoints` picks the two models' checkpoints (``--checkpoints`` or tiny ones).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from testkit import ROOT
from testkit.serve import deploy_and_wait, make_checkpoint, serve_yaml_for_test


def start_cluster_and_app(tmp: Path, checkpoints: dict[str, str], args: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """For the benchmarks: a local Ray cluster under ``tmp/ray``, connected, with the test app
    (:func:`serve_yaml_for_test`) deployed and ready. Returns (cluster, Serve config, base URL);
    stop with :func:`stop_cluster` (or use :func:`local_app`, which does)."""
    import os

    from serve_app.run import SERVING_MALLOC_ENV, free_port, use_loopback
    from testkit.local_ray import start_ray_head

    use_loopback()  # before Ray is imported: the cluster listens on 127.0.0.1 only
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    print("starting a local Ray cluster ...", flush=True)
    cluster = start_ray_head(str(tmp / "ray"), env=SERVING_MALLOC_ENV)  # a serving cluster, as make serve's
    ray.init(address=cluster["address"], log_to_driver=False)
    config = serve_yaml_for_test(tmp, checkpoints, free_port(), args=args)
    return cluster, config, deploy_and_wait(cluster["dashboard"], config, app_timeout=300, ready_timeout=120)


def stop_cluster(cluster: dict[str, Any], serve_started: bool = True) -> None:
    """Shut Serve down, disconnect, and stop the cluster :func:`start_cluster_and_app` started (only it).

    The cluster is stopped even when Serve's shutdown fails (a benchmark that broke it).
    """
    import ray
    from ray import serve

    from testkit.local_ray import stop_ray_head

    try:
        if serve_started:
            serve.shutdown()
    finally:
        try:
            ray.shutdown()
        finally:
            stop_ray_head(cluster["temp_dir"])


@contextlib.contextmanager
def local_app(tmp: Path, checkpoints: dict[str, str], args: dict[str, Any] | None = None) -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
    """:func:`start_cluster_and_app` as a context manager: yields (cluster, Serve config, base URL)
    and stops the cluster on the way out, also after an error or Ctrl-C. A start that fails
    half-way stops what it had started (a cluster is found under ``tmp/ray``)."""
    try:
        cluster, config, url = start_cluster_and_app(tmp, checkpoints, args)
    except BaseException:
        stop_cluster({"temp_dir": str(tmp / "ray")}, serve_started=False)
        raise
    try:
        yield cluster, config, url
    finally:
        stop_cluster(cluster)


def bench_checkpoints(given: Sequence[str] | None, tmp: Path) -> tuple[dict[str, str], str]:
    """The two models' checkpoints and how to describe them in a report: ``given`` (``--checkpoints
    BASE LOWLIGHT``, made absolute) or, without it, tiny random-weight ones written to ``tmp``."""
    if given:
        checkpoints = {"base": str(Path(given[0]).resolve()), "lowlight": str(Path(given[1]).resolve())}
        return checkpoints, "checkpoints " + ", ".join(Path(c).name for c in checkpoints.values())
    return ({n: make_checkpoint(tmp / f"{n}.pt", s) for s, n in enumerate(("base", "lowlight"), 1)},
            "tiny random-weight checkpoints")

