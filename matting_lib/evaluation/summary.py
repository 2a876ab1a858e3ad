"""An evaluation's results summed up: per-condition per-model means, the router's accuracy, and
the files written (``per_image.csv``, ``summary.json``, ``summary.md``, ``grid.png``)."""

from __future__ import annotations

import argparse
import csv
import io as _io
import json
import math
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from matting_lib import io
from matting_lib.evaluation.scoring import BACKGROUND, BASELINE, CSV_COLUMNS, METRICS, ROUTED, UNITS, EvalSpec, ImageResult
from matting_lib.report import save_grid
from matting_lib.tables import markdown_table


def _mean(values: list[float]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def means(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{condition: {model: {"n", "n_unknown", <metric>, <metric>_unknown, "ms"}}}`` (nan-free means)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["condition"], {}).setdefault(r["model"], {"rows": []})["rows"].append(r)
    for models in out.values():
        for model, entry in models.items():
            group = entry.pop("rows")
            entry["n"] = len(group)
            entry["n_unknown"] = sum(bool(r["has_trimap"]) for r in group)
            for col in list(METRICS) + [f"{m}_unknown" for m in METRICS] + ["ms"]:
                entry[col] = _mean([r[col] for r in group])
    return out


def router_summary(rows: Sequence[dict[str, Any]], table: dict, spec: EvalSpec) -> dict[str, Any]:
    """Router accuracy (overall and per condition) and the routed SAD against the best single model."""
    routed = [r for r in rows if r["model"] == ROUTED]
    out: dict[str, Any] = {
        "threshold": spec.router_threshold,
        "bright_model": spec.router.bright_model,
        "dark_model": spec.router.dark_model,
        "accuracy": _mean([float(r["router_correct"]) for r in routed]),
        "per_condition": {},
    }
    for cond, models in table.items():
        cond_rows = [r for r in routed if r["condition"] == cond]
        singles = {m: v["sad"] for m, v in models.items() if m not in (ROUTED, BASELINE, BACKGROUND) and v["sad"] is not None}
        best = min(singles, key=singles.get) if singles else None
        routed_sad = models.get(ROUTED, {}).get("sad")
        gap = None
        if best is not None and routed_sad is not None and singles[best] > 0:
            gap = 100.0 * (routed_sad - singles[best]) / singles[best]
        out["per_condition"][cond] = {
            "accuracy": _mean([float(r["router_correct"]) for r in cond_rows]),
            "expected_model": spec.expected_route(cond),
            "routed_to": {m: sum(r["routed_to"] == m for r in cond_rows) for m in sorted({r["routed_to"] for r in cond_rows})},
            "best_single_model": best,
            "best_single_sad": singles.get(best) if best else None,
            "routed_sad": routed_sad,
            "routed_sad_gap_pct": gap,
        }
    return out


def build_summary(spec: EvalSpec, args: argparse.Namespace, names: Sequence[str], results: Sequence[ImageResult],
                  model_info: dict[str, dict[str, Any]], elapsed: float) -> dict[str, Any]:
    rows = [r for res in results for r in res.rows]
    table = means(rows)
    reference = spec.column(spec.models[0][0], spec.refine[0])
    for models in table.values():
        ref_sad = models.get(reference, {}).get("sad")
        for entry in models.values():
            entry["sad_vs_reference_pct"] = (
                100.0 * (entry["sad"] / ref_sad - 1.0) if ref_sad and entry["sad"] is not None else None)
    summary: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": args.command,
        "data": spec.data,
        "split": args.split,
        "n_images": len(names),
        "n_scored": sum(not r.error for r in results),
        "n_with_trimap": len({r["image"] for r in rows if r["has_trimap"]}),
        "failed": {r.name: r.error for r in results if r.error},
        "conditions": list(spec.conditions),
        "lowlight": {**asdict(spec.lowlight), "noise_rng": "numpy.random.default_rng([seed, zlib.crc32(name)])",
                     "model": "round(clip(Poisson(peak * scale * x**(1/gamma)) / peak + N(0, read_noise^2), 0, 1) * 255)"}
        if "lowlight" in spec.conditions else None,
        "models": model_info,
        "baseline": {"name": BASELINE, "method": "OpenCV GrabCut from a border rectangle, hard mask feathered",
                     "params": asdict(spec.baseline), "trivial": f"{BACKGROUND}: alpha 0 everywhere"}
        if spec.baseline is not None else None,
        "cross_validation": {"folds_file": args.folds, "folds": fold_lists(spec.folds)} if spec.folds else None,
        "predictor": {"max_side": spec.max_side, "device": spec.device, "refine": list(spec.refine), "refiner": spec.refiner,
                      "subject_prior": spec.subject_prior,
                      "device_used": sorted({m["device"] for m in model_info.values()})},
        "units": UNITS,
        "reference_model": reference,
        "means": table,
        "router": router_summary(rows, table, spec) if spec.routed else None,
        "elapsed_s": round(elapsed, 1),
    }
    return _json_safe(summary)


