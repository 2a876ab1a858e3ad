"""Ray Train pieces shared by the training and tuning jobs: datasets, the trainer, its worker loop.

:mod:`ray_jobs.train` (one run) and :mod:`ray_jobs.tune` (a sweep of runs) both build their
runs from these; neither job imports the other. The flow is the one described in
:mod:`ray_jobs.train`: driver-side checks (:func:`prepare_data`), Ray Data streaming decoded,
augmented pairs (:func:`build_datasets`), a TorchTrainer running :func:`train_loop_per_worker`
(:func:`make_trainer`), and the best checkpoint copied out (:func:`export_best`).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from matting_lib import io
from matting_lib.checkpoint import CheckpointError, load_checkpoint, load_weights, parse_checkpoint, save_checkpoint
from matting_lib.config import TrainConfig, from_dict, to_dict
from matting_lib.data.samples import split_loaders
from matting_lib.nets import build_model
from matting_lib.training import TrainingRun, auto_log_every, evaluate, load_teacher, run_epochs
from ray_jobs.run_data import load_rows
from matting_lib.io import run_uri
from ray_jobs.common import fail, storage_args, worker_env

CHECKPOINT_FILE = "model.pt"
# Rows per Ray Data decode/augment task; small keeps latency low and memory bounded.
ROWS_PER_TASK = 8
# Upper bound on the blocks of the row datasets (URIs only, a few KB): enough parallelism for the
# decode tasks of a large cluster, few enough that the per-epoch shuffle stays cheap.
MAX_BLOCKS = 64


# --------------------------------------------------------------------------- driver side


def build_datasets(cfg: TrainConfig, train_rows: list[dict], val_rows: list[dict]) -> dict[str, Any]:
    """Ray Datasets that stream decoded, augmented samples (lazily, per epoch)."""
    import ray.data

    # Progress bars redraw thousands of times per epoch; in `ray job logs` or a log file
    # they only bury the per-epoch lines, so show them on a terminal only.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()

    def rows_ds(rows: list[dict]) -> "ray.data.Dataset":
        items = [{"image_uri": r["image_uri"], "mask_uri": r["mask_uri"]} for r in rows]
        # Blocks of about one decode task's rows, at most MAX_BLOCKS: the shuffle runs two tasks
        # per block every epoch, and one block per row cost 13 s per epoch of 9 rows on 2 cores.
        return ray.data.from_items(items, override_num_blocks=max(1, min(math.ceil(len(items) / ROWS_PER_TASK), MAX_BLOCKS)))

    common = dict(batch_size=ROWS_PER_TASK, batch_format="numpy", num_cpus=cfg.scaling.data_cpus, compute=ray.data.TaskPoolStrategy())
    train_loader, val_loader = split_loaders(cfg.data)
    # The shuffle's tasks take 1 CPU unless told: with fractional workers that can starve (hang) a small cluster.
    train_ds = rows_ds(train_rows).random_shuffle(seed=None, num_cpus=cfg.scaling.data_cpus).map_batches(train_loader, **common)
    val_ds = rows_ds(val_rows).map_batches(val_loader, **common)
    return {"train": train_ds, "val": val_ds}


def make_trainer(cfg: TrainConfig, data: RunData, callbacks: list | None = None):
    """A TorchTrainer for ``cfg`` on ``data`` (its Ray Datasets: :func:`build_datasets`); ``callbacks``
    (Ray Train ``UserCallback``s) go to its RunConfig, e.g. Tune's ``TuneReportCallback`` when a
    sweep trial runs it. The workers get the config, the data's fingerprint and their steps per
    epoch in ``train_loop_config``; ``data.env`` becomes their environment (S3 settings)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = ray.train.ScalingConfig(
        num_workers=cfg.scaling.num_workers,
        use_gpu=cfg.scaling.use_gpu,
        resources_per_worker={"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": 1} if cfg.scaling.use_gpu else {}),
    )
    run_config = ray.train.RunConfig(
        name=cfg.run.name,
        failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.run.keep_checkpoints, checkpoint_score_attribute="val_sad", checkpoint_score_order="min"
        ),
        worker_runtime_env={"env_vars": worker_env(data.env)},
        callbacks=callbacks,
        **storage_args(cfg.run.storage_path, cfg.data.s3_endpoint_url),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg), "data_fingerprint": data.fingerprint,
                           "steps_per_epoch": steps_per_worker_epoch(cfg, len(data.train_rows))},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
        datasets=build_datasets(cfg, data.train_rows, data.val_rows),
        # One worker reads the whole training set: it iterates it itself instead of through a
        # streaming-split coordinator, an actor (and a process, ~3 s of CPU to start) per run.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"] if cfg.scaling.num_workers > 1 else []),
    )


def export_best(result: Any, cfg: TrainConfig) -> tuple[str, dict]:
    """Copy the best checkpoint (lowest val SAD) to ``<storage>/<name>/best.pt``, weights only."""
    candidates = result.best_checkpoints or ([(result.checkpoint, result.metrics)] if result.checkpoint else [])
    if not candidates:
        raise RuntimeError("training finished without reporting a checkpoint")
    ckpt, metrics = min(candidates, key=lambda cm: cm[1].get("val_sad", float("inf")))
    with ckpt.as_directory() as d:
        loaded = parse_checkpoint(Path(d, CHECKPOINT_FILE).read_bytes(), source=f"{ckpt.path}/{CHECKPOINT_FILE}")
    model = loaded.build_model()
    uri = io.join(run_uri(cfg.run.storage_path, cfg.run.name), "best.pt")
    save_checkpoint(uri, model, train_config=loaded.train_config, metrics=loaded.metrics, data_fingerprint=loaded.data_fingerprint)
    return uri, metrics


