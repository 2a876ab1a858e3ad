"""Ray Tune sweep over the training job: learning rate, loss weights, low-light module, stage lengths.

    python -m ray_jobs.tune --config configs/sweep_lowlight.yaml train.data.uri=s3://bucket/ds
    python -m ray_jobs.tune --config configs/sweep_tiny.yaml train.data.uri=/tmp/ds search.num_samples=8

Design: TorchTrainer inside a function trainable. Each trial is a Tune function that builds
the training job's own TorchTrainer (``ray_jobs.trainer.make_trainer``, same data pipeline and
loop) and fits it with Tune's ``TuneReportCallback``, the way Ray 2.60 tunes Train V2
(``Tuner(TorchTrainer)`` no longer works). Chosen over a single-worker trial mode (the loop run
inside the trial's own process) because

- a trial *is* the training job: the same loop, DDP, streaming, checkpoint format and failure
  handling, so there is nothing to keep in sync and the best trial's checkpoint serves as is;
- a trial can use several workers or GPUs on a real cluster (``resources``);
- each trial is a named Train run, so a resumed sweep continues every unfinished trial from its
  last epoch checkpoint rather than from scratch.

The price is a few seconds per trial to start its worker group, small next to real epochs.
Resources: the trial function only waits on its trainer and asks Tune for 0.01 CPU (Tune
refuses 0; the Train controller takes none); the workers and Ray Data tasks take the fractional
CPUs of ``resources``, so several trials fit on a 2-CPU machine. Tune cannot see the workers'
resources, so ``max_concurrent_trials`` is derived from the cluster:
``floor(CPUs / (num_workers * cpus_per_worker + data_cpus + 0.01))``, and with ``use_gpu`` also
``floor(GPUs / num_workers)``; ``search.max_concurrent_trials`` can only lower it.

The sweep YAML (:class:`SweepConfig`) names a base training config, overrides of it
(``train:``, a mapping shaped like the training YAML; on the command line ``train.data.uri=...``),
the search space, the search algorithm, ASHA's settings and the per-trial resources.
Tunable parameters (``space:``, dotted names or the same nested; ``space.loss.l1=[0.5,1]`` on
the command line), each a list of values or ``{distribution: loguniform | uniform | int, low: L,
high: H}`` (``int`` includes both ends):

    lr                  the first stage's learning rate; every other stage LR and encoder LR
                        keeps its ratio to it from the base config (layer-wise LR preserved)
    loss.l1, loss.grad, loss.laplacian, loss.ssim, loss.edge    loss weights
    model.lowlight      the low-light enhancement module on (true) or off (false)
    stages.<i>.epochs   the length of unfreezing stage i (0-based) of the base config

Search: ``random``, ``grid`` (every parameter a list; all combinations, ``num_samples`` times),
``tpe`` (Optuna's TPE; needs the optional ``optuna`` package), or ``auto`` (tpe when optuna is
importable, else random). ASHA stops trials on validation SAD (lower is better); its time unit
is epochs done, ``max_t`` the longest trial's total epochs.

Outputs, in ``<storage_path>/<name>/`` (local or s3://), beside Tune's own files:

- ``results.csv``, ``results.md``: one row per trial, best first: the trial's parameters, its
  best validation SAD and the MSE and Grad of that same epoch, the best epoch (1-based), the
  epochs run and planned, whether ASHA stopped it early, and its status;
- ``best.yaml``: the base config with the best trial's parameters, a training config the
  training job takes as is (its own ``run.name`` is ``<name>-best``);
- ``val_sad.png``: validation SAD against epoch for every trial;
- ``manifest.jsonl``: the dataset's manifest, built here when ``data.manifest`` is unset and
  the dataset has none (the dataset itself is never written to; without a ``val.txt`` a seeded
  10% of the train rows is held out for validation, see :mod:`matting_lib.data.manifest`);
- the best trial's best epoch in matting_lib's checkpoint format at
  ``<storage_path>/<name>/train/<trial id>/best.pt`` (printed; trial runs live under ``train/``).

Resuming: relaunching with the same ``name`` and ``storage_path`` continues the sweep (finished
trials are kept; unfinished and errored ones continue from their last checkpoint). Tune does not
save the scheduler's state, so ASHA's rungs start empty again after a resume. Relaunching with a
different config under an existing name is refused. Errors in the sweep YAML (an empty
search space, unknown parameter names, values the training config rejects) and a trial that
needs more CPUs or GPUs than the whole cluster has exit with code 2 and one line.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io as stdio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from matting_lib import io
from matting_lib.config import ConfigError, ScalingSettings, TrainConfig, dump_config, from_dict, load_yaml, require, to_dict
from matting_lib.io import run_uri
from ray_jobs.common import fail, init_ray, job_parser, load_job_config, storage_args, worker_env
from ray_jobs.trainer import build_datasets, export_best, make_trainer, prepare_data

METRIC = "val_sad"
"""What ASHA and the ranking minimise: mean validation SAD (thousands of alpha units)."""
TIME_ATTR = "epochs_done"
"""ASHA's time unit: epochs completed by the trial (1 after its first epoch)."""
TRIAL_CPU = 0.01
"""CPU the trial function asks Tune for; it only waits on its TorchTrainer (0 is refused)."""
LOSS_WEIGHTS = ("l1", "grad", "laplacian", "ssim", "edge")
TUNABLE = ("lr", *(f"loss.{w}" for w in LOSS_WEIGHTS), "model.lowlight", "stages.<i>.epochs")
DISTRIBUTIONS = ("loguniform", "uniform", "int")
Algorithm = Literal["auto", "random", "grid", "tpe"]


