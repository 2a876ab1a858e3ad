"""The search algorithm (random, grid, Optuna's TPE) and how many trials run at once on a cluster."""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Mapping

from matting_lib.config import ScalingSettings, require
from ray_jobs.tune.space import TRIAL_CPU


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
