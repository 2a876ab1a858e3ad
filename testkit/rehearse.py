"""A local rehearsal of the operator's guide (infra/README.md), end to end, on one machine.

    python -m testkit.rehearse      # from the repository root; exit 0 when every step passed

The guide's steps, scaled down, with a moto S3 server on loopback standing in for the bucket:

1. ``ray start --head`` on 127.0.0.1 with free ports, a private ``--temp-dir`` and token auth;
2. the bucket layout (``datasets/ manifests/ runs/ sweeps/ models/``), a tiny synthetic dataset
   uploaded under ``datasets/``, its manifest built under ``manifests/``;
3. ``ray job submit --working-dir .`` (the launcher cluster's way: the job runs in a copy of the
   checkout) of ``configs/tiny.yaml``, one epoch, data and checkpoints in the bucket, distilling
   from the shipped ``models/base.pt`` named by a path relative to the checkout; and a client
   without the cluster's token refused;
4. promotion of the run's ``best.pt`` to ``models/tiny-v1.pt``;
5. ``serve deploy`` of ``serve_app/config.yaml`` with both models on that checkpoint, merged
   the way ``infra/gen_rayservice.py`` merges the cluster overlay;
6. one ``/v1/matte`` request answered by the promoted checkpoint with an alpha of the input's size;
7. a hot swap to ``models/tiny-v2.pt`` through ``user_config`` while requests keep arriving:
   every request answered, the later ones by the new checkpoint;
8. that cluster stopped (only it: ``testkit.local_ray.stop_ray_head``, never ``ray stop``, which
   would kill every Ray cluster on the machine) and the S3 server with it.

Cluster, ports and synthetic data come from the test suite's helpers (``tests/conftest.py``),
which also set test credentials and token auth before anything connects. Progress: one line
per step with its duration; about a minute on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from infra.gen_rayservice import merge
from serve_app.run import free_port
from testkit.local_ray import start_ray_head, stop_ray_head
from testkit.data import synthetic_pair, write_dataset
from testkit.s3 import RestartableS3

REPO = Path(__file__).resolve().parents[1]

BUCKET = "matting-data"
LAYOUT = ("datasets", "manifests", "runs", "sweeps", "models")
RUN = "tiny-001"


class RehearsalError(RuntimeError):
    """A step of the guide did not do what the guide says; the message names the step."""


def step(name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    print(f"[rehearse] {name} ...", flush=True)
    out = fn()
    print(f"[rehearse] {name}: ok ({time.perf_counter() - t0:.1f} s)", flush=True)
    return out


def run(cmd: list[str], timeout: float) -> str:
    """Run a CLI command with token auth on; its output, or RehearsalError with the tail."""
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, "RAY_AUTH_MODE": "token"})
    if r.returncode != 0:
        raise RehearsalError(f"{' '.join(cmd[:3])} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout + r.stderr


def start_s3() -> tuple[Any, str]:
    server = RestartableS3()
    server.start()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint  # before `ray start`: the cluster inherits it
    return server, server.endpoint


def prepare_bucket(endpoint: str, bucket: str = BUCKET) -> tuple[str, str]:
    """Bucket layout, a tiny dataset and its manifest; (dataset URI, manifest URI)."""
    import boto3

    from matting_lib.data.manifest import build_manifest

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for prefix in LAYOUT:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/")
    dataset = write_dataset(f"s3://{bucket}/datasets/tiny", n_train=8, n_val=2, size=64)
    manifest = f"s3://{bucket}/manifests/tiny.jsonl"
    rows = build_manifest(dataset, out_uri=manifest, progress=False)
    if len(rows) != 10:
        raise RehearsalError(f"manifest has {len(rows)} rows, expected 10")
    return dataset, manifest


def submit_training(cluster: dict, dataset: str, manifest: str, bucket: str = BUCKET) -> str:
    """`ray job submit --working-dir .` of the tiny config, distilling from the shipped base
    model; the URI of the run's best checkpoint."""
    out = run([
        cluster["ray_bin"], "job", "submit", "--address", cluster["dashboard"], "--submission-id", RUN,
        "--working-dir", ".", "--",
        "python", "-m", "ray_jobs.train", "--config", "configs/tiny.yaml",
        f"data.uri={dataset}", f"data.manifest={manifest}", f"run.storage_path=s3://{bucket}/runs", f"run.name={RUN}",
        "stages.0.epochs=1", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5",
        "distill.teacher=models/base.pt", "distill.weight=0.5",
    ], timeout=240)
    best = f"s3://{bucket}/runs/{RUN}/best.pt"
    if best not in out:
        raise RehearsalError(f"the job's log does not name {best}:\n{out[-2000:]}")
    if "distilling from" not in out:
        raise RehearsalError(f"the job did not distil from models/base.pt:\n{out[-2000:]}")
    from ray.job_submission import JobStatus, JobSubmissionClient

    status = JobSubmissionClient(cluster["dashboard"]).get_job_status(RUN)
    if status != JobStatus.SUCCEEDED:
        raise RehearsalError(f"job {RUN} is {status}, expected SUCCEEDED")
    return best


