"""Training under faults: a worker killed mid-epoch, S3 outages while reading, broken checkpoints.

Fast versions of the scenarios in ``bench/faults.py`` (which runs them larger and writes
``bench/RELIABILITY.md``). S3 faults use a moto server of this module's own on a fixed port,
stopped and started again, so an outage is a real refused connection, not a mock.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import struct
import threading
import time
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch

from testkit.s3 import RestartableS3
from matting_lib import io
from matting_lib.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint, parse_checkpoint, save_checkpoint
from matting_lib.config import ModelConfig
from matting_lib.nets import build_model
from testkit import ROOT
from testkit.data import write_dataset
from testkit.serve import wait_until

TINY = str(ROOT / "configs" / "tiny.yaml")
SMALL = ModelConfig(encoder="mobilenetv2", encoder_width=0.35, decoder_channels=(16, 16, 8, 8, 8))


# --------------------------------------------------------------------------- S3 outages


@pytest.fixture(scope="module")
def s3():
    server = RestartableS3()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """This module's server as the endpoint, a 20 s retry window, and fresh s3fs clients."""
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("MATTING_S3_RETRY_SECONDS", "20")
    monkeypatch.setattr(io, "_s3_overrides", {})
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"faults-{random.getrandbits(32):08x}"
    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    if not s3.running:
        s3.start()
    s3fs.S3FileSystem.clear_instance_cache()


def _rows(root: str, split: str) -> list[dict]:
    from matting_lib.data.manifest import ensure_manifest, read_manifest

    return read_manifest(ensure_manifest(root, ""), split=split)


@pytest.mark.timeout(90)
def test_short_s3_outage_during_reading_is_retried(s3, s3_env, caplog):
    """The data loader reading a batch while S3 is down for 3 s gets the same arrays as before,
    after logged retries, and no sooner than the endpoint is back."""
    from matting_lib.data.samples import SampleLoader

    root = write_dataset(f"{s3_env}/ds", n_train=4, n_val=2, size=48)
    rows = _rows(root, "val")
    loader = SampleLoader(size=48, augment="none", train=False)
    expected = loader.rows(rows)
    caplog.set_level(logging.WARNING, logger="matting_lib.io")

    t0 = time.monotonic()
    restarter = s3.outage(3.0)  # longer than botocore's own attempts: our retry loop must act
    got = loader.rows(rows)
    elapsed = time.monotonic() - t0
    restarter.join()

    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("S3 retry")]
    assert retries and rows[0]["image_uri"] in retries[0], retries
    assert 3.0 <= elapsed < 20, elapsed
    # Listings (the driver's manifest checks) ride out an outage the same way.
    restarter = s3.outage(2.0)
    assert io.listdir(f"{root}/images") == sorted(Path(r["image_uri"]).name for r in _rows(root, "train") + rows)
    restarter.join()


@pytest.mark.timeout(90)
def test_long_s3_outage_fails_clearly_within_the_window(s3, s3_env, monkeypatch, capsys):
    """With S3 down for good, reads give up after the retry window with an error naming the
    object and the endpoint; the training job's driver exits 2 with that line, no traceback.
    A missing object is not retried."""
    root = write_dataset(f"{s3_env}/ds", n_train=2, n_val=1, size=32)
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="nope.png"):
        io.read_bytes(f"{root}/images/nope.png")
    assert time.monotonic() - t0 < 5  # a retried miss would take the whole 20 s window

    monkeypatch.setenv("MATTING_S3_RETRY_SECONDS", "2")
    s3.stop()
    uri = f"{root}/images/tr000.png"
    t0 = time.monotonic()
    with pytest.raises(io.StorageError) as e:
        io.read_bytes(uri)
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert uri in msg and s3.endpoint in msg and "gave up after" in msg, msg
    assert 1.5 <= elapsed < 30, elapsed  # the 2 s window plus one last attempt, not a hang

    from matting_lib.config import load_config
    from ray_jobs.trainer import prepare_data

    cfg = load_config(TINY, [f"data.uri={root}"])
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        prepare_data(cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and root in err and s3.endpoint in err and "Traceback" not in err, err
    assert time.monotonic() - t0 < 30


# --------------------------------------------------------------------------- checkpoints


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SMALL).eval()


def _same(a, b) -> bool:
    return (
        a.model_config == b.model_config and a.metrics == b.metrics and a.training_state == b.training_state
        and a.state_dict.keys() == b.state_dict.keys() and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    )


def test_truncated_checkpoint_is_detected_at_every_offset(tmp_path):
    good = checkpoint_bytes(_model(), metrics={"epoch": 2}, training_state={"epoch": 2, "history": [{"epoch": 0}]})
    with zipfile.ZipFile(BytesIO(good)) as z:
        biggest = max(z.infolist(), key=lambda i: i.compress_size)
    offsets = {
        "first byte": 1, "local header": 20, "pickled metadata": 200,
        "inside the largest tensor": _data_start(good, biggest) + biggest.compress_size // 2,
        "middle": len(good) // 2, "central directory": len(good) - 200, "end record": len(good) - 10, "last byte": len(good) - 1,
    }
    for where, cut in offsets.items():
        path = tmp_path / f"cut-{cut}.pt"
        path.write_bytes(good[:cut])
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(str(path))
        assert str(path) in str(e.value), where
        assert "truncated" in str(e.value) or "not a checkpoint" in str(e.value), (where, str(e.value))


