"""A local Ray cluster with the test app deployed, for the benchmarks that need one running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testkit import ROOT
from testkit.serve import deploy_and_wait, serve_yaml_for_test


def start_cluster_and_app(tmp: Path, checkpoints: dict[str, str], args: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """For the benchmarks: a local Ray cluster under ``tmp/ray``, connected, with the test app
    (:func:`serve_yaml_for_test`) deployed and ready. Returns (cluster, Serve config, base URL);
    stop with ``serve.shutdown(); ray.shutdown(); stop_ray_head(cluster["temp_dir"])``."""
    import os

    from infra.local_ray import free_port, start_ray_head, use_loopback

    use_loopback()  # before Ray is imported: the cluster listens on 127.0.0.1 only
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    print("starting a local Ray cluster ...", flush=True)
    cluster = start_ray_head(str(tmp / "ray"))
    ray.init(address=cluster["address"], log_to_driver=False)
    config = serve_yaml_for_test(tmp, checkpoints, free_port(), args=args)
    return cluster, config, deploy_and_wait(cluster["dashboard"], config, app_timeout=300, ready_timeout=120)