@dataclass(frozen=True)
class RunData:
    """What the driver checked before Ray starts: the rows of both splits, their fingerprint
    (:func:`matting_lib.checkpoint.data_fingerprint`, recorded in every checkpoint) and the
    environment the workers need (the S3 endpoint)."""

    train_rows: list[dict]
    val_rows: list[dict]
    fingerprint: str
    env: dict[str, str]


def steps_per_worker_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Optimizer steps of one worker's epoch: its shard of the ``n_train`` rows in batches (what a
    per-step cosine spreads over). From the run's own config, so a sweep trial's batch size counts."""
    per_worker = math.ceil(n_train / max(1, cfg.scaling.num_workers))
    return math.ceil(per_worker / cfg.data.batch_size)


def prepare_data(cfg: TrainConfig, manifest_dir: str = "") -> RunData:
    """Driver-side checks before Ray starts: the rows of both splits and what the workers need.

    ``manifest_dir``: where a manifest built for the run goes (default: the run's folder; see
    :func:`ray_jobs.run_data.load_rows`). Exits 2 with one clear line for a missing or empty dataset or an
    unreadable init checkpoint.
    """
    try:
        train_rows, val_rows, manifest = load_rows(cfg, manifest_dir)
    except (ValueError, OSError) as e:
        fail(str(e), code=2)
    from matting_lib.checkpoint import data_fingerprint

    fingerprint = data_fingerprint(train_rows + val_rows)
    print(f"data: {manifest}: {len(train_rows)} train / {len(val_rows)} val samples ({fingerprint})", flush=True)
    for key, uri in (("init_checkpoint", cfg.init_checkpoint), ("distill.teacher", cfg.distill.teacher)):
        if uri:
            try:
                load_checkpoint(uri)
            except CheckpointError as e:
                fail(f"{key}: {e}", code=2)
    env = {"AWS_ENDPOINT_URL": cfg.data.s3_endpoint_url} if cfg.data.s3_endpoint_url else {}
    return RunData(train_rows, val_rows, fingerprint, env)


# --------------------------------------------------------------------------- worker side


def _broadcast(obj: Any) -> Any:
    """Rank 0's object on every rank (all ranks must report the same metrics keys)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_loop_per_worker(loop_config: dict) -> list[dict] | None:
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = from_dict(TrainConfig, loop_config["config"])
    if cfg.data.s3_endpoint_url:
        io.configure_s3(endpoint_url=cfg.data.s3_endpoint_url)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.run.seed + rank)
    device = ray.train.torch.get_device()

    model = build_model(cfg.model)
    resume = ray.train.get_checkpoint()
    training_state = None
    if resume is not None:
        with resume.as_directory() as d:
            ck = parse_checkpoint(Path(d, CHECKPOINT_FILE).read_bytes(), source=str(resume.path))
        load_weights(model, ck.state_dict, strict=True)
        training_state = ck.training_state
    elif cfg.init_checkpoint:
        report = load_weights(model, load_checkpoint(cfg.init_checkpoint).state_dict, strict=False)
        if rank == 0:
            print(f"init from {cfg.init_checkpoint}: {report.summary()}; skipped: {list(report.skipped)[:8]}", flush=True)

    teacher = load_teacher(cfg)
    if rank == 0 and teacher is not None:
        print(f"distilling from {cfg.distill.teacher} (weight {cfg.distill.weight:g})", flush=True)
    run = TrainingRun(model, cfg, device, wrap=ray.train.torch.prepare_model, teacher=teacher,
                      steps_per_epoch=int(loop_config["steps_per_epoch"]))
    run.restore(training_state)
    if rank == 0 and training_state:
        print(f"resuming at epoch {run.next_epoch + 1}/{cfg.total_epochs}", flush=True)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    fingerprint = loop_config["data_fingerprint"]

    def train_batches(epoch: int) -> Any:
        return train_shard.iter_torch_batches(batch_size=cfg.data.batch_size, dtypes=torch.float32, drop_last=False)

    def validate(model: torch.nn.Module) -> dict[str, float]:
        """Rank 0 validates (``model`` is the bare module: DDP's forward broadcasts buffers, a
        collective the other ranks would skip); every rank gets its result."""
        val = None
        if rank == 0:
            val_batches = val_shard.iter_torch_batches(batch_size=cfg.data.batch_size, dtypes=torch.float32)
            val = evaluate(model, val_batches, cfg.loss, device=device, precision=run.precision)
        return _broadcast(val)

    def report(row: dict) -> None:
        """Every rank reports the epoch to Ray Train; rank 0 with the checkpoint."""
        if rank != 0:
            ray.train.report(_numeric(row))
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(
                os.path.join(tmp, CHECKPOINT_FILE), run.model, train_config=cfg,
                metrics=row, data_fingerprint=fingerprint, training_state=run.training_state(),
            )
            ray.train.report(_numeric(row), checkpoint=ray.train.Checkpoint.from_directory(tmp))

    log = (lambda line: print(line, flush=True)) if rank == 0 else None
    history = run_epochs(run, train_batches, validate, report, log=log, log_every=auto_log_every(run.steps_per_epoch))
    return history if rank == 0 else None


def _numeric(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
