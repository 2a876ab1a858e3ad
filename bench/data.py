"""Training throughput: the data pipeline alone against the model step alone.

    python -m bench.data --data ../shared/data/alphamatting [--sizes 320 512] [--samples 96]

The question: can Ray Data feed the trainer? Measured on this machine, side by side in one run:

- **pipeline**: the training job's own Ray Data pipeline (``ray_jobs.trainer.build_datasets``)
  reading from a real S3 protocol server on loopback (moto): fetch from S3, decode, augment,
  batch, collate to torch, consumed with ``iter_torch_batches`` as a worker does. Samples/s.
- **step**: the model from ``configs/base.yaml`` alone on random tensors of the same shape:
  forward, loss (the config's weights), backward, optimizer step. Samples/s.

The pipeline must deliver at least twice the step's rate, or it is the bottleneck. Figures are
medians over repeated passes after a warm-up pass, and go to ``bench/RESULTS.md``
("Training data pipeline"). No data is written to the repository; ``--data`` is read and
uploaded to the loopback bucket only.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

ROOT = Path(__file__).resolve().parents[1]


def upload_dataset(src: str, bucket: str, n: int) -> str:
    """Copy up to ``n`` pairs of a seed-format dataset to ``s3://bucket/ds``, all in split 'train'."""
    from matting_lib import io
    from matting_lib.data.dataset import find_image, mask_uri, read_split

    names = read_split(src, "train")
    names = (names * (n // max(1, len(names)) + 1))[:n] if names else []
    if not names:
        raise SystemExit(f"error: {src} has no train.txt samples")
    root = f"s3://{bucket}/ds"
    uploaded: list[str] = []
    for i, name in enumerate(names):
        img = find_image(src, name)
        ext = img.rsplit(".", 1)[-1]
        stem = f"s{i:04d}"
        io.write_bytes(io.join(root, "images", f"{stem}.{ext}"), io.read_bytes(img))
        io.write_bytes(io.join(root, "masks", f"{stem}.png"), io.read_bytes(mask_uri(src, name)))
        uploaded.append(stem)
    io.write_text(io.join(root, "train.txt"), "\n".join(uploaded) + "\n")
    io.write_text(io.join(root, "val.txt"), uploaded[0] + "\n")
    return root


def pipeline_rate(cfg, rows: list[dict], passes: int) -> float:
    """Samples/s of fetch -> decode -> augment -> torch batches, median over ``passes``."""
    import torch

    from ray_jobs.trainer import build_datasets

    ds = build_datasets(cfg, rows, rows[:1])["train"]
    rates = []
    for p in range(passes + 1):  # pass 0 warms up workers and imports
        t0, n = time.perf_counter(), 0
        for batch in ds.iter_torch_batches(batch_size=cfg.data.batch_size, dtypes=torch.float32):
            n += batch["image"].shape[0]
        dt = time.perf_counter() - t0
        if p:
            rates.append(n / dt)
        print(f"  pipeline {cfg.data.image_size}px pass {p}: {n} samples, {n / dt:.1f}/s{' (warm-up)' if not p else ''}", flush=True)
    return statistics.median(rates)


def step_rate(cfg, steps: int) -> float:
    """Samples/s of forward + loss + backward + optimizer step on random batches, median per step."""
    import torch

    from matting_lib.losses import matting_loss
    from matting_lib.nets import build_model
    from matting_lib.training import build_optimizer

    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    opt = build_optimizer(model, cfg.stages[0], cfg.optim)
    b, s = cfg.data.batch_size, cfg.data.image_size
    image, alpha = torch.rand(b, 3, s, s), torch.rand(b, 1, s, s)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = matting_loss(model(image), alpha, cfg.loss, image=image)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    rate = b / statistics.median(times)
    print(f"  step {s}px: batch {b}, {rate:.1f} samples/s", flush=True)
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "alphamatting"), help="seed-format dataset to stream (uploaded to a loopback S3 server)")
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 512])
    p.add_argument("--samples", type=int, default=96, help="samples per pipeline pass")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)

    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    from bench.results import markdown_table, update_results
    from serve_app.run import free_port
    from matting_lib.config import load_config
    from matting_lib.data.manifest import ensure_manifest, read_manifest

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
        t0 = time.perf_counter()
        root = upload_dataset(args.data, "bench", args.samples)
        rows = read_manifest(ensure_manifest(root, progress=False), split="train")
        print(f"uploaded {len(rows)} pairs from {args.data} to {root} in {time.perf_counter() - t0:.1f} s", flush=True)
        ray.init(
            num_cpus=os.cpu_count(), object_store_memory=512 * 2**20, include_dashboard=False,
            _node_ip_address="127.0.0.1", log_to_driver=False,
            runtime_env={"env_vars": {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}},
        )
        table = []
        for size in args.sizes:
            cfg = load_config(ROOT / "configs" / "base.yaml", [f"data.image_size={size}", f"data.batch_size={args.batch_size}", f"data.uri={root}"])
            pipe = pipeline_rate(cfg, rows, args.passes)
            step = step_rate(cfg, args.steps)
            table.append([f"{size}²", pipe, step, pipe / step, "yes" if pipe >= 2 * step else "NO"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
        server.stop()
    md = (
        f"Data: {args.samples} real photo/alpha pairs streamed from a moto S3 server on loopback "
        f"(`--data` {Path(args.data).name}), the training job's Ray Data pipeline with `augment: standard`, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs for everything. Step: `configs/base.yaml`'s model "
        f"(fp32 on CPU), forward + loss + backward + AdamW step.\n\n"
        + markdown_table(["size", "pipeline samples/s", "model step samples/s", "pipeline / step", ">= 2x?"], table)
    )
    print(md)
    if not args.no_write:
        print(f"written to {update_results('Training data pipeline', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
