"""The sweep's configuration and its search space: what a sweep YAML may say, and what each trial's
training config becomes (:func:`trial_config`). No Ray here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np

from matting_lib.config import ConfigError, ScalingSettings, TrainConfig, from_dict, load_yaml, require, to_dict


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


def plain(value: Any) -> Any:
    """Python scalars for numpy ones (Tune samples numpy types; YAML and configs want plain)."""
    return value.item() if isinstance(value, np.generic) else value


def trial_config(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """``base`` with a trial's parameters applied; validated like any training config."""
    data = to_dict(base)
    for name, value in params.items():
        value = plain(value)
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
