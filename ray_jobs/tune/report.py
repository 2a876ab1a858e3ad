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

from matting_lib import io
from matting_lib.config import TrainConfig, dump_config
from matting_lib.io import run_uri
from matting_lib.tables import markdown_table
from ray_jobs.common import storage_args
from ray_jobs.trainer import export_best
from ray_jobs.tune.space import METRIC, TIME_ATTR, SweepConfig, _plain, trial_config


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
    return markdown_table(cols, [[row[c] for c in cols] for row in table], fmt=lambda v: "" if v is None else _fmt(v))


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