# --------------------------------------------------------------------------- sweep config


@dataclass(frozen=True)
class SearchSettings:
    """How trials are chosen and how many run."""

    algorithm: Algorithm = "auto"
    """random, grid, tpe (Optuna, optional extra), or auto = tpe when optuna is installed, else random."""
    num_samples: int = 8
    """Trials to sample (random, tpe); for grid, how many times every combination runs."""
    seed: int = 0
    """Seed of the search algorithm (the same seed samples the same trials)."""
    max_concurrent_trials: int = 0
    """Upper bound on trials at once; 0 = as many as the cluster's resources fit."""

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, "search.num_samples", f"must be >= 1, got {self.num_samples}")
        require(self.max_concurrent_trials >= 0, "search.max_concurrent_trials", "must be >= 0 (0 = derived from the cluster)")


@dataclass(frozen=True)
class AshaSettings:
    """Asynchronous successive halving on validation SAD; time is counted in epochs."""

    grace_period: int = 1
    """Epochs every trial runs before it can be stopped."""
    reduction_factor: float = 2.0
    """At each rung only the best 1/reduction_factor of trials continue."""

    def __post_init__(self) -> None:
        require(self.grace_period >= 1, "asha.grace_period", f"must be >= 1, got {self.grace_period}")
        require(self.reduction_factor > 1, "asha.reduction_factor", f"must be > 1, got {self.reduction_factor}")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: base training config, search space, search, ASHA, per-trial resources."""

    base_config: str = ""
    """Training YAML every trial starts from (path relative to the working directory, or a URI)."""
    train: Any = field(default_factory=dict)
    """Overrides of the base config, a mapping shaped like the training YAML (e.g. ``{data: {uri: ...}}``)."""
    space: Any = field(default_factory=dict)
    """Parameter name -> list of values or ``{distribution, low, high}``; see the module docstring."""
    search: SearchSettings = field(default_factory=SearchSettings)
    """Search algorithm and trial count."""
    asha: AshaSettings = field(default_factory=AshaSettings)
    """Early stopping."""
    resources: ScalingSettings = field(default_factory=lambda: ScalingSettings(num_workers=1, cpus_per_worker=0.5))
    """Per-trial workers and CPUs/GPUs; replaces the base config's ``scaling`` in trials."""
    name: str = "sweep"
    """Sweep name; relaunching with the same name resumes."""
    storage_path: str = "runs/sweeps"
    """Where the sweep folder goes (local folder or s3://bucket/prefix)."""

    def __post_init__(self) -> None:
        require(bool(self.base_config), "base_config", "must name a training config YAML")
        require(isinstance(self.train, Mapping), "train", f"must be a mapping of training-config overrides, got {self.train!r}")
        require(isinstance(self.space, Mapping), "space", f"must be a mapping of parameter name -> values, got {self.space!r}")
        require(bool(self.name) and "/" not in self.name, "name", "must be non-empty and contain no '/'")


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Param:
    """One tunable parameter: a list of ``values`` or a ``distribution`` over [low, high]."""

    name: str
    values: tuple[Any, ...] = ()
    distribution: str = ""
    low: float = 0.0
    high: float = 0.0

    def bounds(self) -> tuple[Any, ...]:
        """The values that decide validity: every listed value, or both ends of the range."""
        return self.values if not self.distribution else (self.low, self.high)

    def domain(self, algorithm: str) -> Any:
        from ray import tune

        if algorithm == "grid":
            return tune.grid_search(list(self.values))
        if not self.distribution:
            return tune.choice(list(self.values))
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        return tune.randint(int(self.low), int(self.high) + 1)  # randint excludes its upper end


