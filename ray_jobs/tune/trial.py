"""One trial: the training job's own TorchTrainer with the trial's parameters, reporting to Tune."""

from __future__ import annotations

import dataclasses
from typing import Any

from matting_lib.config import TrainConfig, from_dict
from ray_jobs.trainer import RunData, make_trainer
from ray_jobs.tune.space import TIME_ATTR, trial_config


def _report_callback() -> Any:
    """Tune's report callback, adding ``epochs_done`` (1-based) for ASHA's time axis."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            first = {**metrics[0], TIME_ATTR: int(metrics[0]["epoch"]) + 1}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport()


def run_trial(params: dict, *, template: dict, data: RunData) -> None:
    """One trial: the training job with ``params``, as the Train run named after the trial id."""
    import ray.data
    from ray import tune

    # Tune's status table is the sweep's progress; per-trial Ray Data bars would drown it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = trial_config(from_dict(TrainConfig, template), params)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=tune.get_context().get_trial_id()))
    trainer = make_trainer(cfg, data, callbacks=[_report_callback()])
    trainer.fit()
