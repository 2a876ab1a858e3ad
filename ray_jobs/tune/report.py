"""A sweep's results: the per-trial table (CSV, Markdown), the validation-SAD plot, ``best.yaml``
and the best trial's checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import io as stdio
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from matting_lib import charts, io
from matting_lib.config import TrainConfig, dump_config
from matting_lib.io import run_uri
from matting_lib.tables import markdown_table
from ray_jobs.common import storage_args
from ray_jobs.trainer import export_best
from ray_jobs.tune.space import METRIC, TIME_ATTR, SweepConfig, plain, trial_config


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
        params = {k: plain(v) for k, v in trial.config.items()}
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
    return markdown_table(cols, [[row[c] for c in cols] for row in table], fmt=lambda v: "" if v is None else _fmt(v))


PALETTE = charts.TABLEAU10
"""The trials' colours (8-bit RGB, Tableau-10), cycled over trials in table order."""

LEGEND_ROWS = 20
"""Trials named in the legend; more are counted in one "+N more" line."""


def plot_curves(rows: Sequence[TrialSummary], title: str, size: tuple[int, int] = (960, 540)) -> np.ndarray:
    """Validation SAD against epoch for every trial (uint8 RGB of ``size``, matplotlib with Agg).

    One coloured line per trial; a trial ASHA stopped ends in a cross. The legend lists each
    trial with its best SAD, best first.
    """
    w, h = size
    fig = charts.figure(w, h)
    drawn = [r for r in rows if r.curve]
    if not drawn:
        fig.suptitle(title, x=0.02, ha="left", fontsize=11)
        fig.text(0.5, 0.5, "no trial reported a validation SAD", ha="center", va="center", fontsize=11)
        return charts.to_rgb(fig)
    # Pixel margins as before: the axes from x 80 to w-250 (the legend on the right), y 40 to h-50.
    fig.subplots_adjust(left=80 / w, right=1 - 250 / w, top=1 - 40 / h, bottom=50 / h)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val SAD")
    ax.grid(True, color=charts.colour((200, 200, 200)), linewidth=0.8)
    x_max = max(2, max(r.epochs_run for r in drawn))
    ax.set_xticks(range(1, x_max + 1, max(1, math.ceil(x_max / 10))))
    ax.set_xlim(1 - 0.02 * (x_max - 1), x_max + 0.02 * (x_max - 1))
    for i, r in enumerate(drawn):
        color = charts.colour(PALETTE[i % len(PALETTE)])
        epochs, sads = zip(*r.curve)
        label = f"{r.trial} {r.best_sad:.3g}" + (" stopped" if r.stopped_early else "")
        ax.plot(epochs, sads, color=color, linewidth=2, marker="o", markersize=5,
                label=label if i < LEGEND_ROWS else "_nolegend_")
        if r.stopped_early:
            ax.plot(epochs[-1], sads[-1], color=color, marker="x", markersize=12, markeredgewidth=2.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False, fontsize=8)
    if len(drawn) > LEGEND_ROWS:
        fig.text(1 - 235 / w, 50 / h, f"+{len(drawn) - LEGEND_ROWS} more", fontsize=8)
    return charts.to_rgb(fig)


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
    from matting_lib.data.encode import encode_png

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