def _plain(value: Any) -> Any:
    """Python scalars for numpy ones (Tune samples numpy types; YAML and configs want plain)."""
    return value.item() if isinstance(value, np.generic) else value


def trial_config(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """``base`` with a trial's parameters applied; validated like any training config."""
    data = to_dict(base)
    for name, value in params.items():
        value = _plain(value)
        if name == "lr":
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, "lr", f"must be a number > 0, got {value!r}")
            scale = value / base.stages[0].lr
            for stage in data["stages"]:
                stage["lr"] *= scale
                if stage["encoder_lr"] is not None:
                    stage["encoder_lr"] *= scale
            data["stages"][0]["lr"] = float(value)  # exactly, not up to rounding
        elif name.startswith("stages."):
            data["stages"][int(name.split(".")[1])]["epochs"] = value
        else:
            section, key = name.split(".")
            data[section][key] = value
    return from_dict(TrainConfig, data)


def _check_name(name: str, base: TrainConfig) -> None:
    if name.startswith("stages.") and name.endswith(".epochs"):
        index = name.split(".")[1]
        require(index.isdigit() and int(index) < len(base.stages), f"space.{name}", f"the base config has {len(base.stages)} stage(s): stages.0.epochs .. stages.{len(base.stages) - 1}.epochs")
        return
    require(name in TUNABLE, f"space.{name}", f"unknown parameter (tunable: {', '.join(TUNABLE)})")


def _parse_param(name: str, spec: Any, algorithm: str) -> Param:
    key = f"space.{name}"
    if isinstance(spec, (list, tuple)):
        require(len(spec) > 0, key, "empty list of values")
        return Param(name, values=tuple(spec))
    require(isinstance(spec, Mapping), key, f"must be a list of values or {{distribution, low, high}}, got {spec!r}")
    require(algorithm != "grid", key, "grid search needs a list of values")
    unknown = sorted(set(spec) - {"distribution", "low", "high"})
    require(not unknown, f"{key}.{unknown[0] if unknown else ''}", "unknown key (valid keys: distribution, high, low)")
    dist = spec.get("distribution")
    require(dist in DISTRIBUTIONS, f"{key}.distribution", f"must be one of {list(DISTRIBUTIONS)}, got {dist!r}")
    low, high = spec.get("low"), spec.get("high")
    for k, v in (("low", low), ("high", high)):
        require(isinstance(v, (int, float)) and not isinstance(v, bool), f"{key}.{k}", f"must be a number, got {v!r}")
    require(low < high, key, f"low must be < high, got {low} >= {high}")
    require(dist != "loguniform" or low > 0, f"{key}.low", "loguniform needs low > 0")
    require(dist != "int" or (low == int(low) and high == int(high)), key, "int bounds must be whole numbers")
    return Param(name, distribution=dist, low=low, high=high)


