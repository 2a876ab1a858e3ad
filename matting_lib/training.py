"""Ray-free training building blocks: one epoch, evaluation, optimizer and schedule.

They run on one GPU or a CPU as they are; ``ray_jobs.train`` wraps them for DDP.
A batch is a mapping with

    image (B, 3, H, W) float in [0, 1]
    alpha (B, 1, H, W) float in [0, 1]
    fg, bg (B, 3, H, W) optional, for the composition loss

Precision: on CUDA, bf16 autocast where supported (no scaler needed), otherwise fp16
with a GradScaler; always fp32 on CPU.
"""

from __future__ import annotations

import dataclasses

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from matting_lib import metrics as M
from matting_lib.config import LossConfig, OptimConfig, StageConfig
from matting_lib.losses import matting_loss
from matting_lib.nets.finetune import param_groups, set_trainable

Batch = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """Resolved mixed-precision settings for a device."""

    enabled: bool
    dtype: torch.dtype
    use_scaler: bool

    def autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, dtype=self.dtype, enabled=self.enabled)

    def make_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type, enabled=self.use_scaler)


def resolve_precision(mode: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA if supported, else fp16 + scaler; fp32 on CPU. ``off``: fp32."""
    if device.type != "cuda" or mode == "off":
        return Precision(False, torch.float32, False)
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        return Precision(True, torch.bfloat16, False)
    if mode == "fp16":
        return Precision(True, torch.float16, True)
    raise ValueError(f"optim.amp: unknown mode {mode!r} (auto, off, bf16, fp16)")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- optimizer / schedule


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying model of a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_optimizer(model: nn.Module, stage: StageConfig, optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam/AdamW over layer-wise parameter groups (encoder at ``stage.encoder_lr``)."""
    enc_lr = stage.encoder_lr if stage.encoder_lr is not None else stage.lr
    groups = param_groups(unwrap(model), lr=stage.lr, encoder_lr=enc_lr, weight_decay=optim.weight_decay)
    if not groups:
        raise ValueError(f"stage {stage.name!r}: no trainable parameters")
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim.optimizer]
    return cls(groups, lr=stage.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, epochs: int,
                    steps_per_epoch: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch schedule over ``epochs`` (one stage): none, StepLR or cosine. With
    ``optim.schedule_per == "step"`` the cosine runs over ``epochs * steps_per_epoch``
    optimizer steps instead (the caller steps it after every optimizer step)."""
    if optim.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size, gamma=optim.gamma)
    if optim.scheduler == "cosine" and optim.schedule_per == "step":
        if steps_per_epoch < 1:
            raise ValueError("optim.schedule_per: step needs the number of steps per epoch")
        return build_scheduler(optimizer, dataclasses.replace(optim, schedule_per="epoch"), epochs * steps_per_epoch)
    if optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(e, epochs) / max(epochs, 1)))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)


def stage_at(stages: tuple[StageConfig, ...], epoch: int) -> tuple[int, StageConfig, int]:
    """For a global 0-based ``epoch``: (stage index, stage, epoch within the stage)."""
    start = 0
    for i, s in enumerate(stages):
        if epoch < start + s.epochs:
            return i, s, epoch - start
        start += s.epochs
    raise IndexError(f"epoch {epoch} is past the last stage ({start} epochs in total)")


@dataclass
class StageState:
    """Optimizer, scheduler and scaler for the current stage."""

    index: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage_index": self.index,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }


def begin_stage(
    model: nn.Module, stages: tuple[StageConfig, ...], index: int, optim: OptimConfig, precision: Precision, device: torch.device,
    steps_per_epoch: int = 0,
) -> StageState:
    """Apply the stage's freezing and build its optimizer, schedule and scaler."""
    stage = stages[index]
    set_trainable(unwrap(model), stage.trainable)
    opt = build_optimizer(model, stage, optim)
    sched = build_scheduler(opt, optim, stage.epochs, steps_per_epoch)
    return StageState(index, opt, sched, precision.make_scaler(device))


def restore_stage(state: StageState, saved: Mapping[str, Any]) -> None:
    """Load optimizer/scheduler/scaler state saved by :meth:`StageState.state_dict`."""
    if saved.get("stage_index") != state.index:
        return  # the checkpoint ended a stage; the new stage starts with fresh state
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])


