"""The Serve app under concurrent load with a model replica killed mid-run (the fast subset of ``bench/load.py``).

One application per module (both models, one replica each, as ``bench/load.py`` deploys it).
A short mixed load (sizes 64-512 px, dark and normal light, repeated images) runs at
concurrency 12 while ``ray.kill`` takes the ``model_base`` replica down. Serve must start a new
replica, no request may fail (the ingress retries a model call whose replica died, once per
call), and no process may grow beyond :data:`bench.load.MEMORY_BOUND_MB`. The long runs, with
percentiles and a hot swap, are ``python -m bench.load`` (results in ``bench/RELIABILITY.md``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.load import (
    MEMORY_BOUND_MB, compare_memory, ingress_stats, kill_replica, make_workload, memory_snapshot, run_load,
    serve_replicas, status_counts,
)
from testkit.serve import deploy_and_wait, make_checkpoint, remove_app, running_replicas, serve_yaml_for_test

pytestmark = pytest.mark.timeout(300)

REQUESTS = 200
CONCURRENCY = 12
KILL_AFTER = 60
"""Completed requests before the kill: the load runs on both sides of it."""


@pytest.fixture(scope="module")
def svc(ray_cluster, serve_port, tmp_path_factory):
    """The deployed app (``url``, ``dashboard``), warmed up with a few requests of every kind."""
    tmp = tmp_path_factory.mktemp("serve_reliability")
    checkpoints = {name: make_checkpoint(tmp / f"{name}.pt", seed) for seed, name in enumerate(("base", "lowlight"), 1)}
    config = serve_yaml_for_test(tmp, checkpoints, serve_port)
    url = deploy_and_wait(ray_cluster["dashboard"], config)
    warm, _, _ = run_load(url, make_workload(32, seed=100), CONCURRENCY, label="warm-up")
    assert status_counts(warm)["2xx"] == len(warm), [r.error for r in warm if r.status != 200][:3]
    try:
        max_ongoing = config["applications"][0]["args"]["model_deployment"]["max_ongoing_requests"]
        yield SimpleNamespace(url=url, dashboard=ray_cluster["dashboard"], max_ongoing=max_ongoing)
    finally:
        remove_app(config)


def test_replica_kill_under_load_fails_no_request(svc):
    workload = make_workload(REQUESTS, seed=1)
    victim = next(r for r in serve_replicas(svc.dashboard) if r.deployment == "model_base")
    stats0, mem0 = ingress_stats(svc.url), memory_snapshot(svc.dashboard)

    results, _, info = run_load(svc.url, workload, CONCURRENCY, lambda: kill_replica(svc.dashboard, "model_base"),
                                KILL_AFTER, label="kill")

    stats1, mem1 = ingress_stats(svc.url), memory_snapshot(svc.dashboard)
    assert "error" not in info, info["error"]
    failed = [(r.status, r.error) for r in results if r.status != 200]
    assert len(results) == REQUESTS and not failed, failed[:5]
    # Serve replaced the killed replica, and the new one served requests after the kill.
    assert info["killed"] == victim.name and info["new"] != victim.name
    assert running_replicas("model_base") == 1
    after_kill = [r for r in results if r.start_s > info["at_s"] and r.model == "base"]
    assert after_kill, "no base request started after the kill"
    # The ingress retries each call once, so at most one retry per call the killed replica held.
    retries = stats1["model_retries"] - stats0["model_retries"]
    assert 0 <= retries <= svc.max_ongoing
    # Both models served; repeated images came from the cache.
    assert {r.model for r in results} == {"base", "lowlight"}
    assert stats1["cache"]["hits"] - stats0["cache"]["hits"] >= 1
    assert sum(r.cache == "hit" for r in results) == stats1["cache"]["hits"] - stats0["cache"]["hits"]
    # Memory: every process (the new replica against the one it replaced) within the bound.
    cache_growth = max(0.0, (stats1["cache"]["bytes"] - stats0["cache"]["bytes"]) / 1e6)
    rows = compare_memory(mem0, mem1, cache_growth)
    assert {m.deployment for m in rows} >= {"ingress", "model_base", "model_lowlight", "proxy"}
    assert [m.note for m in rows if m.deployment == "model_base"] == ["replaced (new process)"]
    over = [(m.deployment, round(m.growth_mb, 1)) for m in rows if not m.ok]
    assert not over, f"RSS grew beyond {MEMORY_BOUND_MB} MB: {over}"