def flatten_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted parameter names -> specs. Nested mappings are accepted too (``{loss: {l1: [...]}}``),
    which is what ``space.loss.l1=[...]`` on the command line makes; a later entry wins."""
    flat: dict[str, Any] = {}
    for key, spec in space.items():
        name = f"{prefix}{key}"
        if isinstance(spec, Mapping) and "distribution" not in spec:
            flat.update(flatten_space(spec, f"{name}."))
        else:
            flat[name] = spec
    return flat


def parse_space(space: Mapping[str, Any], base: TrainConfig, algorithm: str) -> dict[str, Param]:
    """Validated parameters; ConfigError (naming ``space.<param>``) for anything a trial could not run."""
    space = flatten_space(space)
    require(len(space) > 0, "space", f"empty search space: name at least one parameter ({', '.join(TUNABLE)})")
    params = {}
    for name, spec in space.items():
        _check_name(name, base)
        param = _parse_param(name, spec, algorithm)
        for value in param.bounds():
            try:
                trial_config(base, {name: value})
            except ConfigError as e:
                raise ConfigError(f"space.{name}: value {value!r} is invalid: {e}") from None
        params[name] = param
    return params


def max_epochs(base: TrainConfig, params: Mapping[str, Param]) -> int:
    """The longest trial's total epochs (ASHA's ``max_t``)."""
    longest = {name: max(p.bounds()) for name, p in params.items() if name.startswith("stages.")}
    return trial_config(base, longest).total_epochs


# --------------------------------------------------------------------------- search and resources


def resolve_algorithm(algorithm: str) -> str:
    """``auto`` becomes tpe when optuna is importable, else random; tpe without optuna is an error."""
    has_optuna = importlib.util.find_spec("optuna") is not None
    if algorithm == "auto":
        return "tpe" if has_optuna else "random"
    require(algorithm != "tpe" or has_optuna, "search.algorithm", "tpe needs optuna: pip install optuna (the project's optional [optuna] extra)")
    return algorithm


def make_search_alg(algorithm: str, seed: int, max_concurrent: int) -> Any:
    """The seeded search algorithm, running at most ``max_concurrent`` trials at once.

    The limit is set here: Tune ignores ``TuneConfig.max_concurrent_trials`` for the
    random/grid generator, and on a small cluster too many trials at once starve Ray Data.
    """
    if algorithm == "tpe":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed)), max_concurrent=max_concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)


def trial_demand(res: ScalingSettings) -> tuple[float, int]:
    """(CPUs, GPUs) one trial holds: its workers, one Ray Data task and the trial function."""
    return res.num_workers * res.cpus_per_worker + res.data_cpus + TRIAL_CPU, res.num_workers if res.use_gpu else 0


def concurrency(res: ScalingSettings, cluster: Mapping[str, float], cap: int = 0) -> int:
    """How many trials the cluster runs at once; raises ConfigError when not even one fits."""
    cpus, gpus = trial_demand(res)
    have_cpu, have_gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    what = f"{res.num_workers} worker(s) x {res.cpus_per_worker} CPU + {res.data_cpus} data CPU + {TRIAL_CPU}"
    require(cpus <= have_cpu + 1e-9, "resources", f"a trial needs {cpus:g} CPUs ({what}) but the cluster has {have_cpu:g}")
    require(gpus <= have_gpu + 1e-9, "resources", f"a trial needs {gpus} GPU(s) ({res.num_workers} worker(s) x 1) but the cluster has {have_gpu:g}")
    slots = math.floor(have_cpu / cpus + 1e-9)
    if gpus:
        slots = min(slots, math.floor(have_gpu / gpus + 1e-9))
    return min(slots, cap) if cap else slots


# --------------------------------------------------------------------------- the trial


def _report_callback() -> Any:
    """Tune's report callback, adding ``epochs_done`` (1-based) for ASHA's time axis."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            first = {**metrics[0], TIME_ATTR: int(metrics[0]["epoch"]) + 1}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport()


