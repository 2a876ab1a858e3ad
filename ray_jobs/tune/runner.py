"""Ray Tune sweep over the training job: learning rate, loss weights, low-light module, stage lengths.

The driver of ``python -m ray_jobs.tune`` (described in :mod:`ray_jobs.tune`): the sweep's
config, the data check, the Tuner (new or resumed), and the outputs once it has run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Mapping

from matting_lib import io
from matting_lib.config import ConfigError, TrainConfig, dump_config, require, to_dict
from matting_lib.io import run_uri
from ray_jobs.common import fail, init_ray, job_parser, load_job_config, storage_args, worker_env
from ray_jobs.trainer import prepare_data
from ray_jobs.tune.placement_groups import orphan_release_callback, release_orphaned_placement_groups
from ray_jobs.tune.report import summarize, table_rows, to_markdown, write_outputs
from ray_jobs.tune.search import concurrency, make_search_alg, resolve_algorithm
from ray_jobs.tune.space import METRIC, TIME_ATTR, TRIAL_CPU, Param, SweepConfig, load_base, max_epochs, parse_space
from ray_jobs.tune.trial import run_trial


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
        name=sweep.name, failure_config=tune.FailureConfig(max_failures=0), callbacks=[orphan_release_callback()], verbose=1, **storage
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
    data = prepare_data(base, manifest_dir=sweep_uri)  # a built manifest goes in the sweep's folder
    init_ray(args.address, env=data.env)
    data = dataclasses.replace(data, env=worker_env(data.env))  # the driver's S3 settings, for the workers of every trial
    import ray
    from ray import tune

    try:
        slots = concurrency(sweep.resources, ray.cluster_resources(), sweep.search.max_concurrent_trials)
    except ConfigError as e:
        fail(f"config error: {e}", code=2)
    _check_same_sweep(sweep, sweep_uri)
    template = trial_template(base, sweep, sweep_uri)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, template=to_dict(template), data=data),
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
