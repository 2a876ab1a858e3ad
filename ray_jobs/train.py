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

import json
import sys
import time

from matting_lib import io
from matting_lib.config import TrainConfig
from ray_jobs.run_data import absolute_paths
from matting_lib.io import run_uri
from ray_jobs.common import fail, init_ray, job_parser, load_job_config
from ray_jobs.trainer import export_best, make_trainer, prepare_data


def run_training(cfg: TrainConfig, address: str | None = None) -> tuple[str, dict, float]:
    """Train ``cfg`` on the cluster at ``address`` (see :func:`ray_jobs.common.init_ray`): returns the
    best checkpoint's URI, its metrics and the seconds it took. Exits with one clear line on failure."""
    cfg = absolute_paths(cfg)
    data = prepare_data(cfg)
    init_ray(address, env=data.env)
    trainer = make_trainer(cfg, data)
    t0 = time.perf_counter()
    again = f"; relaunch the same command (run.name={cfg.run.name}) to resume from its last checkpoint"
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; show the cause plainly
        fail(f"training failed: {type(e).__name__}: {e}{again}")
    if result.error is not None:
        fail(f"training failed: {result.error}{again}")
    best_uri, metrics = export_best(result, cfg)
    if result.return_value:
        io.write_text(io.join(run_uri(cfg.run.storage_path, cfg.run.name), "history.json"), json.dumps(result.return_value, indent=1))
    seconds = time.perf_counter() - t0
    print(f"finished in {seconds:.0f} s; run folder: {result.path}", flush=True)
    print(f"best checkpoint (val SAD {metrics.get('val_sad', float('nan')):.4f}, epoch {int(metrics.get('epoch', -1)) + 1}): {best_uri}", flush=True)
    return best_uri, metrics, seconds


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    run_training(load_job_config(args.config, args.overrides), args.address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
