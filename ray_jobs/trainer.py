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
from pathlib import Path
from typing import Any

import torch

from matting_lib import io
from matting_lib.checkpoint import CheckpointError, load_checkpoint, load_weights, parse_checkpoint, save_checkpoint
from matting_lib.config import TrainConfig, from_dict, to_dict
from matting_lib.data.samples import SampleLoader
from matting_lib.nets import build_model
from matting_lib.training import TrainingRun, auto_log_every, evaluate, format_epoch, load_teacher, unwrap
from matting_lib.data.manifest import load_rows
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
    train_loader = SampleLoader(
        size=cfg.data.image_size, augment=cfg.data.augment, train=True,
        lowlight_sim_prob=cfg.data.lowlight_sim_prob, s3_endpoint_url=cfg.data.s3_endpoint_url,
    )
    val_loader = SampleLoader(size=cfg.data.image_size, augment="none", train=False, s3_endpoint_url=cfg.data.s3_endpoint_url)
    # The shuffle's tasks take 1 CPU unless told: with fractional workers that can starve (hang) a small cluster.
    train_ds = rows_ds(train_rows).random_shuffle(seed=None, num_cpus=cfg.scaling.data_cpus).map_batches(train_loader, **common)
    val_ds = rows_ds(val_rows).map_batches(val_loader, **common)
    return {"train": train_ds, "val": val_ds}


def make_trainer(cfg: TrainConfig, datasets: dict[str, Any], env: dict[str, str] | None = None, callbacks: list | None = None):
    """A TorchTrainer for ``cfg``; ``callbacks`` (Ray Train ``UserCallback``s) go to its RunConfig,
    e.g. Tune's ``TuneReportCallback`` when a sweep trial runs it."""
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
        worker_runtime_env={"env_vars": worker_env(env)},
        callbacks=callbacks,
        **storage_args(cfg.run.storage_path, cfg.data.s3_endpoint_url),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg)},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
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


def prepare_data(cfg: TrainConfig, manifest_dir: str = "") -> tuple[list[dict], list[dict], dict[str, str]]:
    """Driver-side checks before Ray starts: the rows of both splits and the env vars workers need.

    ``manifest_dir``: where a manifest built for the run goes (default: the run's folder; see
    :func:`matting_lib.data.manifest.load_rows`). Exits 2 with one clear line for a missing or empty dataset or an
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
    # A per-step cosine spreads over each worker's steps: its shard of the train rows in batches.
    per_worker = math.ceil(len(train_rows) / max(1, cfg.scaling.num_workers))
    extra_env = {"MATTING_DATA_FINGERPRINT": fingerprint,
                 "MATTING_STEPS_PER_EPOCH": str(math.ceil(per_worker / cfg.data.batch_size))}
    if cfg.data.s3_endpoint_url:
        extra_env["AWS_ENDPOINT_URL"] = cfg.data.s3_endpoint_url
    return train_rows, val_rows, extra_env


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
                      steps_per_epoch=int(os.environ.get("MATTING_STEPS_PER_EPOCH", "0")))
    run.restore(training_state)
    if rank == 0 and training_state:
        print(f"resuming at epoch {run.next_epoch + 1}/{cfg.total_epochs}", flush=True)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    fingerprint = os.environ.get("MATTING_DATA_FINGERPRINT", "")

    for epoch in run.epochs():
        batches = train_shard.iter_torch_batches(batch_size=cfg.data.batch_size, dtypes=torch.float32, drop_last=False)
        progress = dict(log=lambda line: print(line, flush=True), log_every=auto_log_every(run.steps_per_epoch)) if rank == 0 else {}
        stats = run.train_epoch(epoch, batches, **progress)
        val = None
        if rank == 0:
            val_batches = val_shard.iter_torch_batches(batch_size=cfg.data.batch_size, dtypes=torch.float32)
            # The bare module: DDP's forward broadcasts buffers, a collective the other ranks skip.
            val = evaluate(unwrap(run.model), val_batches, cfg.loss, device=device, precision=run.precision)
        val = _broadcast(val)
        metrics = stats | {f"val_{k}": v for k, v in val.items()}
        row = run.end_epoch(epoch, metrics)
        if rank == 0:
            print(format_epoch({**row, **val}, cfg.total_epochs), flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(
                    os.path.join(tmp, CHECKPOINT_FILE), run.model, train_config=cfg,
                    metrics=row, data_fingerprint=fingerprint, training_state=run.training_state(),
                )
                ray.train.report(_numeric(row), checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(_numeric(row))
    return run.history if rank == 0 else None


def _numeric(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