def refuse_without_token(cluster: dict) -> None:
    """Token auth is on: `ray job list` without the token must be refused."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    r = subprocess.run([cluster["ray_bin"], "job", "list", "--address", cluster["dashboard"]],
                       cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    if r.returncode == 0:
        raise RehearsalError(f"a client without the token was let in:\n{(r.stdout + r.stderr)[-1000:]}")


def promote(endpoint: str, source: str, version: int, bucket: str = BUCKET) -> str:
    """Copy a checkpoint under models/ with a new version (the guide's promotion); its URI."""
    import boto3

    key = f"models/tiny-v{version}.pt"
    boto3.client("s3", endpoint_url=endpoint).copy_object(
        Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": source.removeprefix(f"s3://{bucket}/")}
    )
    return f"s3://{bucket}/{key}"


def serve_config(checkpoint: str, port: int, workdir: Path) -> dict[str, Any]:
    """serve_app/config.yaml for this machine: both models on ``checkpoint``, one replica each."""
    source = yaml.safe_load((REPO / "serve_app" / "config.yaml").read_text())
    names = [m["name"] for m in source["applications"][0]["args"]["models"]]
    overlay = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": source["applications"][0]["name"],
            "args": {
                "models": [{"name": n, "checkpoint": checkpoint} for n in names],
                "model_deployment": {"autoscaling": {"min_replicas": 1, "max_replicas": 1}},
                "history": {"db_path": str(workdir / "history.sqlite"), "store_uri": str(workdir / "results")},
            },
            "deployments": [{"name": f"model_{n}", "user_config": {"checkpoint": checkpoint}} for n in names],
        }],
    }
    return merge(source, overlay, "rehearsal", allow_new=False)