def run_trial(params: dict, *, template: dict, train_rows: list[dict], val_rows: list[dict], env: dict[str, str]) -> None:
    """One trial: the training job with ``params``, as the Train run named after the trial id."""
    import ray.data
    from ray import tune

    # Tune's status table is the sweep's progress; per-trial Ray Data bars would drown it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = trial_config(from_dict(TrainConfig, template), params)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=tune.get_context().get_trial_id()))
    trainer = make_trainer(cfg, build_datasets(cfg, train_rows, val_rows), env=env, callbacks=[_report_callback()])
    trainer.fit()


def release_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; returns how many.

    A trial that ASHA stops is killed, and its Train controller with it. The controller's
    worker placement group is meant to be removed by Train's detached PlacementGroupCleaner,
    which needs the State API (a dashboard, and an unambiguous cluster address: it fails on a
    local cluster started without dashboard, or with several clusters on one machine). Ray
    itself frees such groups only when the job ends, so a sweep would drain its own cluster
    and hang. Only groups created by an actor (not a driver) of this job that has since died
    are removed: nothing can use them any more. Reads Ray's GCS table (private API, Ray 2.60).
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        orphaned = pg.creator_actor_dead and not ray.ActorID(pg.creator_actor_id).is_nil() and not pg.is_detached
        if orphaned and pg.creator_job_id.hex() == job and pg.state != gcs_pb2.PlacementGroupTableData.REMOVED:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            removed += 1
    return removed


def _orphan_release_callback(every_s: float = 2.0) -> Any:
    """A Tune callback running :func:`release_orphaned_placement_groups` every ``every_s`` seconds."""
    from ray import tune

    class ReleaseOrphans(tune.Callback):
        def __init__(self) -> None:
            self.next_check = 0.0

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() >= self.next_check:
                self.next_check = time.monotonic() + every_s
                release_orphaned_placement_groups()

    return ReleaseOrphans()


# --------------------------------------------------------------------------- results


@dataclass
class TrialSummary:
    """One row of the results table."""

    trial: str
    params: dict[str, Any]
    status: str
    epochs_planned: int
    curve: list[tuple[int, float]]
    """(epochs done, val SAD) per reported epoch."""
    best: dict[str, float]
    """Metrics of the epoch with the lowest val SAD (empty if none was reported)."""

    @property
    def epochs_run(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    @property
    def best_sad(self) -> float:
        return self.best.get(METRIC, math.inf)

    @property
    def stopped_early(self) -> bool:
        """Ended without error before its planned epochs: ASHA stopped it."""
        return self.status == "TERMINATED" and self.epochs_run < self.epochs_planned


def summarize(analysis: Any, base: TrainConfig) -> list[TrialSummary]:
    """Trial rows from Tune's experiment state, best first (trials without results last)."""
    rows = []
    for trial in analysis.trials:
        params = {k: _plain(v) for k, v in trial.config.items()}
        df = analysis.trial_dataframes.get(trial.trial_id)
        records: dict[int, dict] = {}
        if df is not None and not df.empty and TIME_ATTR in df:
            for rec in df.to_dict("records"):
                records[int(rec[TIME_ATTR])] = rec  # a resumed trial may repeat an epoch: keep the last
        curve = [(e, float(records[e][METRIC])) for e in sorted(records)]
        best = min(records.values(), key=lambda r: r[METRIC]) if records else {}
        rows.append(TrialSummary(trial.trial_id, params, trial.status, trial_config(base, params).total_epochs, curve, best))
    return sorted(rows, key=lambda r: r.best_sad)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table_rows(rows: Sequence[TrialSummary], names: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {
            "trial": r.trial,
            **{n: r.params.get(n) for n in names},
            "best_val_sad": r.best.get("val_sad"),
            "best_val_mse": r.best.get("val_mse"),
            "best_val_grad": r.best.get("val_grad"),
            "best_epoch": int(r.best["epochs_done"]) if r.best else None,
            "epochs_run": r.epochs_run,
            "epochs_planned": r.epochs_planned,
            "stopped_early": r.stopped_early,
            "status": r.status,
        }
        for r in rows
    ]


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


def to_markdown(table: list[dict[str, Any]]) -> str:
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if row[c] is None else _fmt(row[c]) for c in cols) + " |" for row in table]
    return "\n".join(lines) + "\n"


