"""Training the edge refiner (plain torch, one process; small enough for a CPU).

    refiner, history = fit_refiner(sampler, RefinerTrainConfig(steps=3000))

Loss per batch, on the full-size output ``alpha = clip(up(A) . I + up(b))`` and the corrected
coarse alpha ``p``:
``L1(alpha, gt) + grad * SobelL1(alpha, gt) + coarse * L1(p, gt_lr)``, plus a small penalty
on the unclipped output beyond [-0.1, 1.1] (a clipped pixel far out of range has no gradient).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from matting_lib.losses import gradient_loss
from matting_lib.refine.data import RefinerSampler
from matting_lib.refine.net import EdgeRefiner, RefinerConfig, upsample_apply


@dataclass(frozen=True)
class RefinerTrainConfig:
    """Optimisation of :func:`fit_refiner`."""

    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 8
    """Crops per step."""
    lr: float = 2e-3
    """AdamW peak learning rate (cosine decay to 2% of it)."""
    grad_weight: float = 1.0
    """Weight of the Sobel-gradient L1 (sharp edges)."""
    coarse_weight: float = 0.5
    """Weight of the L1 on the corrected coarse alpha."""
    factor: tuple[float, float] = (2.0, 4.0)
    """Full-size / coarse scale factor, drawn per batch."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("RefinerTrainConfig: steps and batch_size must be >= 1")
        if not 1.0 <= self.factor[0] <= self.factor[1]:
            raise ValueError(f"RefinerTrainConfig.factor must be 1 <= lo <= hi, got {self.factor}")


def _batch(sampler: RefinerSampler, rng: np.random.Generator, n: int, factor: float) -> dict[str, torch.Tensor]:
    samples = [sampler.sample(rng, factor) for _ in range(n)]

    def img(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(s, key) for s in samples])).permute(0, 3, 1, 2).float().div_(255)

    def mat(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(s, key) for s in samples]))[:, None].float()

    return {"image": img("image"), "image_lr": img("image_lr"), "alpha": mat("alpha"), "alpha_lr": mat("alpha_lr"), "coarse": mat("coarse")}


def refiner_loss(model: EdgeRefiner, batch: dict[str, torch.Tensor], cfg: RefinerTrainConfig) -> dict[str, torch.Tensor]:
    """Loss terms as a dict with a ``total`` key."""
    coefficients, p = model(batch["image_lr"], batch["coarse"])
    raw = upsample_apply(coefficients, batch["image"])
    alpha = raw.clamp(0, 1)
    out = {
        "l1": (alpha - batch["alpha"]).abs().mean(),
        "grad": gradient_loss(alpha, batch["alpha"]),
        "coarse": (p - batch["alpha_lr"]).abs().mean(),
        "range": (torch.relu(raw - 1.1) + torch.relu(-0.1 - raw)).mean(),
    }
    out["total"] = out["l1"] + cfg.grad_weight * out["grad"] + cfg.coarse_weight * out["coarse"] + 0.1 * out["range"]
    return out


def fit_refiner(
    sampler: RefinerSampler,
    cfg: RefinerTrainConfig,
    model_config: RefinerConfig | None = None,
    model: EdgeRefiner | None = None,
    log: Callable[[str], None] = print,
    log_every: int = 100,
) -> tuple[EdgeRefiner, list[dict[str, float]]]:
    """Train a refiner (a new one, or ``model`` further); returns it in eval mode and the
    per-``log_every`` mean losses."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = model or EdgeRefiner(model_config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = _batch(sampler, rng, cfg.batch_size, float(rng.uniform(*cfg.factor)))
        losses = refiner_loss(model, batch, cfg)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if step % log_every == 0 or step == cfg.steps:
            n = log_every if step % log_every == 0 else step % log_every
            row = {"step": step, **{k: v / n for k, v in sums.items()}}
            history.append(row)
            sums = {}
            log(f"refiner step {step}/{cfg.steps}  loss {row['total']:.4f}  l1 {row['l1']:.4f}  grad {row['grad']:.4f}  "
                f"coarse {row['coarse']:.4f}  ({(time.perf_counter() - t0) / step:.2f} s/step)")
    return model.eval(), history