def deploy(cluster: dict, config: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run([str(Path(cluster["ray_bin"]).with_name("serve")), "deploy", str(path), "--address", cluster["dashboard"]], timeout=120)


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(1)
    raise RehearsalError(f"the Serve app at {url} was not ready after {timeout:.0f} s ({last})")


def matte(url: str, png: bytes) -> tuple[np.ndarray, str]:
    """POST one image to /v1/matte (alpha output); (alpha as uint8 HxW, serving checkpoint)."""
    from matting_lib.data.decode import decode_image

    req = urllib.request.Request(
        f"{url}/v1/matte?output=alpha&history=false", data=png, method="POST", headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        body, checkpoint = r.read(), r.headers.get("X-Matting-Checkpoint", "")
    alpha = decode_image(body)
    return (alpha if alpha.ndim == 2 else alpha[..., 0]), checkpoint


def check_request(url: str, png: bytes, size: tuple[int, int], checkpoint: str) -> None:
    alpha, served_by = matte(url, png)
    if alpha.shape[:2] != size:
        raise RehearsalError(f"alpha is {alpha.shape[:2]}, the input {size}")
    if served_by != checkpoint:
        raise RehearsalError(f"answered by {served_by!r}, expected {checkpoint!r}")


def hot_swap(cluster: dict, config: dict, path: Path, url: str, png: bytes, new: str) -> int:
    """Deploy ``new`` through user_config while a client keeps sending; requests answered."""
    stop, failures, served = threading.Event(), [], []

    def client() -> None:
        while not stop.is_set():
            try:
                served.append(matte(url, png)[1])
            except Exception as e:  # noqa: BLE001 - any failed request is a finding
                failures.append(repr(e))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    app = config["applications"][0]
    swapped = merge(config, {"applications": [{"name": app["name"], "deployments": [
        {"name": d["name"], "user_config": {"checkpoint": new}} for d in app["deployments"]
    ]}]}, "swap", allow_new=False)
    deploy(cluster, swapped, path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (served and served[-1] == new):
        time.sleep(0.5)
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=60)
    if failures:
        raise RehearsalError(f"{len(failures)} request(s) failed during the hot swap: {failures[:3]}")
    if not served or served[-1] != new:
        raise RehearsalError(f"after the swap requests are still answered by {served[-1:]} (expected {new})")
    return len(served)


def rehearse_on(cluster: dict, endpoint: str, port: int, workdir: Path, bucket: str = BUCKET) -> int:
    """Steps 2-7 on a running cluster whose workers reach the S3 server at ``endpoint``, serving
    on ``port``; the number of requests answered during the hot swap. RehearsalError (or a
    timeout) names the step that failed. The Serve application stays deployed: the caller
    removes it, or stops the cluster."""
    from matting_lib.data.encode import encode_png

    dataset, manifest = step("bucket layout, dataset upload, manifest", lambda: prepare_bucket(endpoint, bucket))
    best = step("ray job submit configs/tiny.yaml", lambda: submit_training(cluster, dataset, manifest, bucket))
    step("a client without the token is refused", lambda: refuse_without_token(cluster))
    v1 = step("promote best.pt -> models/tiny-v1.pt", lambda: promote(endpoint, best, 1, bucket))
    url = f"http://127.0.0.1:{port}"
    config = serve_config(v1, port, workdir)
    path = workdir / "serve.yaml"
    step("serve deploy serve_app/config.yaml", lambda: (deploy(cluster, config, path), wait_ready(url)))
    image, _ = synthetic_pair(np.random.default_rng(7), 72, 96)
    png = encode_png(image)
    step("one request answered by models/tiny-v1.pt", lambda: check_request(url, png, (72, 96), v1))
    v2 = promote(endpoint, best, 2, bucket)
    n = step("hot swap to models/tiny-v2.pt under load", lambda: hot_swap(cluster, config, path, url, png, v2))
    print(f"[rehearse] {n} requests during the swap, none failed", flush=True)
    return n


def main() -> int:
    from testkit.env import configure

    configure()  # test S3 credentials for the moto bucket, token auth for the cluster and its clients
    os.chdir(REPO)  # `ray start` here: job entrypoints find configs/ as in the image's WORKDIR
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ.pop("MATTING_API_KEY", None)  # the rehearsal's service is open, on loopback only
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="rehearse-"))
    server, endpoint = start_s3()
    cluster = None
    try:
        cluster = step("ray start --head", lambda: start_ray_head(str(workdir / "ray")))
        rehearse_on(cluster, endpoint, free_port(), workdir)
    except (RehearsalError, subprocess.TimeoutExpired, RuntimeError, OSError) as e:
        print(f"[rehearse] FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if cluster is not None:
            step("stop this cluster (only it)", lambda: stop_ray_head(cluster["temp_dir"]))
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"[rehearse] passed in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