# --------------------------------------------------------------------------- epochs


def _to(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def _composition_args(b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    return {"image": b.get("image"), "fg": b.get("fg"), "bg": b.get("bg")}


LOGIT_CLAMP = 8.0
"""|logit| bound of :func:`logit_l1` (alpha 0.00034 / 0.99966: far below one 8-bit step)."""


def logit_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |logit(pred) - logit(target)| with both alphas clamped to logits in +-LOGIT_CLAMP."""
    eps = 1.0 / (1.0 + math.exp(LOGIT_CLAMP))
    return (torch.logit(pred.clamp(eps, 1 - eps)) - torch.logit(target.clamp(eps, 1 - eps))).abs().mean()


def _terms(
    pred: torch.Tensor, b: Mapping[str, torch.Tensor], loss_cfg: LossConfig, teacher: nn.Module | None,
    distill_weight: float, precision: Precision, device: torch.device, distill_logit: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The loss terms of one batch: against the ground truth, the teacher's alpha, or a mix
    (the teacher's part also has ``distill_logit`` x :func:`logit_l1`, as term ``logit``)."""
    if teacher is None:
        return matting_loss(pred, b["alpha"], loss_cfg, **_composition_args(b))
    with torch.no_grad(), precision.autocast(device):
        target = teacher(b["image"]).float()
    if "valid" in b:  # padded pixels: the teacher's guess there means nothing; use the label
        target = torch.where(b["valid"] > 0.5, target, b["alpha"])
    soft = matting_loss(pred, target, loss_cfg, **_composition_args(b))
    if distill_logit > 0:
        soft["logit"] = logit_l1(pred, target)
        soft["total"] = soft["total"] + distill_logit * soft["logit"]
    w = distill_weight
    if w >= 1.0:
        return soft
    gt = matting_loss(pred, b["alpha"], loss_cfg, **_composition_args(b))
    return {k: w * soft[k] + (1.0 - w) * gt.get(k, 0.0) for k in soft}


@dataclass(frozen=True)
class Distillation:
    """A frozen teacher (see :func:`freeze_teacher`) and how its alpha mixes with the ground truth:
    each loss term is ``weight`` x (the loss against the teacher's alpha, plus ``logit_l1`` x
    :func:`logit_l1`) + ``1 - weight`` x (the loss against the label)."""

    teacher: nn.Module
    weight: float = 1.0
    logit_l1: float = 0.0


@dataclass(frozen=True)
class StepSettings:
    """How every optimizer step of an epoch runs: the loss, where, in which precision, the
    gradient clip (0 = none) and an optional distillation teacher."""

    loss: LossConfig
    device: torch.device
    precision: Precision
    grad_clip: float = 1.0
    distill: Distillation | None = None


@dataclass(frozen=True)
class Progress:
    """Progress lines within an epoch: ``log`` every ``every`` steps (0 = none), out of
    ``expected_steps`` when the epoch's length is known (0 = unknown)."""

    log: Callable[[str], None]
    every: int = 0
    expected_steps: int = 0


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    settings: StepSettings,
    *,
    after_step: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns the mean of each loss term, ``samples`` and ``samples_per_s``.

    Non-finite losses skip the step (counted in ``skipped_steps``) rather than poisoning weights.
    ``after_step`` runs after every optimizer step (a per-step schedule). With
    ``settings.distill``, the loss terms mix the teacher's alpha in (see :class:`Distillation`).
    """
    device, precision, distill = settings.device, settings.precision, settings.distill
    model.train()
    sums: dict[str, float] = {}
    n_samples = 0
    steps = skipped = 0
    t0 = time.perf_counter()
    for batch in batches:
        b = _to(batch, device)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device):
            pred = model(b["image"])
        if distill is None:
            terms = _terms(pred.float(), b, settings.loss, None, 1.0, precision, device)
        else:
            terms = _terms(pred.float(), b, settings.loss, distill.teacher, distill.weight, precision, device, distill.logit_l1)
        loss = terms["total"]
        if not torch.isfinite(loss):
            skipped += 1
            continue
        scaler.scale(loss).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()
        bs = b["image"].shape[0]
        n_samples += bs
        steps += 1
        for k, v in terms.items():
            # Summed on the device: a float() per term would sync the GPU several times a step.
            sums[k] = sums.get(k, 0.0) + v.detach().float() * bs
        if progress is not None and progress.every and steps % progress.every == 0:
            progress.log(progress_line(steps, progress.expected_steps, float(loss.detach()), n_samples, time.perf_counter() - t0))
    elapsed = time.perf_counter() - t0
    out = {k: float(v) / max(n_samples, 1) for k, v in sums.items()}
    out.update(samples=float(n_samples), steps=float(steps), skipped_steps=float(skipped), samples_per_s=n_samples / max(elapsed, 1e-9))
    return out


def progress_line(steps: int, expected: int, loss: float, samples: int, elapsed: float) -> str:
    """``  step 50/540 (9%): loss 0.3123, 8.1 samples/s, about 61 s left in this epoch`` (the
    total and the time left only when the epoch's length is known)."""
    rate = samples / max(elapsed, 1e-9)
    if expected > 0:
        left = max(expected - steps, 0) * elapsed / max(steps, 1)
        return (f"  step {steps}/{expected} ({100 * steps / expected:.0f}%): loss {loss:.4f}, {rate:.1f} samples/s, "
                f"about {left:.0f} s left in this epoch")
    return f"  step {steps}: loss {loss:.4f}, {rate:.1f} samples/s"


def auto_log_every(steps_per_epoch: int, lines: int = 20) -> int:
    """Steps between progress lines for about ``lines`` lines per epoch (0 = none for short epochs)."""
    return steps_per_epoch // lines if steps_per_epoch >= 2 * lines else 0


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_cfg: LossConfig,
    *,
    device: torch.device,
    precision: Precision | None = None,
    with_slow_metrics: bool = True,
) -> dict[str, float]:
    """Validation: mean loss terms and per-image SAD / MSE / MAD (/ Grad / Conn) means.

    Metrics follow :mod:`matting_lib.metrics` (SAD in thousands of alpha units). Images
    padded by the eval transform carry ``valid`` (B,1,H,W) masks; padded pixels are ignored.
    """
    model.eval()
    precision = precision or Precision(False, torch.float32, False)
    sums: dict[str, float] = {}
    n = 0
    for batch in batches:
        b = _to(batch, device)
        with precision.autocast(device):
            pred = model(b["image"])
        pred = pred.float()
        terms = matting_loss(pred, b["alpha"], loss_cfg, **_composition_args(b))
        bs = pred.shape[0]
        for k, v in terms.items():
            sums[f"loss_{k}" if k != "total" else "loss"] = sums.get(f"loss_{k}" if k != "total" else "loss", 0.0) + float(v) * bs
        p_np = pred.squeeze(1).cpu().numpy().astype(np.float64)
        g_np = b["alpha"].squeeze(1).cpu().numpy().astype(np.float64)
        valid = b.get("valid")
        v_np = valid.squeeze(1).cpu().numpy() > 0.5 if valid is not None else None
        for i in range(bs):
            p, g = p_np[i], g_np[i]
            trimap = None
            if v_np is not None and not v_np[i].all():
                # Score only real pixels: a trimap whose "unknown" region is the valid area.
                trimap = np.where(v_np[i], 128, 0).astype(np.uint8)
            scores = {"sad": M.sad(p, g, trimap), "mse": M.mse(p, g, trimap), "mad": M.mad(p, g, trimap)}
            if with_slow_metrics:
                scores["grad"] = M.gradient_error(p, g, trimap)
                scores["conn"] = M.connectivity_error(p, g, trimap)
            for k, v in scores.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        n += bs
    if n == 0:
        raise ValueError("evaluate: no validation batches (is the validation split empty?)")
    out = {k: v / n for k, v in sums.items()}
    out["val_samples"] = float(n)
    return out


# --------------------------------------------------------------------------- a whole run


def freeze_teacher(teacher: nn.Module, device: torch.device) -> nn.Module:
    """A distillation teacher: on ``device``, eval mode, no gradients."""
    teacher = teacher.to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def load_teacher(cfg: Any) -> nn.Module | None:
    """The teacher model ``cfg.distill`` names (None when distillation is off).
    Raises :class:`matting_lib.checkpoint.CheckpointError` when it cannot be loaded."""
    distill = getattr(cfg, "distill", None)
    if distill is None or not distill.enabled:
        return None
    from matting_lib.checkpoint import load_model

    return load_model(distill.teacher)


class TrainingRun:
    """Epoch-by-epoch driver over the configured unfreezing stages.

    Owns the stage switch (freezing, optimizer, schedule, scaler), the per-epoch history
    and the resumable training state. ``ray_jobs.train`` calls it on every worker, and
    :func:`fit` calls it on one device without Ray, so both train identically.
    """

    def __init__(
        self, model: nn.Module, cfg: Any, device: torch.device, wrap: Callable[[nn.Module], nn.Module] | None = None,
        teacher: nn.Module | None = None, steps_per_epoch: int = 0,
    ) -> None:
        # ``wrap`` (e.g. Ray's prepare_model for DDP) is re-applied at every stage switch:
        # DDP only synchronises parameters that required grad when it was built.
        self.wrap = wrap or (lambda m: m.to(device))
        self.model = model
        self.cfg = cfg
        self.device = device
        self.precision = resolve_precision(cfg.optim.amp, device)
        self.stage: StageState | None = None
        self.history: list[dict[str, float]] = []
        self.next_epoch = 0
        self.distill = (Distillation(freeze_teacher(teacher, device), cfg.distill.weight, cfg.distill.logit_l1)
                        if teacher is not None else None)
        self.per_step = cfg.optim.scheduler == "cosine" and cfg.optim.schedule_per == "step"
        self.steps_per_epoch = steps_per_epoch
        """Optimizer steps per epoch (per worker): what a per-step cosine spreads over."""

    def restore(self, training_state: Mapping[str, Any] | None) -> None:
        """Continue from a checkpoint's ``training_state`` (epoch, history, optimizer...)."""
        if not training_state:
            return
        self.next_epoch = int(training_state["epoch"]) + 1
        self.history = list(training_state.get("history", []))
        if self.next_epoch < self.cfg.total_epochs:
            idx, _, _ = stage_at(self.cfg.stages, self.next_epoch)
            self._ensure_stage(idx)
            assert self.stage is not None
            restore_stage(self.stage, training_state.get("stage", {}))

    def _ensure_stage(self, idx: int) -> StageConfig:
        if self.stage is None or self.stage.index != idx:
            base = unwrap(self.model)
            self.stage = begin_stage(base, self.cfg.stages, idx, self.cfg.optim, self.precision, self.device,
                                     steps_per_epoch=self.steps_per_epoch)
            self.model = self.wrap(base)
        return self.cfg.stages[idx]

    def epochs(self) -> range:
        return range(self.next_epoch, self.cfg.total_epochs)

    def train_epoch(
        self, epoch: int, batches: Iterable[Batch], log: Callable[[str], None] | None = None, log_every: int = 0,
    ) -> dict[str, float]:
        idx, _, _ = stage_at(self.cfg.stages, epoch)
        stage = self._ensure_stage(idx)
        assert self.stage is not None
        settings = StepSettings(self.cfg.loss, self.device, self.precision, self.cfg.optim.grad_clip, self.distill)
        stats = train_one_epoch(
            self.model, batches, self.stage.optimizer, self.stage.scaler, settings,
            after_step=self.stage.scheduler.step if self.per_step else None,
            progress=Progress(log, log_every, self.steps_per_epoch) if log is not None else None,
        )
        lr = self.stage.optimizer.param_groups[0]["lr"]
        if not self.per_step:
            self.stage.scheduler.step()
        return {f"train_{k}": v for k, v in stats.items()} | {"lr": lr, "stage": float(idx), "stage_name": stage.name}

    def end_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Record the epoch's metrics; returns the row added to the history."""
        row = {"epoch": epoch, **metrics}
        self.history.append(row)
        self.next_epoch = epoch + 1
        return row

    def training_state(self) -> dict[str, Any]:
        assert self.stage is not None
        return {"epoch": self.next_epoch - 1, "history": self.history, "stage": self.stage.state_dict()}


def format_epoch(row: Mapping[str, Any], total: int) -> str:
    """One progress line per epoch."""
    keys = ("train_total", "loss", "sad", "mse", "grad", "conn")
    parts = [f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float))]
    sps = row.get("train_samples_per_s")
    extra = f" {sps:.1f} samples/s" if isinstance(sps, (int, float)) else ""
    return f"epoch {row['epoch'] + 1}/{total} [{row.get('stage_name', '')}] " + " ".join(parts) + extra


