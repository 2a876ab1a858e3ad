"""A training run's data, on the driver: the config's paths made absolute, the rows of both splits.

Both training jobs (:mod:`ray_jobs.train` with Ray, :mod:`ray_jobs.train_local` without) and
the sweeps read their data through :func:`load_rows`, so every job validates on the same rows:
a dataset without a validation split gets the seeded hold-out of
:func:`matting_lib.data.manifest.hold_out`, and the log says so.
"""

from __future__ import annotations

import dataclasses
import os

from matting_lib import io
from matting_lib.config import TrainConfig
from matting_lib.data.manifest import VAL_HOLDOUT_FRACTION, VAL_HOLDOUT_SEED, ensure_manifest, hold_out, read_manifest


def load_rows(cfg: TrainConfig, manifest_dir: str = "") -> tuple[list[dict], list[dict], str]:
    """Manifest rows of the train and val splits; raises ValueError/OSError with a clear message.

    The manifest is ``data.manifest`` when set, the dataset's own ``manifest.jsonl`` when it has
    one, else built in ``manifest_dir`` (default: the run's folder): never written into the
    dataset (:func:`matting_lib.data.manifest.ensure_manifest`). Without validation rows (no
    ``val.txt``), a seeded :data:`VAL_HOLDOUT_FRACTION` of the train
    rows is held out for validation, and the log says so.
    """
    if not cfg.data.uri:
        raise ValueError("data.uri is empty: set it in the config or as data.uri=PATH_OR_S3_URI")
    if cfg.data.s3_endpoint_url:
        io.configure_s3(endpoint_url=cfg.data.s3_endpoint_url)
    if not cfg.data.manifest and not io.exists(io.join(cfg.data.uri, f"{cfg.data.train_split}.txt")) and not io.exists(io.join(cfg.data.uri, "manifest.jsonl")):
        raise FileNotFoundError(f"dataset not found: {cfg.data.uri} has no {cfg.data.train_split}.txt or manifest.jsonl")
    manifest = ensure_manifest(cfg.data.uri, cfg.data.manifest, out_dir=manifest_dir or io.run_uri(cfg.run.storage_path, cfg.run.name))
    train = read_manifest(manifest, split=cfg.data.train_split)
    val = [r for r in read_manifest(manifest) if r["split"] == cfg.data.val_split]
    if not val:
        train, val = hold_out(train, cfg.data.val_split)
        print(f"data: no {cfg.data.val_split!r} split ({cfg.data.val_split}.txt) in {cfg.data.manifest or cfg.data.uri}: "
              f"holding out {len(val)} of {len(train) + len(val)} {cfg.data.train_split!r} samples for validation "
              f"({VAL_HOLDOUT_FRACTION:.0%}, seed {VAL_HOLDOUT_SEED}; the same ones every run)", flush=True)
    return train, val, manifest


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
