"""Train on one GPU (or the CPU) without Ray: same config, data and checkpoints as ray_jobs.train.

    python -m ray_jobs.train_local --config configs/base.yaml data.uri=data/composites
    python -m ray_jobs.train_local --config configs/lowlight.yaml data.uri=... init_checkpoint=models/base.pt

For a single machine with one GPU and no Ray cluster (a workstation, a rented GPU box). It
never imports Ray. The epochs are :func:`matting_lib.training.fit`, the loop every Ray Train
worker runs too; a torch ``DataLoader`` with worker processes fetches, decodes and augments
the manifest rows with :class:`matting_lib.data.samples.SampleLoader`, the code Ray Data's
tasks run. So a config trains the same way here and on a cluster, minus DDP.

Output, under ``<run.storage_path>/<run.name>/``: ``best.pt`` (lowest validation SAD, in
the project's checkpoint format), ``best.pt.last`` (the latest epoch with optimizer state;
running the same command again resumes from it) and ``history.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch

from matting_lib import io
from matting_lib.checkpoint import CheckpointError, data_fingerprint, load_checkpoint, load_weights
from matting_lib.config import TrainConfig
from matting_lib.data.samples import SampleLoader, fetch_pair, split_loaders
from matting_lib.nets import build_model
from matting_lib.inference.predictor import resolve_device
from matting_lib.training import auto_log_every, fit, load_teacher
from ray_jobs.run_data import absolute_paths, load_rows
from matting_lib.io import run_uri
from ray_jobs.common import fail, load_job_config


class RowsDataset(torch.utils.data.Dataset):
    """Manifest rows -> network-ready samples (one row per item)."""

    def __init__(self, rows: Sequence[dict], loader: SampleLoader) -> None:
        self.rows = list(rows)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        out = self.loader.one(*fetch_pair(self.rows[i]))
        return {k: torch.from_numpy(v) for k, v in out.items()}


def _seed_worker(worker_id: int) -> None:
    """Each DataLoader worker gets its own augmentation and simulation streams.

    Workers are forked copies: without this, all of them would draw the same random crops.
    torch gives each worker of each epoch a different seed (derived from the run's seed).
    """
    import cv2

    cv2.setNumThreads(1)
    info = torch.utils.data.get_worker_info()
    ds: RowsDataset = info.dataset
    ds.loader = dataclasses.replace(ds.loader, seed=int(info.seed % 2**32))


def make_loaders(cfg: TrainConfig, train_rows: list[dict], val_rows: list[dict], workers: int, device: torch.device):
    """(train_batches(epoch), val_batches()) for :func:`fit`."""
    train_loader, val_loader = split_loaders(cfg.data, seed=cfg.run.seed)
    train_ds, val_ds = RowsDataset(train_rows, train_loader), RowsDataset(val_rows, val_loader)
    common: dict[str, Any] = dict(batch_size=cfg.data.batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    if workers > 0:
        common.update(worker_init_fn=_seed_worker, prefetch_factor=4)
    # Drop a last partial batch only when there is more than one: batch norm and a batch of 1 do not mix.
    drop_last = len(train_rows) > cfg.data.batch_size
    gen = torch.Generator().manual_seed(cfg.run.seed)

    def train_batches(epoch: int):
        gen.manual_seed(cfg.run.seed * 100_003 + epoch)  # a resumed run shuffles epoch k as the first run did
        return torch.utils.data.DataLoader(train_ds, shuffle=True, drop_last=drop_last, generator=gen, **common)

    def val_batches():
        return torch.utils.data.DataLoader(val_ds, shuffle=False, **common)

    return train_batches, val_batches


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.train_local", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML config under configs/")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: CPU count - 1, at most 16; 0 = in the main process)")
    p.add_argument("--log-every", type=int, default=-1,
                   help="a progress line every N steps (default: about 20 per epoch; 0: once per epoch)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.0.epochs=10 data.uri=s3://bucket/ds")
    return p.parse_intermixed_args(argv)  # overrides may come before and after options


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg: TrainConfig = absolute_paths(load_job_config(args.config, args.overrides))
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        fail(f"--device {args.device}: {e} (use --device cpu or auto)", code=2)
    workers = args.workers if args.workers is not None else max(0, min(16, (os.cpu_count() or 1) - 1))
    if workers < 0:
        fail(f"--workers must be >= 0, got {workers}", code=2)
    try:
        train_rows, val_rows, manifest = load_rows(cfg)
    except (ValueError, OSError) as e:
        fail(str(e), code=2)
    if not train_rows or not val_rows:
        fail(f"{manifest}: needs both splits, got {len(train_rows)} train and {len(val_rows)} val rows", code=2)
    fingerprint = data_fingerprint(train_rows + val_rows)
    print(f"data: {manifest}: {len(train_rows)} train / {len(val_rows)} val samples ({fingerprint})", flush=True)

    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    model = build_model(cfg.model)
    out_dir = run_uri(cfg.run.storage_path, cfg.run.name)
    best_uri = io.join(out_dir, "best.pt")
    resuming = io.exists(best_uri + ".last")
    if cfg.init_checkpoint and not resuming:
        try:
            report = load_weights(model, load_checkpoint(cfg.init_checkpoint).state_dict, strict=False)
        except CheckpointError as e:
            fail(f"init_checkpoint: {e}", code=2)
        print(f"init from {cfg.init_checkpoint}: {report.summary()}; skipped: {list(report.skipped)[:8]}", flush=True)
    try:
        teacher = load_teacher(cfg)
    except CheckpointError as e:
        fail(f"distill.teacher: {e}", code=2)
    if teacher is not None:
        print(f"distilling from {cfg.distill.teacher} (weight {cfg.distill.weight:g})", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest kernels once
        print(f"device: {torch.cuda.get_device_name(device)}", flush=True)
    print(f"training {cfg.total_epochs} epochs on {device} with {workers} loader workers -> {best_uri}", flush=True)

    train_batches, val_batches = make_loaders(cfg, train_rows, val_rows, workers, device)
    steps_per_epoch = len(train_batches(0))
    log_every = auto_log_every(steps_per_epoch) if args.log_every < 0 else args.log_every
    print(f"{steps_per_epoch} steps per epoch of {cfg.data.batch_size} samples", flush=True)
    t0 = time.perf_counter()
    try:
        history = fit(model, cfg, train_batches, val_batches, device=device, checkpoint_uri=best_uri,
                      log=lambda s: print(s, flush=True), log_every=log_every, data_fingerprint=fingerprint,
                      teacher=teacher, steps_per_epoch=steps_per_epoch)
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to resume from {best_uri}.last", code=130)
    io.write_text(io.join(out_dir, "history.json"), json.dumps(history, indent=1, default=float))
    best = min(history, key=lambda r: r.get("val_sad", float("inf")), default={})
    print(f"finished in {time.perf_counter() - t0:.0f} s", flush=True)
    if best:
        print(f"best checkpoint (val SAD {best['val_sad']:.4f}, epoch {int(best['epoch']) + 1}): {best_uri}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
