"""ray_jobs.train's driver: bad inputs fail fast and clearly before any cluster is touched, and
local paths are resolved where the workers can use them.

The job on a real cluster: a DDP run on a bucket in the seeds' layout, killed, restarted, killed
again and resumed by name (tests/test_training_faults.py); ``ray job submit --working-dir .``
distilling from the shipped base model with token auth enforced (the operators'-guide rehearsal,
tests/test_infra.py); the same Ray Train pieces inside Tune trials (tests/test_tune_job.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit import ROOT

TINY = str(ROOT / "configs" / "tiny.yaml")


def _run_cli(args: list[str], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_jobs.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(120)
def test_bad_inputs_fail_fast_and_clearly(tmp_path, capsys):
    """Exit 2 with one clear line and no traceback, before any cluster is touched. In-process
    (each case a fresh parse), plus the command line for the cases that set process-wide state
    (an S3 endpoint) and for the exit path itself."""
    from ray_jobs.train import main

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "train.txt").write_text("\n")
    cases = [
        (["--config", TINY, f"data.uri={tmp_path}/missing"], "dataset not found"),
        (["--config", TINY, "optim.grad_clip=-3"], "optim.grad_clip"),
        (["--config", TINY, "model.encoder_width=abc"], "model.encoder_width"),
        (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
        (["--config", TINY], "data.uri is empty"),
        (["--config", TINY, f"data.uri={empty}"], "empty"),
    ]
    for args, needle in cases:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2, args
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (args, err)
    # The command line: the exit code and stderr of a real process, on the case that sets an S3 endpoint.
    args = ["--config", TINY, "data.uri=s3://nobucket/ds", "data.s3_endpoint_url=http://127.0.0.1:9"]
    t0 = time.monotonic()
    r = _run_cli(args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert "unreachable" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 45


def test_relative_local_paths_are_resolved_on_the_driver(tmp_path, monkeypatch):
    """Workers do not run in the driver's directory: `init_checkpoint: models/base.pt` (as in
    configs/lowlight.yaml) must reach them as an absolute path; URIs stay as they are."""
    from matting_lib.config import load_config
    from ray_jobs.run_data import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "lowlight.yaml", ["data.uri=data/ds", "data.manifest=s3://b/m.jsonl"])
    fixed = absolute_paths(cfg)
    assert fixed.init_checkpoint == str(tmp_path / "models" / "base.pt")
    assert fixed.data.uri == str(tmp_path / "data" / "ds")
    assert fixed.data.manifest == "s3://b/m.jsonl"
    assert absolute_paths(fixed) == fixed


@pytest.mark.timeout(120)
def test_the_local_cluster_keeps_idle_workers_between_epochs(ray_cluster):
    """Ray ends idle task workers beyond one per CPU after 1 s; on a small node each epoch's data
    tasks then start fresh workers that import torch again (8.5 s against 1.5-2.5 s per tiny
    epoch). The clusters this project starts keep them (ray_jobs.common.KEEP_IDLE_WORKERS_ENV):
    workers that ran tasks are still alive, idle, seconds later."""
    import ray

    from testkit.local_ray import process_alive

    @ray.remote(num_cpus=0.25)
    def pid(wait: float) -> int:
        time.sleep(wait)
        return os.getpid()

    pids = set(ray.get([pid.remote(1.0) for _ in range(4)], timeout=60))  # four run at once: four workers
    assert len(pids) == 4, pids
    time.sleep(2.5)  # 2.5 times the default idle limit

    assert all(process_alive(p) for p in pids), {p: process_alive(p) for p in pids}


def _niceness(pid: int) -> int:
    """Field 19 of /proc/PID/stat, read independently of os.getpriority."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.timeout(60)
def test_the_local_cluster_runs_its_workers_at_its_own_priority(ray_cluster):
    """Ray starts workers 15 nice levels below the raylet by default, where a unit test at nice 19
    beside them (tests/conftest.py) took 30% of a shared core from them. The clusters testkit
    starts run their workers at the raylet's own priority (testkit.local_ray.WORKER_PRIORITY_ENV)."""
    import ray

    from testkit.local_ray import cluster_pids

    @ray.remote(num_cpus=0.1)
    def priority() -> tuple[int, int]:
        return os.getpid(), os.getpriority(os.PRIO_PROCESS, 0)

    raylets = [p for p in cluster_pids(ray_cluster["temp_dir"]) if b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]]
    assert len(raylets) == 1, raylets
    pid, nice = ray.get(priority.remote(), timeout=30)
    assert nice == _niceness(pid) == _niceness(raylets[0]), (nice, _niceness(pid), _niceness(raylets[0]))