# Tableau-10 colours (RGB), cycled over trials.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_curves(rows: Sequence[TrialSummary], title: str, size: tuple[int, int] = (960, 540)) -> np.ndarray:
    """Validation SAD against epoch for every trial (uint8 RGB, drawn with OpenCV).

    One coloured line per trial; a trial ASHA stopped ends in a cross. The legend lists each
    trial with its best SAD, best first.
    """
    import cv2

    w, h = size
    left, right, top, bottom = 80, w - 250, 40, h - 50
    img = np.full((h, w, 3), 255, np.uint8)
    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (200, 200, 200)
    drawn = [r for r in rows if r.curve]
    cv2.putText(img, title, (left, 25), font, 0.6, black, 1, cv2.LINE_AA)
    if not drawn:
        cv2.putText(img, "no trial reported a validation SAD", (left, h // 2), font, 0.6, black, 1, cv2.LINE_AA)
        return img
    x_max = max(2, max(r.epochs_run for r in drawn))
    sads = [s for r in drawn for _, s in r.curve]
    y_lo, y_hi = min(sads), max(sads)
    pad = max((y_hi - y_lo) * 0.05, 1e-6 + abs(y_hi) * 0.01)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(epoch: float, sad: float) -> tuple[int, int]:
        return (round(left + (epoch - 1) / (x_max - 1) * (right - left)), round(bottom - (sad - y_lo) / (y_hi - y_lo) * (bottom - top)))

    step = max(1, math.ceil(x_max / 10))
    for e in range(1, x_max + 1, step):
        x = px(e, y_lo)[0]
        cv2.line(img, (x, top), (x, bottom), grey, 1)
        cv2.putText(img, str(e), (x - 5, bottom + 18), font, 0.45, black, 1, cv2.LINE_AA)
    for i in range(6):
        v = y_lo + (y_hi - y_lo) * i / 5
        y = px(1, v)[1]
        cv2.line(img, (left, y), (right, y), grey, 1)
        cv2.putText(img, f"{v:.3g}", (8, y + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (right, bottom), black, 1)
    cv2.putText(img, "epoch", ((left + right) // 2 - 20, h - 12), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(img, "val SAD", (8, top - 22), font, 0.5, black, 1, cv2.LINE_AA)
    for i, r in enumerate(drawn):
        color = PALETTE[i % len(PALETTE)]
        pts = np.array([px(e, s) for e, s in r.curve], np.int32)
        cv2.polylines(img, [pts], False, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(c) for c in p), 3, color, -1, cv2.LINE_AA)
        if r.stopped_early:
            cv2.drawMarker(img, tuple(int(c) for c in pts[-1]), color, cv2.MARKER_TILTED_CROSS, 14, 2)
        if i < 20:
            y = top + 10 + 22 * i
            cv2.line(img, (right + 15, y), (right + 40, y), color, 3)
            label = f"{r.trial} {r.best_sad:.3g}" + (" stopped" if r.stopped_early else "")
            cv2.putText(img, label, (right + 46, y + 5), font, 0.42, black, 1, cv2.LINE_AA)
    if len(drawn) > 20:
        cv2.putText(img, f"+{len(drawn) - 20} more", (right + 46, top + 10 + 22 * 20), font, 0.42, black, 1, cv2.LINE_AA)
    return img


def best_training_config(base: TrainConfig, best: TrialSummary, sweep_name: str) -> str:
    """The best trial's training YAML: base config (its own scaling and storage) + the trial's params."""
    cfg = trial_config(base, best.params)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=f"{sweep_name}-best"))
    header = (
        f"# Best trial {best.trial} of sweep {sweep_name!r}: val SAD {best.best_sad:.4g} at epoch "
        f"{int(best.best['epochs_done'])}.\n# Parameters: {best.params}\n"
    )
    return header + dump_config(cfg)


def export_best_checkpoint(best: TrialSummary, template: TrainConfig) -> str:
    """Write the best trial's best epoch as ``<trial run>/best.pt`` (matting_lib format); its URI."""
    import ray.train

    cfg = trial_config(template, best.params)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=best.trial))
    where = storage_args(run_uri(cfg.run.storage_path, cfg.run.name), cfg.data.s3_endpoint_url)
    result = ray.train.Result.from_path(where["storage_path"], storage_filesystem=where.get("storage_filesystem"))
    uri, _ = export_best(result, cfg)
    return uri


