"""Training under faults, at a larger size than the tests: what breaks, what recovers, how fast.

    python -m bench.faults [--only kill outage sweep checkpoint]

Scenarios (each writes its own section of ``bench/RELIABILITY.md``; other sections are kept):

- **worker kill**: the training job (2 DDP workers, data from S3) has one ``RayTrainWorker``
  process killed with SIGKILL from outside during an epoch (5 s after a checkpoint). Figures: epochs planned / completed /
  duplicated / lost in the run's history and in Ray's checkpoint records, worker groups started,
  the time from the kill to the next checkpoint against a normal epoch.
- **S3 outage**: the S3 server (moto on loopback, restarted on the same port, objects kept) is
  stopped for a few seconds (``--outage``) in every four times that, for the whole time the
  training job streams its data from it; then reads with S3 down for good. Figures: the same epoch counts, the retries logged by the data tasks
  (``S3 retry`` lines in the cluster's logs), worker groups started, the time to a clear error.
- **interrupted sweep**: a Tune sweep's driver is killed with SIGKILL (no clean shutdown) once
  its trial has checkpointed, then relaunched by name. Figures: trials, epochs reported per trial
  before/after, duplicated and lost epochs in Tune's records, time to finish after the relaunch.
- **checkpoint integrity**: the shipped base architecture's checkpoint truncated at many offsets
  and with single bits flipped. Figures: detected, loaded unchanged (zip padding), loaded with
  different contents (must be 0), and the cost of the CRC check.

Everything runs on a private local Ray cluster and a private S3 server on loopback; nothing
from the repository is modified except ``bench/RELIABILITY.md``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io as _io
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# A private token: the cluster this starts never touches the user's ~/.ray/auth_token.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]

from bench.results import markdown_table, update_results  # noqa: E402 - after the environment above
from serve_app.run import free_port  # noqa: E402
from testkit.s3 import RestartableS3  # noqa: E402

REPORT = Path(__file__).parent / "RELIABILITY.md"
REPORT_HEADER = (
    "# Reliability results\n\n"
    "Written by the reliability runs in `bench/` themselves (hostile input, load and faults); each "
    "section is replaced by the latest run of its script.\n"
)
"""The file's header when this script creates it (the same text as the other reliability runs')."""
TINY = str(ROOT / "configs" / "tiny.yaml")
EPOCHS = 3


def write_section(section: str, markdown: str) -> None:
    """Replace this script's ``## <section>`` of ``RELIABILITY.md``; other sections are kept."""
    if not REPORT.exists():
        REPORT.write_text(REPORT_HEADER)
    update_results(section, markdown, path=REPORT)


