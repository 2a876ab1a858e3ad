"""ray_jobs.train on a real local Ray cluster, with data streamed from a moto S3 bucket.

``ray job submit --working-dir .`` of the training job (distilling from the shipped base model,
token auth enforced) is a step of the operators'-guide rehearsal: tests/test_infra.py."""

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


def _history(storage: str, name: str) -> list[dict]:
    return json.loads(io.read_text(f"{storage}/{name}/history.json"))


@pytest.mark.timeout(400)
def test_seed_format_run_on_s3_dies_then_resumes_by_name(ray_cluster, s3_server, tmp_path, capsys):
    """A bucket holding images/, masks/ and train.txt only (the seeds' layout): a seeded 10% of
    train.txt validates (the log says so) and the manifest is written to the run folder, never
    into the dataset. The run dies with no retries left; relaunched by name it resumes where it
    stopped, from the checkpoint and manifest in the bucket. (Group restarts after a lost worker:
    tests/test_training_faults.py.)"""
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
    args = ["--config", TINY, f"data.uri={root}", f"run.storage_path={storage}", "run.name=resume", "run.max_failures=0",
            "stages.0.epochs=2", "scaling.num_workers=1", "scaling.cpus_per_worker=1"]
    os.environ["MATTING_FAIL_ONCE"] = f"1:0:{tmp_path / 'died'}"
    try:
        from ray_jobs.train import main

        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 1
        captured = capsys.readouterr()
        assert "injected worker failure" in captured.err
        assert "holding out 1 of 10 'train' samples for validation (10%, seed 0" in captured.out, captured.out
        assert f"data: {storage}/resume/manifest.jsonl: 9 train / 1 val samples" in captured.out
        assert main(args) == 0
    finally:
        os.environ.pop("MATTING_FAIL_ONCE")
    out = capsys.readouterr().out
    assert f"data: {storage}/resume/manifest.jsonl: 9 train / 1 val samples" in out
    assert "resuming at epoch 2/2" in out
    assert "epoch 1/2" not in out
    assert [h["epoch"] for h in _history(storage, "resume")] == [0, 1]
    assert "val_sad" in load_checkpoint(f"{storage}/resume/best.pt").metrics
    assert dataset_keys() == before


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
    for args, needle in [
        (["--config", TINY, "data.uri=s3://nobucket/ds", "data.s3_endpoint_url=http://127.0.0.1:9"], "unreachable"),
        (["--config", TINY, f"data.uri={tmp_path}/missing"], "dataset not found"),
    ]:
        t0 = time.monotonic()
        r = _run_cli(args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert time.monotonic() - t0 < 45


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