def _json_safe(value: Any) -> Any:
    """nan/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


NUMBER_FORMATS = {"sad": "{:.3f}", "mse": "{:.5f}", "mad": "{:.4f}", "grad": "{:.3f}", "conn": "{:.3f}", "ms": "{:.0f}"}


def _fmt(value: Any, col: str) -> str:
    return "-" if value is None else NUMBER_FORMATS[col.removesuffix("_unknown")].format(value)


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown report: settings, one table per condition, the router."""
    lines = [f"# Evaluation: {summary['data']} (split {summary['split']})", "",
             f"- {summary['n_scored']} of {summary['n_images']} images scored, "
             f"{summary['n_with_trimap']} with trimaps; created {summary['created']}",
             f"- command: `{summary['command']}`"]
    for name, info in summary["models"].items():
        lines.append(f"- model `{name}`: {info['uri']} ({info['parameters']:,} parameters)")
    if summary["baseline"]:
        lines.append(f"- baseline `{BASELINE}`: {summary['baseline']['method']}; {summary['baseline']['params']}")
        lines.append(f"- baseline `{BACKGROUND}`: the trivial answer, alpha 0 everywhere")
    if summary.get("cross_validation"):
        cv = summary["cross_validation"]
        lines.append(f"- cross-validation ({cv['folds_file']}): checkpoints with `{{fold}}` scored each image with its "
                     "fold's model, trained without that fold's photos; folds: "
                     + "; ".join(f"{k}: {', '.join(f)}" for k, f in enumerate(cv["folds"])))
    p = summary["predictor"]
    lines.append(f"- predictor: max side {p['max_side'] or 'full'}, device {p['device']} ({', '.join(p['device_used'])})")
    if summary["lowlight"]:
        ll = summary["lowlight"]
        lines.append(f"- low-light condition: gamma {ll['gamma']}, scale {ll['scale']}, peak {ll['peak']}, "
                     f"read noise {ll['read_noise']}, seed {ll['seed']} (noise rng {ll['noise_rng']})")
    lines += [f"- units: {summary['units']}", ""]
    has_unknown = summary["n_with_trimap"] > 0
    cols = list(METRICS) + ([f"{m}_unknown" for m in METRICS] if has_unknown else []) + ["ms"]
    heads = [c.upper().replace("_UNKNOWN", " (unk.)") if c != "ms" else "ms/img" for c in cols]
    heads.append(f"SAD vs {summary['reference_model']}")
    for cond, models in summary["means"].items():
        rows = [[model, m["n"], *(_fmt(m[c], c) for c in cols),
                 "-" if m["sad_vs_reference_pct"] is None else f"{m['sad_vs_reference_pct']:+.1f}%"]
                for model, m in models.items()]
        lines += [f"## {cond}", "", *markdown_table(["model", "n", *heads], rows, align="lr" + "r" * len(heads)).splitlines(), ""]
    if summary["router"]:
        r = summary["router"]
        lines += ["## Router", "", f"BrightnessRouter threshold {r['threshold']}: overall accuracy "
                  f"{_pct(r['accuracy'])} ({r['bright_model']} for normal light, {r['dark_model']} for low light).", ""]
        rows = [[cond, _pct(c["accuracy"]), ", ".join(f"{m}: {k}" for m, k in c["routed_to"].items()), c["best_single_model"],
                 _fmt(c["best_single_sad"], "sad"), _fmt(c["routed_sad"], "sad"),
                 "-" if c["routed_sad_gap_pct"] is None else f"{c['routed_sad_gap_pct']:+.1f}%"]
                for cond, c in r["per_condition"].items()]
        header = ["condition", "accuracy", "routed to", "best single model", "its SAD", "routed SAD", "gap"]
        lines += [*markdown_table(header, rows, align="lr  rrr").splitlines(), ""]
    if summary["failed"]:
        lines += ["## Failed images", ""] + [f"- {n}: {e}" for n, e in summary["failed"].items()] + [""]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def per_image_csv(results: Sequence[ImageResult]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for res in results:
        for r in res.rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


def write_outputs(out: str, results: Sequence[ImageResult], summary: dict[str, Any]) -> dict[str, str]:
    """Write the CSV, JSON, Markdown and grid under ``out``; returns {kind: URI}."""
    uris = {k: io.join(out, f) for k, f in
            (("csv", "per_image.csv"), ("json", "summary.json"), ("md", "summary.md"), ("grid", "grid.png"))}
    io.write_text(uris["csv"], per_image_csv(results))
    io.write_text(uris["json"], json.dumps(summary, indent=1))
    io.write_text(uris["md"], markdown(summary))
    grid = [row for res in results for row in res.grid]
    if grid:
        save_grid(uris["grid"], grid, tile=160)
    else:
        uris.pop("grid")
    return uris


def fold_lists(folds: Sequence[tuple[str, int]]) -> list[list[str]]:
    """(name, fold) pairs -> the names of fold 0, 1, ..."""
    k = max((f for _, f in folds), default=-1) + 1
    return [[n for n, f in folds if f == i] for i in range(k)]
