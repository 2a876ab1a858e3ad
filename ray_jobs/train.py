"""Fine-tune a matting U-Net with Ray Train (DDP), streaming data from object storage.

    python -m ray_jobs.train --config configs/tiny.yaml data.uri=s3://bucket/datasets/x
    ray job submit --working-dir . -- python -m ray_jobs.train --config configs/base.yaml ...

Flow: the driver reads (or builds, in the run's folder: never in the dataset) the dataset
manifest and checks the splits (no ``val.txt``: a seeded 10% of the train rows validates); Ray Data
streams manifest rows through CPU tasks that fetch, decode and augment image/mask pairs
(nothing is copied to local disk); each TorchTrainer worker consumes its shard with
``iter_torch_batches`` and runs matting_lib's epoch loop. Rank 0 validates, and every epoch
a checkpoint in matting_lib's format is reported; Ray keeps the best N by validation SAD.
Relaunching with the same ``run.name`` resumes from the last checkpoint; a failed worker
group is restarted from it up to ``run.max_failures`` times.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from matting_lib import io
from matting_lib.checkpoint import CheckpointError, load_checkpoint, load_weights, parse_checkpoint, save_checkpoint
from matting_lib.config import TrainConfig, from_dict, to_dict
from matting_lib.data.samples import SampleLoader
from matting_lib.models import build_model
from matting_lib.training import TrainingRun, auto_log_every, evaluate, format_epoch, load_teacher, unwrap
from ray_jobs.common import fail, init_ray, job_parser, load_job_config, run_uri, storage_args, worker_env

CHECKPOINT_FILE = "model.pt"
# Rows per Ray Data decode/augment task; small keeps latency low and memory bounded.
ROWS_PER_TASK = 8
# Upper bound on the blocks of the row datasets (URIs only, a few KB): enough parallelism for the
# decode tasks of a large cluster, few enough that the per-epoch shuffle stays cheap.
MAX_BLOCKS = 64


# --------------------------------------------------------------------------- driver side


def load_rows(cfg: TrainConfig, manifest_dir: str = "") -> tuple[list[dict], list[dict], str]:
    """Manifest rows of the train and val splits; raises ValueError/OSError with a clear message.

    The manifest is ``data.manifest`` when set, the dataset's own ``manifest.jsonl`` when it has
    one, else built in ``manifest_dir`` (default: the run's folder): never written into the
    dataset (:func:`matting_lib.data.manifest.ensure_manifest`). Without validation rows (no
    ``val.txt``), a seeded :data:`~matting_lib.data.manifest.VAL_HOLDOUT_FRACTION` of the train
    rows is held out for validation, and the log says so.
    """
    from matting_lib.data.manifest import VAL_HOLDOUT_FRACTION, VAL_HOLDOUT_SEED, ensure_manifest, hold_out, read_manifest

    if not cfg.data.uri:
        raise ValueError("data.uri is empty: set it in the config or as data.uri=PATH_OR_S3_URI")
    if cfg.data.s3_endpoint_url:
        io.configure_s3(endpoint_url=cfg.data.s3_endpoint_url)
    if not cfg.data.manifest and not io.exists(io.join(cfg.data.uri, f"{cfg.data.train_split}.txt")) and not io.exists(io.join(cfg.data.uri, "manifest.jsonl")):
        raise FileNotFoundError(f"dataset not found: {cfg.data.uri} has no {cfg.data.train_split}.txt or manifest.jsonl")
    manifest = ensure_manifest(cfg.data.uri, cfg.data.manifest, out_dir=manifest_dir or run_uri(cfg.run.storage_path, cfg.run.name))
    train = read_manifest(manifest, split=cfg.data.train_split)
    val = [r for r in read_manifest(manifest) if r["split"] == cfg.data.val_split]
    if not val:
        train, val = hold_out(train, cfg.data.val_split)
        print(f"data: no {cfg.data.val_split!r} split ({cfg.data.val_split}.txt) in {cfg.data.manifest or cfg.data.uri}: "
              f"holding out {len(val)} of {len(train) + len(val)} {cfg.data.train_split!r} samples for validation "
              f"({VAL_HOLDOUT_FRACTION:.0%}, seed {VAL_HOLDOUT_SEED}; the same ones every run)", flush=True)
    return train, val, manifest


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
    :func:`load_rows`). Exits 2 with one clear line for a missing or empty dataset or an
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


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Local relative paths (init checkpoint, teacher, dataset, manifest) made absolute on the driver.

    Ray workers do not run in the driver's directory (unless the job ships a working_dir), so
    ``init_checkpoint: models/base.pt`` must be resolved where the user typed it.
    """
    def fix(uri: str) -> str:
        return os.path.abspath(uri) if uri and "://" not in uri else uri

    data = dataclasses.replace(cfg.data, uri=fix(cfg.data.uri), manifest=fix(cfg.data.manifest))
    distill = dataclasses.replace(cfg.distill, teacher=fix(cfg.distill.teacher))
    return dataclasses.replace(cfg, init_checkpoint=fix(cfg.init_checkpoint), data=data, distill=distill)


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    cfg: TrainConfig = absolute_paths(load_job_config(args.config, args.overrides))
    train_rows, val_rows, extra_env = prepare_data(cfg)
    init_ray(args.address, env=extra_env)
    trainer = make_trainer(cfg, build_datasets(cfg, train_rows, val_rows), env=extra_env)
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; show the cause plainly
        fail(f"training failed: {type(e).__name__}: {e}")
    if result.error is not None:
        fail(f"training failed: {result.error}")
    best_uri, metrics = export_best(result, cfg)
    if result.return_value:
        io.write_text(io.join(run_uri(cfg.run.storage_path, cfg.run.name), "history.json"), json.dumps(result.return_value, indent=1))
    print(f"finished in {time.perf_counter() - t0:.0f} s; run folder: {result.path}", flush=True)
    print(f"best checkpoint (val SAD {metrics.get('val_sad', float('nan')):.4f}, epoch {int(metrics.get('epoch', -1)) + 1}): {best_uri}", flush=True)
    return 0


# --------------------------------------------------------------------------- worker side


def _maybe_inject_failure(epoch: int, rank: int):
    """Test hook: ``MATTING_FAIL_ONCE=epoch:step:marker`` raises once on rank 1 (or 0 if alone)."""
    spec = os.environ.get("MATTING_FAIL_ONCE")
    if not spec:
        return None
    e, s, marker = spec.split(":", 2)
    world = int(os.environ.get("WORLD_SIZE", "1"))

    def hook(step: int) -> None:
        if epoch == int(e) and step == int(s) and rank == min(1, world - 1) and not os.path.exists(marker):
            Path(marker).write_text("failed once\n")
            raise RuntimeError(f"injected worker failure at epoch {epoch}, step {step}")

    return hook


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
        stats = run.train_epoch(epoch, batches, step_hook=_maybe_inject_failure(epoch, rank), **progress)
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


if __name__ == "__main__":
    sys.exit(main())