def log(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- shared plumbing


def write_dataset(root: str, n_train: int, n_val: int, size: int, seed: int = 0) -> str:
    """A synthetic seed-format dataset (procedural foregrounds over noise) at ``root``."""
    import numpy as np

    from matting_lib import io
    from matting_lib.data.encode import encode_png
    from matting_lib.data.procedural import random_foreground

    rng = np.random.default_rng(seed)
    splits = {"train": [f"tr{i:04d}" for i in range(n_train)], "val": [f"va{i:04d}" for i in range(n_val)]}
    for names in splits.values():
        for name in names:
            fg, alpha = random_foreground(rng, (size, size))
            bg = rng.uniform(0, 255, (size, size, 3))
            image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
            io.write_bytes(io.join(root, "images", f"{name}.png"), encode_png(image.round().astype(np.uint8)))
            io.write_bytes(io.join(root, "masks", f"{name}.png"), encode_png((alpha * 255).round().astype(np.uint8)))
    for split, names in splits.items():
        io.write_text(io.join(root, f"{split}.txt"), "\n".join(names) + "\n")
    return root


def train_worker_pids(address: str) -> list[int]:
    """PIDs of the live Ray Train workers of the cluster at ``address``."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
    return sorted(int(a.pid) for a in actors if a.pid)


def registered(run_dir: Path) -> list[str]:
    """Checkpoint folders the Train controller has registered (listed in its snapshot)."""
    try:
        text = (run_dir / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return []
    return sorted(p.name for p in run_dir.glob("checkpoint_*") if p.name in text)


def in_epoch(run_dir: Path) -> bool:
    """An epoch's checkpoint is registered and the next one's not begun: training is mid-epoch."""
    done = registered(run_dir)
    return bool(done) and len(done) == len(list(run_dir.glob("checkpoint_*")))


class RunWatcher:
    """Polls a training run: when each checkpoint gets registered, and every train worker seen."""

    def __init__(self, run_dir: Path, address: str, workers: int = 2) -> None:
        self.run_dir, self.address, self.workers = run_dir, address, workers
        self.checkpoint_times: dict[str, float] = {}
        self.worker_pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RunWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def groups(self) -> int:
        """Worker groups started: a restarted group runs in new worker processes."""
        return -(-len(self.worker_pids) // self.workers)

    def _loop(self) -> None:
        last_actors = 0.0
        while not self._stop.is_set():
            for c in registered(self.run_dir):
                self.checkpoint_times.setdefault(c, time.monotonic())
            if time.monotonic() - last_actors > 1.0:
                with contextlib.suppress(Exception):
                    self.worker_pids |= set(train_worker_pids(self.address))
                last_actors = time.monotonic()
            self._stop.wait(0.1)


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` every 50 ms for up to ``timeout`` s; whether it became true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def epoch_counts(epochs: list[int], planned: int) -> dict[str, int]:
    """Completed (distinct), duplicated (extra copies) and lost (planned, never recorded)."""
    distinct = set(epochs)
    return {
        "planned": planned,
        "completed": len(distinct & set(range(planned))),
        "duplicated": len(epochs) - len(distinct),
        "lost": len(set(range(planned)) - distinct),
        "in order": int(epochs == sorted(epochs)),
    }


def run_training(args: list[str]) -> tuple[int, str, float]:
    """``ray_jobs.train.main(args)`` in this process: exit code, captured stdout, seconds."""
    from ray_jobs.train import main

    out = _io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), time.monotonic() - t0


def records(run_dir: Path) -> tuple[list[int], list[int]]:
    """Epochs in the run's history (final checkpoint) and in Ray's checkpoint records."""
    from ray.train import Result

    history = [int(h["epoch"]) for h in json.loads((run_dir / "history.json").read_text())]
    frame = Result.from_path(str(run_dir)).metrics_dataframe
    return history, sorted(int(e) for e in frame["epoch"].tolist())


def epoch_gaps(times: dict[str, float]) -> list[float]:
    ordered = [times[k] for k in sorted(times)]
    return [b - a for a, b in zip(ordered, ordered[1:])]


def count_retries(ray_temp: str) -> int:
    """``S3 retry`` lines logged by any process of the private cluster."""
    n = 0
    for f in Path(ray_temp).glob("session_2*/logs/*"):  # not session_latest, a link to the same
        if f.is_file() and f.suffix in (".err", ".out", ".log"):
            with contextlib.suppress(OSError):
                n += f.read_text(errors="replace").count("S3 retry")
    return n


# --------------------------------------------------------------------------- scenarios


def scenario_kill(ctx: dict) -> None:
    log("worker kill: training 2 workers, SIGKILL one mid-epoch")
    run_dir = Path(ctx["tmp"]) / "runs" / "kill"
    killed: dict = {}
    with RunWatcher(run_dir, ctx["address"]) as watch:

        def killer() -> None:
            # 5 s after the first checkpoint is registered: the next epoch is training (or, on a
            # slow machine, reporting a checkpoint the controller has not registered yet).
            if not wait_for(lambda: bool(watch.worker_pids), 900):
                return
            killed["started"] = time.monotonic()
            if not wait_for(lambda: bool(registered(run_dir)), 900):
                return
            time.sleep(5.0)
            if len(registered(run_dir)) >= EPOCHS:
                return
            victim = train_worker_pids(ctx["address"])[-1]
            if "RayTrainWorker" in Path(f"/proc/{victim}/cmdline").read_bytes().decode(errors="replace"):
                done = len(registered(run_dir))
                os.kill(victim, signal.SIGKILL)
                killed.update(pid=victim, at=time.monotonic(), done=done, folders=len(list(run_dir.glob("checkpoint_*"))))
                log(f"worker kill: killed pid {victim} with {done} epoch(s) checkpointed")

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        code, out, seconds = run_training(ctx["train_args"] + ["run.name=kill"])
        thread.join(timeout=5)
    history, reported = records(run_dir) if code == 0 else ([], [])
    after = sorted(t for t in watch.checkpoint_times.values() if "at" in killed and t > killed["at"])
    gaps = epoch_gaps(watch.checkpoint_times)
    normal = statistics.median(gaps) if gaps else float("nan")
    first = min(watch.checkpoint_times.values(), default=float("nan")) - killed.get("started", float("nan"))
    recover = (after[0] - killed["at"]) if after else float("nan")
    rows = [
        ["run history (final checkpoint)", *epoch_counts(history, EPOCHS).values()],
        ["Ray checkpoint records", *epoch_counts(reported, EPOCHS).values()],
    ]
    if "pid" in killed:
        what = (
            f"one `RayTrainWorker` killed with SIGKILL from outside during epoch {killed['done'] + 1}, 5 s after epoch "
            f"{killed['done']}'s checkpoint was registered ({killed['done']} registered checkpoint(s) and "
            f"{killed['folders']} checkpoint folder(s) at the kill: a folder beyond the registered ones is a report in flight, "
            f"which the restarted group redoes)"
        )
    else:
        what = "**no worker was killed** (the run ended before a mid-epoch moment was found)"
    md = (
        f"Training job, 2 DDP workers (0.5 CPU each), {EPOCHS} epochs of {ctx['n_train']} samples "
        f"({ctx['size']}²) streamed from S3 (moto on loopback); {what}. Exit code {code}; "
        f"`resuming at epoch` printed: {'yes' if 'resuming at epoch' in out else 'no'}. "
        f"Kill → next checkpoint covers the group's restart and the redone part of the epoch; the first epoch "
        f"(worker group start to its checkpoint) includes the data pipeline's start.\n\n"
        + markdown_table(["record", "epochs planned", "completed", "duplicated", "lost", "in order"], rows)
        + "\n"
        + markdown_table(
            ["worker groups started", "failures (restarts)", "kill → next checkpoint (s)", "first epoch (s)", "epochs (median gap, s)", "whole run (s)"],
            [[watch.groups, max(0, watch.groups - 1), recover, first, normal, seconds]],
        )
    )
    write_section("Training faults: worker killed mid-epoch", md)
    log(f"worker kill: exit {code}, history {history}, Ray records {reported}, groups {watch.groups}")


def scenario_outage(ctx: dict) -> None:
    s3: RestartableS3 = ctx["s3"]
    outage_s = ctx["outage_s"]
    log(f"S3 outage: training from S3, server down for {outage_s:g} s in every {4 * outage_s:g} s")
    run_dir = Path(ctx["tmp"]) / "runs" / "outage"
    before = count_retries(ctx["ray_temp"])
    window: dict = {}
    with RunWatcher(run_dir, ctx["address"]) as watch:

        finished = threading.Event()

        def cut() -> None:
            # From the worker group's start to the end of the run: down outage_s, up 3 x outage_s,
            # so that every epoch's reads (a few seconds of each epoch) are likely to meet one.
            if not wait_for(lambda: bool(watch.worker_pids) or finished.is_set(), 900) or finished.is_set():
                return
            window["start"] = time.monotonic()
            while not finished.is_set():
                s3.outage(outage_s).join()
                window["outages"] = window.get("outages", 0) + 1
                finished.wait(3 * outage_s)

        thread = threading.Thread(target=cut, daemon=True)
        thread.start()
        code, out, seconds = run_training(ctx["train_args"] + ["run.name=outage"])
        finished.set()
        thread.join(timeout=outage_s + 5)
        log(f"S3 outage: {window.get('outages', 0)} outage(s) during the run")
    retries = count_retries(ctx["ray_temp"]) - before
    history, reported = records(run_dir) if code == 0 else ([], [])
    gaps = epoch_gaps(watch.checkpoint_times)
    first = min(watch.checkpoint_times.values(), default=float("nan")) - window.get("start", float("nan"))

    # S3 down for good: how long until a read and the job's driver fail, and what they say.
    from matting_lib import io

    s3.stop()
    t0 = time.monotonic()
    try:
        io.read_bytes(io.join(ctx["root"], "images", "tr0000.png"))
        read_error = "no error (unexpected)"
    except OSError as e:
        read_error = str(e)
    read_fail_s = time.monotonic() - t0
    t0 = time.monotonic()
    driver = subprocess.run(
        [sys.executable, "-m", "ray_jobs.train", "--config", TINY, f"data.uri={ctx['root']}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    driver_s = time.monotonic() - t0
    s3.start()
    rows = [
        ["run history (final checkpoint)", *epoch_counts(history, EPOCHS).values()],
        ["Ray checkpoint records", *epoch_counts(reported, EPOCHS).values()],
    ]
    md = (
        f"Training job as above, its data read from the S3 server, which is stopped for {outage_s:g} s "
        f"(connections refused) and started again on the same port every {4 * outage_s:g} s from the worker group's "
        f"start to the end of the run: {window.get('outages', 0)} outage(s). First epoch: from the worker group's start "
        f"to its checkpoint. "
        f"Retry window `MATTING_S3_RETRY_SECONDS`={io.retry_window_s():g} s (the default). Exit code {code}.\n\n"
        + markdown_table(["record", "epochs planned", "completed", "duplicated", "lost", "in order"], rows)
        + "\n"
        + markdown_table(
            ["S3 retries logged", "worker groups started", "failures (restarts)", "first epoch (s)", "later epochs (median, s)", "whole run (s)"],
            [[retries, watch.groups, max(0, watch.groups - 1), first, statistics.median(gaps) if gaps else float("nan"), seconds]],
        )
        + "\nS3 down for good:\n\n"
        + markdown_table(
            ["call", "time to fail (s)", "result"],
            [
                ["`io.read_bytes` of one image", read_fail_s, f"`{read_error[:300]}`"],
                ["`python -m ray_jobs.train` (driver)", driver_s, f"exit {driver.returncode}: `{driver.stderr.strip().splitlines()[-1][:300] if driver.stderr.strip() else ''}`"],
            ],
        )
    )
    write_section("Training faults: S3 outage while reading", md)
    log(f"S3 outage: exit {code}, retries {retries}, history {history}, driver down-for-good exit {driver.returncode} in {driver_s:.0f} s")


def _tune_rows(sweep_dir: Path) -> dict[str, list[int]]:
    """Each trial's reported ``epochs_done`` values, from Tune's result.json files."""
    out = {}
    for f in sweep_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = [int(r["epochs_done"]) for r in rows]
    return out


def _trial_history(run_dir: Path) -> list[int]:
    """Epochs in the history of a Train run's latest checkpoint (every epoch it trained, once each)."""
    from ray.train import Result

    from matting_lib.checkpoint import load_checkpoint
    from ray_jobs.trainer import CHECKPOINT_FILE

    latest = Result.from_path(str(run_dir)).checkpoint
    if latest is None:
        return []
    state = load_checkpoint(f"{latest.path}/{CHECKPOINT_FILE}").training_state or {}
    return [int(h["epoch"]) for h in state.get("history", [])]


def scenario_sweep(ctx: dict) -> None:
    log("interrupted sweep: SIGKILL the Tune driver once a trial has checkpointed, then relaunch")
    storage = Path(ctx["tmp"]) / "sweeps"
    sweep_dir = storage / "killed"
    planned = 3
    args = [
        "--config", str(ROOT / "configs" / "sweep_tiny.yaml"), "--address", ctx["address"], f"base_config={TINY}",
        f"train.data.uri={ctx['root']}", "train.run.keep_checkpoints=10", f"storage_path={storage}", "name=killed",
        f"space={{lr: [3.0e-3], stages.0.epochs: [{planned}]}}",
    ]
    cmd = [sys.executable, "-m", "ray_jobs.tune", *args]
    logfile = Path(ctx["tmp"]) / "sweep-1.txt"
    t0 = time.monotonic()
    with open(logfile, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if list(sweep_dir.glob("train/*/checkpoint_*")) and list(sweep_dir.glob("experiment_state*.json")):
                break
            time.sleep(0.2)
        killed_alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    checkpoints_before = {p.name for p in sweep_dir.glob("train/*/checkpoint_*")}
    first_s = time.monotonic() - t0
    before = _tune_rows(sweep_dir)
    log(f"interrupted sweep: killed after {first_s:.0f} s (alive: {killed_alive}); epochs so far {before}")
    time.sleep(2)  # the killed driver's trial actors are reaped by Ray (their owner died)
    t0 = time.monotonic()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    resume_s = time.monotonic() - t0
    after = _tune_rows(sweep_dir)
    rows = []
    for trial, epochs in sorted(after.items()):
        counts = epoch_counts([e - 1 for e in epochs], planned)  # epochs_done is 1-based
        rows.append([f"{trial}: Tune's rows", len(before.get(trial, [])), len(epochs), *counts.values()])
        history = _trial_history(sweep_dir / "train" / trial)
        rows.append([f"{trial}: Train run's history", "", len(history), *epoch_counts(history, planned).values()])
    resumed = "resuming" in second.stdout
    # Each epoch leaves one checkpoint folder (all kept): those made after the relaunch are the epochs it trained.
    trained_after = len({p.name for p in sweep_dir.glob("train/*/checkpoint_*")} - checkpoints_before)
    md = (
        f"`ray_jobs.tune` with `configs/sweep_tiny.yaml` (one trial of {planned} epochs, 1 worker) on the same data; "
        f"the driver process is killed with SIGKILL (no clean shutdown) {first_s:.0f} s in, once a trial checkpoint and "
        f"Tune's experiment state exist, then relaunched with the same name: exit code {second.returncode}, "
        f"resumed: {'yes' if resumed else 'no'}, {len(checkpoints_before)} epoch checkpoint(s) before the kill, {trained_after} epoch(s) trained after the relaunch "
        f"(of {planned}), {resume_s:.0f} s to finish after the relaunch. Records: Tune's reported `epochs_done` per trial "
        f"(result.json, as flushed before the kill and at the end) and the history in the trial's last Train checkpoint.\n\n"
        + markdown_table(["record", "rows before kill", "rows at end", "epochs planned", "completed", "duplicated", "lost", "in order"], rows)
    )
    if second.returncode != 0:
        md += f"\nRelaunch stderr (last lines): `{' / '.join(second.stderr.strip().splitlines()[-3:])[:600]}`\n"
    write_section("Training faults: interrupted Tune sweep", md)
    log(f"interrupted sweep: relaunch exit {second.returncode}, epochs {after}")


def scenario_checkpoint(ctx: dict) -> None:
    import torch

    from matting_lib.checkpoint import CheckpointError, checkpoint_bytes, parse_checkpoint
    from matting_lib.config import load_config
    from matting_lib.nets import build_model

    cfg = load_config(str(ROOT / "configs" / "base.yaml"), [])
    torch.manual_seed(0)
    good = checkpoint_bytes(build_model(cfg.model), metrics={"val_sad": 1.0}, training_state={"epoch": 3})
    log(f"checkpoint integrity: base architecture, {len(good) / 2**20:.1f} MiB")
    ref = parse_checkpoint(good, "ref")

    def same(ck) -> bool:
        return ck.metrics == ref.metrics and ck.training_state == ref.training_state and ck.model_config == ref.model_config and all(
            torch.equal(ck.state_dict[k], v) for k, v in ref.state_dict.items()
        ) and ck.state_dict.keys() == ref.state_dict.keys()

    def trial(data: bytes) -> str:
        try:
            ck = parse_checkpoint(data, "x.pt")
        except CheckpointError:
            return "detected"
        return "unchanged" if same(ck) else "DIFFERENT"

    rng = random.Random(0)
    cuts = sorted({1, 2, 30, len(good) - 1, len(good) - 22} | {int(len(good) * i / 40) for i in range(1, 40)})
    flips = [rng.randrange(len(good)) for _ in range(ctx["flips"])]
    results = {"truncation": [trial(good[:c]) for c in cuts]}
    flipped = []
    for off in flips:
        bad = bytearray(good)
        bad[off] ^= 1 << rng.randrange(8)
        flipped.append(trial(bytes(bad)))
    results["single bit flip"] = flipped
    t_full = statistics.median(_time(lambda: parse_checkpoint(good, "x")) for _ in range(5))
    t_crc = statistics.median(_time(lambda: zipfile.ZipFile(_io.BytesIO(good)).testzip()) for _ in range(5))
    rows = [[kind, len(r), r.count("detected"), r.count("unchanged"), r.count("DIFFERENT")] for kind, r in results.items()]
    md = (
        f"A checkpoint of `configs/base.yaml`'s architecture ({len(good) / 2**20:.1f} MiB): truncated at {len(cuts)} offsets "
        f"(first bytes, every 2.5 %, the end record, the last byte) and with {len(flips)} single bits flipped at random offsets. "
        f"\"Unchanged\": the file loaded with exactly the original contents (the flip hit zip padding or a timestamp); "
        f"\"different\" would be a silently wrong model and must be 0.\n\n"
        + markdown_table(["damage", "cases", "detected (CheckpointError)", "loaded unchanged", "loaded different"], rows)
        + f"\nParse of the intact file: {t_full * 1000:.0f} ms, of which the CRC-32 check of every record {t_crc * 1000:.0f} ms.\n"
    )
    write_section("Training faults: checkpoint integrity", md)
    log(f"checkpoint integrity: {[(r[0], r[2], r[3], r[4]) for r in rows]}")


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


SCENARIOS = {"checkpoint": scenario_checkpoint, "kill": scenario_kill, "outage": scenario_outage, "sweep": scenario_sweep}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS), help="scenarios to run (default: all)")
    p.add_argument("--samples", type=int, default=48, help="training samples (default 48)")
    p.add_argument("--size", type=int, default=64, help="training crop size in pixels (default 64)")
    p.add_argument("--outage", type=float, default=5.0, help="seconds the S3 server is down (default 5)")
    p.add_argument("--flips", type=int, default=100, help="random single-bit flips of the checkpoint (default 100)")
    a = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="faults-")
    ctx = {"tmp": tmp, "n_train": a.samples, "size": a.size, "outage_s": a.outage, "flips": a.flips}
    if "checkpoint" in a.only:
        scenario_checkpoint(ctx)
    ray_scenarios = [s for s in a.only if s != "checkpoint"]
    if not ray_scenarios:
        return 0
    import boto3
    import ray

    s3 = RestartableS3()
    s3.start()
    os.environ["AWS_ENDPOINT_URL"] = s3.endpoint
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket="faults")
    log(f"writing {a.samples} + 8 samples of {a.size}² to s3://faults/ds")
    root = write_dataset("s3://faults/ds", a.samples, 8, a.size)
    ray_temp = tempfile.mkdtemp(prefix="rf-", dir="/tmp")
    ray.init(  # the dashboard (for the state API) on a free port: 8265 may be another cluster's
        num_cpus=2, object_store_memory=400 * 2**20, _temp_dir=ray_temp, include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=free_port(), log_to_driver=True,
    )
    ctx |= {
        "s3": s3, "root": root, "ray_temp": ray_temp, "address": ray.get_runtime_context().gcs_address,
        "train_args": [
            "--config", TINY, f"data.uri={root}", f"data.image_size={a.size}", f"run.storage_path={Path(tmp) / 'runs'}",
            f"stages.0.epochs={EPOCHS}", "run.max_failures=3", "run.keep_checkpoints=20",
        ],
    }
    try:
        for name in ray_scenarios:
            SCENARIOS[name](ctx)
    finally:
        ray.shutdown()
        s3.stop()
    log(f"sections written to {REPORT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