def write_outputs(rows: list[TrialSummary], names: Sequence[str], base: TrainConfig, template: TrainConfig, sweep: SweepConfig, sweep_uri: str) -> dict[str, str]:
    """Table, plot, best YAML and best checkpoint; returns what was written, by kind."""
    from matting_lib.data.decode import encode_png

    table = table_rows(rows, names)
    out = {"csv": io.join(sweep_uri, "results.csv"), "markdown": io.join(sweep_uri, "results.md"), "plot": io.join(sweep_uri, "val_sad.png")}
    io.write_text(out["csv"], to_csv(table))
    io.write_text(out["markdown"], to_markdown(table))
    io.write_bytes(out["plot"], encode_png(plot_curves(rows, f"sweep {sweep.name}: validation SAD per epoch")))
    best = rows[0]
    if best.best:
        out["best_yaml"] = io.join(sweep_uri, "best.yaml")
        io.write_text(out["best_yaml"], best_training_config(base, best, sweep.name))
        out["best_checkpoint"] = export_best_checkpoint(best, template)
    return out


# --------------------------------------------------------------------------- driver


def load_base(sweep: SweepConfig) -> TrainConfig:
    """The base training config with the sweep's ``train`` overrides merged in."""

    def merge(into: dict, over: Mapping) -> dict:
        for k, v in over.items():
            into[k] = merge(dict(into.get(k) or {}), v) if isinstance(v, Mapping) else v
        return into

    data = merge(load_yaml(sweep.base_config), sweep.train)
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as e:
        raise ConfigError(f"base config {sweep.base_config} with train overrides: {e}") from None


def trial_template(base: TrainConfig, sweep: SweepConfig, sweep_uri: str) -> TrainConfig:
    """What every trial starts from: per-trial resources, runs stored under ``<sweep>/train``."""
    return dataclasses.replace(base, scaling=sweep.resources, run=dataclasses.replace(base.run, storage_path=io.join(sweep_uri, "train")))


def _check_same_sweep(sweep: SweepConfig, sweep_uri: str) -> None:
    """Record the sweep's config on first launch; refuse to resume a different one under the same name."""
    saved_uri = io.join(sweep_uri, "sweep.yaml")
    text = dump_config(dataclasses.replace(sweep, search=dataclasses.replace(sweep.search, max_concurrent_trials=0)))
    if not io.exists(saved_uri):
        io.write_text(saved_uri, text)
    elif io.read_text(saved_uri) != text:
        fail(f"sweep {sweep.name!r} already exists at {sweep_uri} with a different config: relaunch it unchanged to resume, or choose a new name=", code=2)


def experiment_path(sweep: SweepConfig, storage: dict[str, Any]) -> str:
    """Tune's experiment folder as Tune and pyarrow address it (with ``storage``'s filesystem, if any)."""
    return io.join(storage["storage_path"], sweep.name)


