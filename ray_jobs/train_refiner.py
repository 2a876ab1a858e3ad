"""Train the learned full-resolution refiner (:mod:`matting_lib.refine`) on real mattes.

    python -m ray_jobs.train_refiner --config configs/refiner.yaml data.uri=DATASET data.backgrounds=BG_DIR
    # cross-validation: hold out one fold of prepare_data --folds, as the fold's base model does
    python -m ray_jobs.train_refiner --config configs/refiner.yaml data.uri=DATASET data.backgrounds=BG_DIR \\
        data.folds=data/cv1/folds.json data.fold=0 out=runs/refiner-fold0.pt

The refiner is small (about 15k parameters) and learns from full-size crops of the real photos,
with the truth degraded as a network's alpha is as its input (:mod:`matting_lib.refine.data`),
so it trains in one process on a CPU in minutes; no Ray cluster is needed, and the command is
the same through ``ray job submit --working-dir . -- python -m ray_jobs.train_refiner ...``.
Output: the refiner file ``out`` (:func:`matting_lib.checkpoint.save_refiner`) and
``<out>.history.json``. Serve it with a model:
``python -m ray_jobs.export --checkpoint models/base.pt --format checkpoint --refiner OUT --out models/base.pt``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from matting_lib import io
from matting_lib.checkpoint import save_refiner
from matting_lib.config import to_dict
from matting_lib.data.dataset import DatasetError, load_sample, read_split
from matting_lib.data.decode import ImageDecodeError, decode_image
from matting_lib.data.folds import read_folds
from matting_lib.foreground import estimate_foreground_ml
from matting_lib.refine.data import RefinerSampler
from matting_lib.refine.net import RefinerConfig
from matting_lib.refine.train import RefinerTrainConfig, fit_refiner
from ray_jobs.common import SetupError, fail, load_job_config


@dataclass(frozen=True)
class RefinerDataConfig:
    """Where the refiner's training photos come from."""

    uri: str = ""
    """Real photos with ground-truth alpha, in the seed format (local path, file:// or s3://)."""
    split: str = "train"
    """Split file listing the photos."""
    folds: str = ""
    """A ``folds.json`` of ``prepare_data --folds``; with ``fold``, that fold's photos are held out."""
    fold: int = -1
    """The fold held out (-1: train on every photo)."""
    backgrounds: str = ""
    """A folder of background photos to composite onto ("" = the real photos only)."""
    bg_exclude: tuple[str, ...] = ("cbsd68_*",)
    """Background file patterns never used (the Berkeley photos show subjects of their own)."""
    crop: int = 256
    """Full-size crop side."""
    composite_frac: float = 0.5
    """Share of crops composited onto a background photo."""
    negative_frac: float = 0.1
    """Share of crops that are a background photo alone (truth 0): empty mattes stay empty."""

    def __post_init__(self) -> None:
        if self.crop < 64:
            raise ValueError(f"data.crop must be >= 64, got {self.crop}")
        for name in ("composite_frac", "negative_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.fold >= 0 and not self.folds:
            raise ValueError("data.fold needs data.folds")


@dataclass(frozen=True)
class RefinerJobConfig:
    """The refiner training job: configs/refiner.yaml mirrors it."""

    model: RefinerConfig = field(default_factory=RefinerConfig)
    train: RefinerTrainConfig = field(default_factory=RefinerTrainConfig)
    data: RefinerDataConfig = field(default_factory=RefinerDataConfig)
    out: str = "runs/refiner/refiner.pt"
    """Where the trained refiner is written (local path or s3://)."""


def photo_names(cfg: RefinerDataConfig) -> list[str]:
    names = read_split(cfg.uri, cfg.split)
    if cfg.fold >= 0:
        pairs = read_folds(cfg.folds)
        if cfg.fold not in {k for _, k in pairs}:
            raise SetupError(f"data.fold {cfg.fold}: {cfg.folds} has folds {sorted({k for _, k in pairs})}")
        held = {n for n, k in pairs if k == cfg.fold}
        names = [n for n in names if n not in held]
    if not names:
        raise SetupError(f"no training photos left in split {cfg.split!r} of {cfg.uri}")
    return names


def load_backgrounds(cfg: RefinerDataConfig) -> list[np.ndarray]:
    if not cfg.backgrounds or cfg.composite_frac == cfg.negative_frac == 0:
        return []
    files = [f for f in sorted(io.listdir(cfg.backgrounds)) if not any(fnmatch.fnmatch(f, p) for p in cfg.bg_exclude)]
    out = []
    for f in files:
        try:
            out.append(decode_image(io.read_bytes(io.join(cfg.backgrounds, f)), name=f))
        except ImageDecodeError as e:
            print(f"skipping background {f}: {e}", flush=True)
    if not out:
        raise SetupError(f"data.backgrounds: no usable image in {cfg.backgrounds}")
    return out


def build_sampler(cfg: RefinerDataConfig, log=print) -> tuple[RefinerSampler, list[str]]:
    """Photos, their foreground estimates and the backgrounds, ready to draw crops from."""
    names = photo_names(cfg)
    images, alphas, fgs = [], [], []
    t0 = time.perf_counter()
    for n in names:
        s = load_sample(cfg.uri, n)
        a = s.alpha.astype(np.float32) / 255.0
        images.append(s.image)
        alphas.append(a)
        fgs.append(estimate_foreground_ml(s.image.astype(np.float32) / 255.0, a))
    bgs = load_backgrounds(cfg)
    log(f"{len(names)} photos ({', '.join(names)}), {len(bgs)} backgrounds, foregrounds estimated "
        f"in {time.perf_counter() - t0:.1f} s")
    return RefinerSampler(images, alphas, fgs, bgs, crop=cfg.crop, composite_frac=cfg.composite_frac if bgs else 0.0,
                          negative_frac=cfg.negative_frac if bgs else 0.0), names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML file (configs/refiner.yaml)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=300 data.fold=0")
    args = p.parse_intermixed_args(argv)  # overrides before and after --threads
    try:
        cfg: RefinerJobConfig = load_job_config(args.config, args.overrides, cls=RefinerJobConfig)
    except ValueError as e:  # the dataclasses' own range checks
        fail(f"config error: {e}", code=2)
    if not cfg.data.uri:
        fail("config error: data.uri: the real photos (seed format) are required", code=2)
    if not cfg.out.endswith(".pt"):
        fail(f"config error: out must end in .pt, got {cfg.out!r}", code=2)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sampler, names = build_sampler(cfg.data)
    except (SetupError, DatasetError, ValueError, OSError) as e:
        fail(str(e), code=2)
    t0 = time.perf_counter()
    model, history = fit_refiner(sampler, cfg.train, cfg.model, log=lambda m: print(m, flush=True))
    metrics = {"steps": cfg.train.steps, "final_loss": history[-1]["total"], "photos": len(names),
               "seconds": round(time.perf_counter() - t0, 1)}
    save_refiner(cfg.out, model, metrics)
    io.write_text(cfg.out + ".history.json", json.dumps({"config": to_dict(cfg), "photos": names, "history": history}, indent=1))
    print(f"wrote {cfg.out} ({sum(t.numel() for t in model.parameters())} parameters, "
          f"{metrics['seconds']:.0f} s, final loss {metrics['final_loss']:.4f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