def run_epochs(
    run: TrainingRun,
    train_batches: Callable[[int], Iterable[Batch]],
    validate: Callable[[nn.Module], Mapping[str, float]],
    on_epoch_end: Callable[[dict[str, Any]], None],
    *,
    log: Callable[[str], None] | None = None,
    log_every: int = 0,
) -> list[dict[str, Any]]:
    """The epoch loop of every trainer: from ``run.next_epoch`` on, train an epoch on
    ``train_batches(epoch)``, ``validate`` the bare model (no DDP wrapper), record the row
    (validation metrics as ``val_<name>``), log the epoch's line and hand the row to
    ``on_epoch_end`` (checkpoints, reports). :func:`fit` saves checkpoint files there; each Ray
    Train worker reports to Ray Train (``ray_jobs.trainer``). Returns ``run.history``.

    ``log`` (None: silent) also gets a progress line every ``log_every`` steps (0: none).
    """
    for epoch in run.epochs():
        train_stats = run.train_epoch(epoch, train_batches(epoch), log=log, log_every=log_every)
        val = validate(unwrap(run.model))
        row = run.end_epoch(epoch, train_stats | {f"val_{k}": v for k, v in val.items()})
        if log is not None:
            log(format_epoch({**row, **val}, run.cfg.total_epochs))
        on_epoch_end(row)
    return run.history