def _data_start(archive: bytes, info: zipfile.ZipInfo) -> int:
    """Offset of a zip record's data: after its local header, whose name/extra lengths are its own."""
    name_len, extra_len = struct.unpack_from("<HH", archive, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def test_bit_flips_never_load_a_different_model():
    """Any single flipped bit either fails the CRC/structure checks or changes nothing that is
    loaded (zip padding and timestamps); a flip inside tensor data is always caught."""
    good = checkpoint_bytes(_model(), metrics={"val_sad": 1.5}, training_state={"epoch": 0})
    ref = parse_checkpoint(good, "ref.pt")
    rng = random.Random(0)
    detected = 0
    for off in [rng.randrange(len(good)) for _ in range(150)]:
        bad = bytearray(good)
        bad[off] ^= 1 << rng.randrange(8)
        try:
            got = parse_checkpoint(bytes(bad), "flipped.pt")
        except CheckpointError as e:
            assert "flipped.pt" in str(e)
            detected += 1
            continue
        assert _same(got, ref), f"a flip at byte {off} loaded different contents"
    assert detected > 100  # tensor bytes are most of the file
    with zipfile.ZipFile(BytesIO(good)) as z:
        records = [i for i in z.infolist() if "/data/" in i.filename and i.compress_size > 64]
    for info in records[:: max(1, len(records) // 10)]:
        bad = bytearray(good)
        bad[_data_start(good, info) + info.compress_size // 2] ^= 0x01
        with pytest.raises(CheckpointError, match=rf"flipped\.pt: corrupt checkpoint: record .*{info.filename.split('/')[-1]}"):
            parse_checkpoint(bytes(bad), "flipped.pt")


@pytest.mark.timeout(60)
def test_truncated_checkpoint_on_s3_is_detected(s3_env):
    uri = f"{s3_env}/models/m.pt"
    good = checkpoint_bytes(_model())
    io.write_bytes(uri, good[: len(good) - 1])
    with pytest.raises(CheckpointError, match=rf"{uri}: truncated"):
        load_checkpoint(uri)


def test_checkpoint_writes_are_atomic_under_concurrent_reads(tmp_path, monkeypatch):
    """A reader polling while a writer replaces the file sees one whole version or the other,
    never a partial file; a write that fails leaves the old file and no temporary behind."""
    uri = str(tmp_path / "live.pt")
    versions = [checkpoint_bytes(_model(s), metrics={"version": s}) for s in (0, 1)]
    io.write_bytes(uri, versions[0])
    stop = threading.Event()
    seen: list[float] = []
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(load_checkpoint(uri).metrics["version"])
            except CheckpointError as e:
                errors.append(str(e))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            io.write_bytes(uri, versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert seen and set(seen) <= {0.0, 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.pt"]

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="live.pt"):
        save_checkpoint(uri, _model(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.pt"]
    assert load_checkpoint(uri).metrics["version"] == 1.0


# --------------------------------------------------------------------------- worker loss


def _train_worker_pids(address: str) -> list[int]:
    """PIDs of the live Ray Train workers of the cluster at ``address`` (never another cluster's)."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
    return sorted(int(a.pid) for a in actors if a.pid)


class _S3Run:
    """A training run's folder in the session's moto bucket, read with boto3 (no listing cache)."""

    def __init__(self, uri: str) -> None:
        import boto3

        self.bucket, self.prefix = uri.removeprefix("s3://").split("/", 1)
        self.client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

    def checkpoints(self) -> list[str]:
        """Checkpoint folders written so far (one may still be mid-upload)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/checkpoint_")
        keys = [o["Key"][len(self.prefix) + 1:] for page in pages for o in page.get("Contents", [])]
        return sorted({k.split("/", 1)[0] for k in keys if "/" in k})  # not checkpoint_manager_snapshot.json

    def registered(self) -> list[str]:
        """Checkpoints the Train controller has registered in its snapshot."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/checkpoint_manager_snapshot.json")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return []
        text = body.decode()
        return [c for c in self.checkpoints() if c in text]


@pytest.mark.slow
@pytest.mark.timeout(480)  # ~80 s on an idle 2-core machine; generous for a loaded one
def test_ddp_workers_killed_restart_then_resume_by_name_from_s3(ray_cluster, s3_bucket, capsys):
    """2 DDP workers on a bucket in the seeds' layout (images/, masks/, train.txt only), data and
    checkpoints in S3 (moto), ``run.max_failures=1``. SIGKILL a worker from outside as soon as an
    epoch's checkpoint is registered: the group restarts from it, read back from S3. SIGKILL one
    again after the next registered checkpoint: no retries are left, so the job exits 1.
    Relaunched by name, it resumes from the checkpoint and manifest in the bucket. Both records of
    the run (the history in the final checkpoint, and Ray's per-checkpoint metrics) hold every
    epoch exactly once, in order; a seeded 10% of train.txt validated (the log says so) and the
    manifest went to the run folder, never into the dataset. The exported best.pt is a
    self-describing, weights-only checkpoint."""
    from ray.train import Result

    from ray_jobs.train import main

    root = write_dataset(f"{s3_bucket}/datasets/seed", n_train=20, n_val=0, size=64)
    storage, name, epochs = f"{s3_bucket}/runs", "killed", 5
    run = _S3Run(f"{storage}/{name}")

    def dataset_keys() -> dict[str, str]:
        objs = run.client.list_objects_v2(Bucket=run.bucket, Prefix="datasets/").get("Contents", [])
        return {o["Key"]: o["ETag"] for o in objs}

    before = dataset_keys()
    assert not any(k.endswith("val.txt") for k in before)
    kills: list[dict] = []
    errors: list[str] = []

    def wait_for(ready, what: str) -> bool:
        """testkit's poll, its failure recorded: this runs in the killer thread, where raising is lost."""
        try:
            # Each poll asks moto (in this process, at normal priority) or the state API: not too often.
            wait_until(ready, 300, what, interval=0.2)
        except AssertionError as e:
            errors.append(str(e))
            return False
        return True

    def kill_one(after: list[int]) -> bool:
        """SIGKILL one worker of the group once ``after`` checkpoints are registered."""
        if not wait_for(lambda: len(run.registered()) >= after[0], f"{after[0]} registered checkpoints"):
            return False
        pids = _train_worker_pids(ray_cluster["address"])
        if len(pids) != 2:
            errors.append(f"expected 2 train workers, found {pids}")
            return False
        registered = run.registered()
        cmdline = Path(f"/proc/{pids[-1]}/cmdline").read_bytes().decode(errors="replace")
        if "RayTrainWorker" not in cmdline:
            errors.append(f"pid {pids[-1]} is not a train worker: {cmdline!r}")
            return False
        os.kill(pids[-1], signal.SIGKILL)
        kills.append({"pid": pids[-1], "group": pids, "registered": registered, "folders": run.checkpoints()})
        return True

    def killer() -> None:
        if not kill_one([1]):
            return
        # The second kill hits the restarted group after its first checkpoint. Counted once the new
        # group is up: a report in flight at the first kill may still register after it.
        def new_group() -> bool:
            pids = _train_worker_pids(ray_cluster["address"])
            return len(pids) == 2 and not set(pids) & set(kills[0]["group"])
        if wait_for(new_group, "the restarted worker group"):
            kill_one([len(run.registered()) + 1])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    args = ["--config", TINY, f"data.uri={root}", f"run.storage_path={storage}", f"run.name={name}",
            "run.max_failures=1", "run.keep_checkpoints=10", f"stages.0.epochs={epochs}"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    thread.join(timeout=30)
    first = capsys.readouterr()
    assert not errors, (errors, first.err[-1500:])
    assert len(kills) == 2, (kills, first.err[-1500:])
    assert kills[0]["pid"] != kills[1]["pid"]
    done = [len(k["registered"]) for k in kills]
    assert 1 <= done[0] < done[1] < epochs and len(kills[1]["folders"]) < epochs, kills  # the run was not over
    # The group restart resumes after the last registered checkpoint; a report in flight at the
    # kill may still have been registered after it.
    restarts = [int(e) for e in re.findall(rf"resuming at epoch (\d+)/{epochs}", first.out)]
    assert len(restarts) == 1 and restarts[0] - 1 in (done[0], done[0] + 1), (done, first.out[-3000:])
    final = len(run.registered())  # what the first run left registered, where the relaunch must resume
    assert done[1] <= final < epochs, (done, final)
    assert "holding out 2 of 20 'train' samples for validation (10%, seed 0" in first.out, first.out[-3000:]
    assert f"data: {storage}/{name}/manifest.jsonl: 18 train / 2 val samples" in first.out
    assert f"relaunch the same command (run.name={name}) to resume" in first.err, first.err[-3000:]

    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"data: {storage}/{name}/manifest.jsonl: 18 train / 2 val samples" in out
    assert f"resuming at epoch {final + 1}/{epochs}" in out, out[-3000:]
    assert "epoch 1/" not in out
    history = json.loads(io.read_text(f"{storage}/{name}/history.json"))
    assert [h["epoch"] for h in history] == list(range(epochs))
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    reported = Result.from_path(f"{storage}/{name}").metrics_dataframe
    assert sorted(reported["epoch"].tolist()) == list(range(epochs)), reported
    assert dataset_keys() == before

    ck = load_checkpoint(f"{storage}/{name}/best.pt")
    assert f"{storage}/{name}/best.pt" in out
    assert ck.model_config.encoder == "mobilenetv2"
    assert ck.training_state is None and "val_sad" in ck.metrics
    assert ck.data_fingerprint.startswith("sha256:")
    ck.build_model()  # loads strictly
