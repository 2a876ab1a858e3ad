"""ray_jobs.train on a real local Ray cluster, with data streamed from a moto S3 bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from matting_lib import io
from matting_lib.checkpoint import load_checkpoint
from testkit import ROOT
from testkit.data import write_dataset

TINY = str(ROOT / "configs" / "tiny.yaml")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_dataset(ray_cluster, s3_server):
    import boto3

    bucket = f"train-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    root = write_dataset(f"s3://{bucket}/datasets/tiny", n_train=24, n_val=4, size=64)
    return bucket, root


def _train(args: list[str]) -> None:
    from ray_jobs.train import main

    assert main(["--config", TINY, *args]) == 0


def _history(storage: str, name: str) -> list[dict]:
    return json.loads(io.read_text(f"{storage}/{name}/history.json"))


@pytest.mark.timeout(400)
def test_ddp_from_s3_with_worker_failure(s3_dataset, tmp_path, capsys):
    """2 DDP workers, data and checkpoints in S3; one worker dies once mid-run and the
    run recovers from the last checkpoint with every epoch counted exactly once."""
    bucket, root = s3_dataset
    storage = f"s3://{bucket}/runs"
    marker = tmp_path / "failed-once"
    os.environ["MATTING_FAIL_ONCE"] = f"1:1:{marker}"
    try:
        _train([f"data.uri={root}", f"run.storage_path={storage}", "run.name=ddp", "run.max_failures=2"])
    finally:
        os.environ.pop("MATTING_FAIL_ONCE")
    assert marker.exists(), "the injected failure did not fire"
    out = capsys.readouterr().out
    history = _history(storage, "ddp")
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    ck = load_checkpoint(f"{storage}/ddp/best.pt")
    assert ck.model_config.encoder == "mobilenetv2"
    assert ck.training_state is None and "val_sad" in ck.metrics
    assert ck.data_fingerprint.startswith("sha256:")
    assert f"{storage}/ddp/best.pt" in out
    ck.build_model()  # loads strictly


@pytest.mark.timeout(400)
def test_interrupted_run_resumes_by_name(s3_dataset, tmp_path, capsys):
    """A run that dies (no retries left) resumes where it stopped when relaunched by name;
    a fresh name starts from epoch 1."""
    _, root = s3_dataset
    storage = str(tmp_path / "runs")
    marker = tmp_path / "died"
    os.environ["MATTING_FAIL_ONCE"] = f"1:0:{marker}"
    try:
        from ray_jobs.train import main

        with pytest.raises(SystemExit) as e:
            main(["--config", TINY, f"data.uri={root}", f"run.storage_path={storage}", "run.name=resume", "run.max_failures=0", "scaling.num_workers=1", "scaling.cpus_per_worker=1"])
        assert e.value.code == 1
        assert "injected worker failure" in capsys.readouterr().err
        _train([f"data.uri={root}", f"run.storage_path={storage}", "run.name=resume", "run.max_failures=0", "scaling.num_workers=1", "scaling.cpus_per_worker=1"])
    finally:
        os.environ.pop("MATTING_FAIL_ONCE")
    out = capsys.readouterr().out
    assert "resuming at epoch 2/3" in out
    assert "epoch 1/3" not in out
    assert [h["epoch"] for h in _history(storage, "resume")] == [0, 1, 2]


@pytest.mark.timeout(300)
def test_seed_format_without_val_txt_on_s3(ray_cluster, s3_server, capsys):
    """A bucket holding images/, masks/ and train.txt only: a seeded 10% of train.txt validates
    (the log says so) and the manifest is written to the run folder, never into the dataset."""
    import boto3

    bucket = f"noval-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=bucket)
    root = write_dataset(f"s3://{bucket}/datasets/seed", n_train=10, n_val=0, size=64)

    def dataset_keys() -> dict[str, str]:
        objs = client.list_objects_v2(Bucket=bucket, Prefix="datasets/").get("Contents", [])
        return {o["Key"]: o["ETag"] for o in objs}

    before = dataset_keys()
    storage = f"s3://{bucket}/runs"
    _train([f"data.uri={root}", f"run.storage_path={storage}", "run.name=noval", "stages.0.epochs=1",
            "scaling.num_workers=1", "scaling.cpus_per_worker=1"])
    out = capsys.readouterr().out
    assert "holding out 1 of 10 'train' samples for validation (10%, seed 0" in out, out
    assert f"data: {storage}/noval/manifest.jsonl: 9 train / 1 val samples" in out
    assert dataset_keys() == before
    assert [h["epoch"] for h in _history(storage, "noval")] == [0]
    assert "val_sad" in load_checkpoint(f"{storage}/noval/best.pt").metrics


def _run_cli(args: list[str], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_jobs.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(120)
def test_bad_inputs_fail_fast_and_clearly(tmp_path):
    cases = [
        (["--config", TINY, f"data.uri={tmp_path}/missing"], "dataset not found"),
        (["--config", TINY, "optim.grad_clip=-3"], "optim.grad_clip"),
        (["--config", TINY, "model.encoder_width=abc"], "model.encoder_width"),
        (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
        (["--config", TINY], "data.uri is empty"),
        (["--config", TINY, "data.uri=s3://nobucket/ds", "data.s3_endpoint_url=http://127.0.0.1:9"], "unreachable"),
    ]
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "train.txt").write_text("\n")
    cases.append((["--config", TINY, f"data.uri={empty}"], "empty"))
    for args, needle in cases:
        t0 = time.monotonic()
        r = _run_cli(args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert time.monotonic() - t0 < 45


@pytest.mark.timeout(400)
def test_ray_job_submit(ray_cluster, s3_dataset, tmp_path):
    """`ray job submit --working-dir .` of the tiny config ends SUCCEEDED with a checkpoint; it
    distils from the shipped base model, named by a path relative to the working dir."""
    bucket, root = s3_dataset
    storage = f"s3://{bucket}/submitted"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    cmd = [
        ray_cluster["ray_bin"], "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(ROOT),
        "--", "python", "-m", "ray_jobs.train", "--config", "configs/tiny.yaml",
        f"data.uri={root}", f"run.storage_path={storage}", "run.name=submitted", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
        "distill.teacher=models/base.pt", "distill.weight=0.5",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=360, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import re

    from ray.job_submission import JobStatus, JobSubmissionClient

    job_id = re.search(r"raysubmit_\w+", r.stdout + r.stderr).group(0)
    assert JobSubmissionClient(ray_cluster["dashboard"]).get_job_status(job_id) == JobStatus.SUCCEEDED
    ck = load_checkpoint(f"{storage}/submitted/best.pt")
    assert ck.metrics["epoch"] >= 0
    assert ck.train_config["distill"]["teacher"].endswith("models/base.pt") and "distilling from" in r.stdout
    # Without the token the job server refuses the client.
    denied = subprocess.run(
        [ray_cluster["ray_bin"], "job", "list", "--address", ray_cluster["dashboard"]],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")},
    )
    assert denied.returncode != 0


def test_relative_local_paths_are_resolved_on_the_driver(tmp_path, monkeypatch):
    """Workers do not run in the driver's directory: `init_checkpoint: models/base.pt` (as in
    configs/lowlight.yaml) must reach them as an absolute path; URIs stay as they are."""
    from matting_lib.config import load_config
    from ray_jobs.train import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "lowlight.yaml", ["data.uri=data/ds", "data.manifest=s3://b/m.jsonl"])
    fixed = absolute_paths(cfg)
    assert fixed.init_checkpoint == str(tmp_path / "models" / "base.pt")
    assert fixed.data.uri == str(tmp_path / "data" / "ds")
    assert fixed.data.manifest == "s3://b/m.jsonl"
    assert absolute_paths(fixed) == fixed
