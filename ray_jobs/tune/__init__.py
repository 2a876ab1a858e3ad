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

The package: :mod:`~ray_jobs.tune.space` (the sweep YAML and the search space),
:mod:`~ray_jobs.tune.search` (algorithm and concurrency), :mod:`~ray_jobs.tune.trial` (one
trial), :mod:`~ray_jobs.tune.placement_groups` (releasing stopped trials' placement groups:
private Ray API, pinned), :mod:`~ray_jobs.tune.report` (the outputs) and
:mod:`~ray_jobs.tune.runner` (the driver, ``main``).
"""