def make_tuner(
    sweep: SweepConfig, params: Mapping[str, Param], algorithm: str, trainable: Any, epochs: int, slots: int, storage: dict[str, Any]
) -> tuple[Any, bool]:
    """A new Tuner, or the interrupted one restored when the sweep's Tune state exists; (tuner, resumed).

    ``storage``: :func:`ray_jobs.common.storage_args` of the sweep's storage path.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    fs = storage.get("storage_filesystem")
    exp_path = experiment_path(sweep, storage)
    if tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        return tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs), True
    scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=epochs, grace_period=sweep.asha.grace_period, reduction_factor=sweep.asha.reduction_factor)
    tune_config = tune.TuneConfig(
        metric=METRIC, mode="min", scheduler=scheduler, search_alg=make_search_alg(algorithm, sweep.search.seed, slots),
        num_samples=sweep.search.num_samples,
    )
    run_config = tune.RunConfig(
        name=sweep.name, failure_config=tune.FailureConfig(max_failures=0), callbacks=[_orphan_release_callback()], verbose=1, **storage
    )
    param_space = {name: p.domain(algorithm) for name, p in params.items()}
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config), False


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    sweep: SweepConfig = load_job_config(args.config, args.overrides, cls=SweepConfig)
    try:
        base = load_base(sweep)
        algorithm = resolve_algorithm(sweep.search.algorithm)
        params = parse_space(sweep.space, base, algorithm)
        epochs = max_epochs(base, params)
        require(sweep.asha.grace_period <= epochs, "asha.grace_period", f"must be <= the longest trial's {epochs} epochs")
    except ConfigError as e:
        fail(f"config error: {e}", code=2)
    sweep_uri = run_uri(sweep.storage_path, sweep.name)
    train_rows, val_rows, env = prepare_data(base, manifest_dir=sweep_uri)  # a built manifest goes in the sweep's folder
    init_ray(args.address, env=env)
    env = worker_env(env)  # the driver's S3 settings, for the workers of every trial
    import ray
    from ray import tune

    try:
        slots = concurrency(sweep.resources, ray.cluster_resources(), sweep.search.max_concurrent_trials)
    except ConfigError as e:
        fail(f"config error: {e}", code=2)
    _check_same_sweep(sweep, sweep_uri)
    template = trial_template(base, sweep, sweep_uri)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, template=to_dict(template), train_rows=train_rows, val_rows=val_rows, env=env),
        {"cpu": TRIAL_CPU},
    )
    storage = storage_args(sweep.storage_path, base.data.s3_endpoint_url)
    tuner, resumed = make_tuner(sweep, params, algorithm, trainable, epochs, slots, storage)
    print(
        f"sweep {sweep.name}: {'resuming' if resumed else 'starting'}; {algorithm} search over {', '.join(params)}; "
        f"ASHA on {METRIC} up to {epochs} epochs; {slots} trial(s) at a time; folder {sweep_uri}",
        flush=True,
    )
    t0 = time.perf_counter()
    tuner.fit()
    release_orphaned_placement_groups()
    analysis = tune.ExperimentAnalysis(experiment_path(sweep, storage), storage_filesystem=storage.get("storage_filesystem"))
    rows = summarize(analysis, base)
    out = write_outputs(rows, list(params), base, template, sweep, sweep_uri)
    print(to_markdown(table_rows(rows, list(params))), flush=True)
    stopped = sum(r.stopped_early for r in rows)
    errors = [r for r in rows if r.status == "ERROR"]
    unfinished = [r for r in rows if r.status not in ("TERMINATED", "ERROR")]
    print(f"sweep {sweep.name}: {len(rows)} trials ({stopped} stopped early by ASHA, {len(errors)} errored) in {time.perf_counter() - t0:.0f} s", flush=True)
    for kind, uri in out.items():
        print(f"{kind.replace('_', ' ')}: {uri}", flush=True)
    if unfinished:
        print(f"sweep interrupted with {len(unfinished)} trial(s) unfinished: relaunch the same command to continue", file=sys.stderr, flush=True)
        return 1
    if "best_yaml" not in out:
        fail("no trial reported a validation SAD" + (f"; first error in {errors[0].trial}" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
