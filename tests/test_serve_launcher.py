"""``python -m serve_app`` (what ``make serve`` runs): starts its own cluster, serves, stops on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from serve_app.run import SERVING_MALLOC_ENV, free_port
from testkit.local_ray import cluster_pids, listening_sockets, stop_ray_head
from testkit.serve import encode, get, make_checkpoint, photo, post, wait_until

ROOT = Path(__file__).resolve().parents[1]


def _make_serve_settings() -> list[str]:
    """The key=value settings that ``make serve`` passes to ``python -m serve_app`` (from ``make -n``)."""
    out = subprocess.run(["make", "-n", "serve", "STAMP=/dev/null"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30).stdout
    line = next(ln for ln in out.splitlines() if "-m serve_app" in ln)
    return [a for a in line.split("-m serve_app", 1)[1].split() if "=" in a]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def test_make_serve_runs_the_models_in_the_ingress():
    assert "model_deployment.placement=ingress" in _make_serve_settings()


@pytest.mark.own_cluster
@pytest.mark.timeout(300)
def test_launcher_serves_and_stops_cleanly_on_ctrl_c(tmp_path):
    base = make_checkpoint(tmp_path / "base.pt", 1)
    lowlight = make_checkpoint(tmp_path / "lowlight.pt", 2)
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    cmd = [
        sys.executable, "-m", "serve_app", *_make_serve_settings(), "--port", str(port), "--num-cpus", "2", "--temp-dir", ray_tmp,
        f"models.0.checkpoint={base}", f"models.1.checkpoint={lowlight}",
        f"history.db_path={tmp_path / 'h.sqlite'}", f"history.store_uri={tmp_path / 'results'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: any(url in line for line in lines) or proc.poll() is not None, 240, "the URL line")
        assert proc.poll() is None, "".join(lines)[-3000:]
        assert get(f"{url}/readyz").status_code == 200
        r = post(f"{url}/v1/matte", files={"file": ("d.png", encode(photo(40, 60, "dark")))})
        assert r.status_code == 200 and r.headers["X-Matting-Model"] == "lowlight"
        # Ray's servers of the cluster it started listen on loopback only (GCS, raylet, workers,
        # agents, the HTTP proxy); the one exception is Ray Serve's per-replica gRPC server on [::]
        # (infra/README.md says so and gives the firewall rule).
        sockets = listening_sockets(cluster_pids(ray_tmp))
        assert ("127.0.0.1", port) in {(ip, p) for ip, p, _ in sockets}
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace") for _, _, pid in sockets}
        assert any("gcs_server" in n for n in names.values()), names
        exposed = [(ip, p, names[pid]) for ip, p, pid in sockets if not (ip.startswith("127.") or ip == "::1")]
        assert all(n.startswith("ray::ServeReplica:") for *_, n in exposed), exposed
        # The serving allocator (serve_app.run.SERVING_MALLOC_ENV) reached the proxy and the replica.
        serving = [pid for pid in cluster_pids(ray_tmp) if _cmdline(pid).startswith(("ray::ProxyActor", "ray::ServeReplica"))]
        assert len(serving) >= 2, [_cmdline(pid) for pid in cluster_pids(ray_tmp)]
        for pid in serving:
            environ = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in e)
            assert {k: environ.get(k) for k in SERVING_MALLOC_ENV} == SERVING_MALLOC_ENV, (_cmdline(pid), environ.get("MALLOC_ARENA_MAX"))
        # make serve runs the models inside the ingress: no model deployments, no Ray call per image.
        replicas = [_cmdline(pid) for pid in cluster_pids(ray_tmp)]
        assert any(c.startswith("ray::ServeReplica:matting:ingress") for c in replicas), replicas
        assert not any(c.startswith("ray::ServeReplica:matting:model_") for c in replicas), replicas
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        assert proc.wait(timeout=90) == 0, "".join(lines)[-3000:]
        reader.join(10)
        out = "".join(lines)
        assert "stopped." in out and "Traceback" not in out, out[-3000:]
        # Ray Serve's own shutdown, not an error: nothing of it may reach the terminal (issue 27).
        assert "graceful_shutdown failed" not in out, out[-3000:]
        time.sleep(1)
        assert not cluster_pids(ray_tmp), "Ray processes outlived the launcher"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_ray_head(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