def fit(
    model: nn.Module,
    cfg: Any,
    train_batches: Callable[[int], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]],
    *,
    device: torch.device | None = None,
    checkpoint_uri: str = "",
    log: Callable[[str], None] = print,
    log_every: int = 0,
    data_fingerprint: str = "",
    teacher: nn.Module | None = None,
    steps_per_epoch: int = 0,
) -> list[dict[str, Any]]:
    """Train on one device without Ray (:func:`run_epochs`); returns the per-epoch history.

    ``train_batches(epoch)`` yields training batches; ``val_batches()`` validation ones.
    With ``checkpoint_uri`` the best epoch (lowest validation SAD) is saved there, and
    ``<checkpoint_uri>.last`` keeps the latest state; an existing ``.last`` is resumed.
    ``log_every`` > 0 also logs every that many steps; ``data_fingerprint`` goes into the
    checkpoints (see :func:`matting_lib.checkpoint.data_fingerprint`); ``teacher`` turns on
    distillation with ``cfg.distill.weight`` (see :class:`Distillation`); ``steps_per_epoch``
    is needed by ``optim.schedule_per: step`` (the cosine then decays every step).
    """
    from matting_lib.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint

    device = device or default_device()
    model.to(device)
    run = TrainingRun(model, cfg, device, teacher=teacher, steps_per_epoch=steps_per_epoch)
    best = float("inf")
    if checkpoint_uri:
        try:
            last = load_checkpoint(checkpoint_uri + ".last")
        except CheckpointError:
            last = None
        if last is not None:
            load_weights(model, last.state_dict, strict=True)
            run.restore(last.training_state)
            best = min((h.get("val_sad", float("inf")) for h in run.history), default=best)
            log(f"resuming at epoch {run.next_epoch + 1}")

    def validate(m: nn.Module) -> dict[str, float]:
        return evaluate(m, val_batches(), cfg.loss, device=device, precision=run.precision)

    def save(row: dict[str, Any]) -> None:
        nonlocal best
        if not checkpoint_uri:
            return
        common = dict(train_config=cfg, metrics=row, data_fingerprint=data_fingerprint)
        save_checkpoint(checkpoint_uri + ".last", run.model, training_state=run.training_state(), **common)
        if row["val_sad"] < best:
            best = row["val_sad"]
            save_checkpoint(checkpoint_uri, run.model, **common)

    return run_epochs(run, train_batches, validate, save, log=log, log_every=log_every)
