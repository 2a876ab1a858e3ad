"""Evaluate matting checkpoints on a dataset: per-image table, summary and a visual grid.

    python -m ray_jobs.evaluate --checkpoint models/base.pt --checkpoint models/lowlight.pt \\
        --data ../shared/data/alphamatting --split train --lowlight --routed --out eval/

What is scored, per image of ``--split`` (``all``: every split file present):

- every checkpoint (named ``name=URI``, or by file stem: ``models/base.pt`` is ``base``; the
  first one is the reference that the summary's "SAD vs" column compares every row with) and
  the classical baseline ``grabcut`` (:func:`matting_lib.baselines.grabcut_alpha`, trimap-free,
  same run, same images), through :class:`matting_lib.inference.predictor.Predictor` with the
  service's settings (``--max-side``);
- metrics of :mod:`matting_lib.metrics` (SAD, MSE, MAD, Grad, Conn; SAD/Grad/Conn in
  thousands, MSE/MAD means, alpha in [0, 1]) over the whole image and, for images with a
  ``trimaps/`` file, over its unknown region (value 128): columns ``<metric>_unknown``;
- condition ``normal`` (the image as stored) and, with ``--lowlight``, condition
  ``lowlight``: the same image darkened by seed 001's physical simulation
  (:func:`matting_lib.data.lowlight.darken`) at the fixed :data:`LOWLIGHT` parameters, the
  noise drawn from ``numpy.random.default_rng([seed, crc32(name)])``, so every run, order
  and worker count gives the same images;
- with ``--folds FOLDS_JSON`` (from ``ray_jobs.prepare_data --folds``): cross-validation. The
  photos of the folds are scored, and a checkpoint URI containing ``{fold}`` is resolved per
  image to its fold's model (``base=runs/cv-fold{fold}/best.pt``), which never saw the photo;
- the trivial answer ``background`` (alpha 0 everywhere) beside GrabCut, so a model that
  misses its subjects is visible as one (both left out with ``--no-baseline``);
- with ``--routed`` (implies ``--lowlight``): pseudo-model ``routed``, the service's
  behaviour. Each input, normal and low-light, goes to the checkpoint that
  :class:`matting_lib.routing.BrightnessRouter` picks from the input's brightness
  (checkpoints must be named ``base`` and ``lowlight``); its row repeats that model's scores
  with ``routed_to`` and ``router_correct`` (normal images should go to ``base``, low-light
  ones to ``lowlight``). The summary has the router's accuracy.

Outputs under ``--out`` (local folder or ``s3://``): ``per_image.csv`` (one row per image,
condition and model), ``summary.json`` and ``summary.md`` (conditions, parameters, models,
per-condition per-model means, router accuracy) and ``grid.png`` (input | ground truth |
each model, the first ``--grid`` images, each condition), with ``--grid-worst N`` also
``grid_worst.png`` (the N images the first model does worst on); with ``--save-alphas`` also every
predicted alpha as ``alphas/<condition>/<model>/<name>.png`` (8-bit). One progress line per
image.

Parallelism: by default everything runs in this process (fine on a 2-CPU laptop: torch
uses the cores for each forward pass). ``--ray`` (or ``--address``) scores images as Ray
tasks of ``--task-cpus`` CPUs each (fractional, default 0.5; ``--task-gpus`` for
``--device cuda``), each worker loading the checkpoints once; results are identical. Exit status: 0 all images scored, 1 some images
failed (outputs still written, failures listed), 2 bad options, checkpoint or dataset (one
``error:`` line).
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import json
import math
import posixpath
import shlex
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np

from matting_lib import io, metrics
from matting_lib.baselines import GrabCutParams, grabcut_alpha
from matting_lib.checkpoint import CheckpointError
from matting_lib.data.dataset import DatasetError, load_sample, read_split
from matting_lib.data.decode import encode_png
from matting_lib.data.lowlight import darken
from matting_lib.inference.predictor import DEFAULT_MAX_SIDE, Predictor
from matting_lib.report import ReportRow, save_grid
from matting_lib.routing import DEFAULT_THRESHOLD, BrightnessRouter, measure_brightness
from ray_jobs.common import SetupError, check_output, fail, init_ray

CONDITIONS = ("normal", "lowlight")
BASELINE = "grabcut"
BACKGROUND = "background"
"""The trivial answer "everything is background" (alpha 0 everywhere), scored beside GrabCut."""
ROUTED = "routed"
FOLD_FIELD = "{fold}"
"""In a checkpoint URI with ``--folds``: replaced by the fold of the image being scored."""
SPLITS = ("train", "val", "test")
"""Split files that ``--split all`` looks for."""
METRICS: dict[str, Callable[..., float]] = {
    "sad": metrics.sad,
    "mse": metrics.mse,
    "mad": metrics.mad,
    "grad": metrics.gradient_error,
    "conn": metrics.connectivity_error,
}
UNITS = (
    "alpha in [0, 1]; SAD, Grad and Conn are sums over the region divided by 1000 (Composition-1k); "
    "MSE and MAD are means over the region; '_unknown' = the trimap's unknown region (value 128)"
)
CSV_COLUMNS = (
    ["image", "condition", "model", "routed_to", "router_correct", "brightness", "height", "width", "has_trimap", "ms"]
    + list(METRICS)
    + [f"{m}_unknown" for m in METRICS]
)


@dataclass(frozen=True)
class LowlightSpec:
    """The fixed low-light condition (seed 001's model, :func:`matting_lib.data.lowlight.darken`)."""

    gamma: float = 0.45
    """Darkening gamma, seed convention ``x ** (1/gamma)``: the middle of the seed's [0.3, 0.6]."""
    scale: float = 0.3
    """Light scale: the seed's default."""
    peak: float = 255.0
    """Photo-electrons at full white: the seed's ``Poisson(255 y)`` draw."""
    read_noise: float = 0.0
    """Additive read noise std (the seed has none)."""
    seed: int = 0
    """Noise seed; image ``name`` uses ``default_rng([seed, crc32(name)])``."""

    def apply(self, image: np.ndarray, name: str) -> np.ndarray:
        """The low-light version of ``image`` (uint8 RGB), the same for the same name every time."""
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode("utf-8"))])
        return darken(image, rng, self.gamma, self.scale, self.peak, self.read_noise)


LOWLIGHT = LowlightSpec()
"""Fixed on purpose: every evaluation and model card uses the same low-light images."""


@dataclass(frozen=True)
class EvalSpec:
    """Everything a scoring task needs (picklable; sent to Ray tasks as is)."""

    data: str
    models: tuple[tuple[str, str], ...]
    """(name, checkpoint URI), in command-line order."""
    conditions: tuple[str, ...] = ("normal",)
    routed: bool = False
    router_threshold: float = DEFAULT_THRESHOLD
    baseline: GrabCutParams | None = field(default_factory=GrabCutParams)
    lowlight: LowlightSpec = LOWLIGHT
    max_side: int | None = DEFAULT_MAX_SIDE
    device: str = "auto"
    grid_names: frozenset[str] = frozenset()
    """Images whose inputs and predictions come back for the visual grid."""
    alphas_uri: str = ""
    """When set, every prediction is written as ``<alphas_uri>/<condition>/<model>/<name>.png``."""
    folds: tuple[tuple[str, int], ...] = ()
    """(image name, fold) pairs from ``--folds``: a checkpoint URI with ``{fold}`` scores each
    image with the model of that image's fold, which never saw it."""

    def checkpoint_for(self, uri: str, image: str) -> str:
        """``uri`` with ``{fold}`` replaced by ``image``'s fold (URIs without it are returned as they are)."""
        if FOLD_FIELD not in uri:
            return uri
        fold = dict(self.folds).get(image)
        if fold is None:
            raise ValueError(f"{image}: in no fold of --folds, so {uri} names no checkpoint for it")
        return uri.replace(FOLD_FIELD, str(fold))

    @property
    def router(self) -> BrightnessRouter:
        return BrightnessRouter(self.router_threshold)

    def expected_route(self, condition: str) -> str:
        """The model a correct router picks for a condition."""
        return self.router.dark_model if condition == "lowlight" else self.router.bright_model


@dataclass
class ImageResult:
    """What scoring one image returns: table rows, grid rows, or the error that stopped it."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    grid: list[ReportRow] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------- scoring one image

_PREDICTORS: dict[tuple[str, str, int | None], Predictor] = {}
"""Loaded once per process (the driver, or each Ray worker)."""


def predictor(uri: str, spec: EvalSpec) -> Predictor:
    key = (uri, spec.device, spec.max_side)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = Predictor.from_checkpoint(uri, device=spec.device, max_side=spec.max_side)
    return _PREDICTORS[key]


def score(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None) -> dict[str, float]:
    """Whole-image metrics, plus ``<metric>_unknown`` (nan without a trimap)."""
    out = {m: fn(pred, gt) for m, fn in METRICS.items()}
    for m, fn in METRICS.items():
        out[f"{m}_unknown"] = fn(pred, gt, trimap) if trimap is not None else float("nan")
    return out


def predictions(image: np.ndarray, spec: EvalSpec, image_name: str = "") -> dict[str, tuple[np.ndarray, float]]:
    """``{model: (alpha, ms)}`` for every checkpoint (its fold's, with ``{fold}``), GrabCut and
    the all-background answer."""
    out = {}
    for name, uri in spec.models:
        t0 = time.perf_counter()
        alpha = predictor(spec.checkpoint_for(uri, image_name), spec).predict(image)
        out[name] = (alpha, (time.perf_counter() - t0) * 1000)
    if spec.baseline is not None:
        t0 = time.perf_counter()
        alpha = grabcut_alpha(image, spec.baseline)
        out[BASELINE] = (alpha, (time.perf_counter() - t0) * 1000)
        out[BACKGROUND] = (np.zeros(image.shape[:2], np.float32), 0.0)
    return out


def score_condition(name: str, condition: str, image: np.ndarray, alpha_gt: np.ndarray,
                    trimap: np.ndarray | None, spec: EvalSpec, result: ImageResult) -> None:
    """Append the rows (and grid row) of one image under one condition to ``result``."""
    brightness = measure_brightness(image)
    h, w = alpha_gt.shape
    base = {"image": name, "condition": condition, "routed_to": "", "router_correct": "",
            "brightness": round(brightness, 5), "height": h, "width": w, "has_trimap": trimap is not None}
    preds = predictions(image, spec, name)
    if spec.alphas_uri:
        for model, (alpha, _) in preds.items():
            png = encode_png(np.rint(alpha * 255).astype(np.uint8))
            io.write_bytes(io.join(spec.alphas_uri, condition, model, f"{name}.png"), png)
    by_model = {}
    for model, (alpha, ms) in preds.items():
        by_model[model] = {**base, "model": model, "ms": round(ms, 1), **score(alpha, alpha_gt, trimap)}
        result.rows.append(by_model[model])
    if spec.routed:
        pick = spec.router.pick(brightness)
        result.rows.append({**by_model[pick], "model": ROUTED, "routed_to": pick,
                            "router_correct": pick == spec.expected_route(condition)})
    if name in spec.grid_names:
        route = f" -> {spec.router.pick(brightness)}" if spec.routed else ""
        result.grid.append(ReportRow(
            label=f"{name} ({condition})", image=image, alpha_gt=alpha_gt,
            predictions={m: a for m, (a, _) in preds.items() if m != BACKGROUND},  # a blank tile says nothing
            notes={"input": f"brightness {brightness:.3f}{route}",
                   **{m: f"SAD {r['sad']:.2f} MAD {r['mad']:.3f}" for m, r in by_model.items()}},
        ))


def score_image(name: str, spec: EvalSpec) -> ImageResult:
    """Score one image under every condition; never raises (errors go into ``error``)."""
    t0 = time.perf_counter()
    result = ImageResult(name)
    try:
        sample = load_sample(spec.data, name)
        for condition in spec.conditions:
            image = spec.lowlight.apply(sample.image, name) if condition == "lowlight" else sample.image
            score_condition(name, condition, image, sample.alpha, sample.trimap, spec, result)
    except (DatasetError, OSError, ValueError, RuntimeError) as e:
        result.rows, result.grid, result.error = [], [], f"{type(e).__name__}: {e}"
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- running


def progress_line(i: int, n: int, res: ImageResult) -> str:
    if res.error:
        return f"[{i}/{n}] {res.name}: FAILED {res.error}"
    parts = []
    for cond in dict.fromkeys(r["condition"] for r in res.rows):
        rows = [r for r in res.rows if r["condition"] == cond]
        scores = " ".join(f"{r['model']}{'->' + r['routed_to'] if r['routed_to'] else ''}={r['mad']:.4f}" for r in rows)
        parts.append(f"{cond}: MAD {scores}")
    return f"[{i}/{n}] {res.name} " + " | ".join(parts) + f" ({res.seconds:.1f} s)"


def run_local(names: Sequence[str], spec: EvalSpec) -> list[ImageResult]:
    results = []
    for i, name in enumerate(names, 1):
        results.append(score_image(name, spec))
        print(progress_line(i, len(names), results[-1]), flush=True)
    return results


def run_ray(names: Sequence[str], spec: EvalSpec, address: str | None, task_cpus: float,
            task_gpus: float = 0.0) -> list[ImageResult]:
    """One Ray task per image (``task_cpus`` CPUs, ``task_gpus`` GPUs); progress as tasks
    finish; results in input order. A task that dies (worker crash) is one failed image."""
    import ray

    init_ray(address)
    task = ray.remote(num_cpus=task_cpus, num_gpus=task_gpus, max_retries=1)(score_image)
    spec_ref = ray.put(spec)
    pending = {task.remote(name, spec_ref): name for name in names}
    done: dict[str, ImageResult] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        try:
            res = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            res = ImageResult(name, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        done[name] = res
        print(progress_line(len(done), len(names), res), flush=True)
    return [done[n] for n in names]


# --------------------------------------------------------------------------- summary


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
    reference = spec.models[0][0]
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
        "predictor": {"max_side": spec.max_side, "device": spec.device,
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
        lines += [f"## {cond}", "", "| model | n | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
        for model, m in models.items():
            rel = "-" if m["sad_vs_reference_pct"] is None else f"{m['sad_vs_reference_pct']:+.1f}%"
            lines.append(f"| {model} | {m['n']} | " + " | ".join(_fmt(m[c], c) for c in cols) + f" | {rel} |")
        lines.append("")
    if summary["router"]:
        r = summary["router"]
        lines += ["## Router", "", f"BrightnessRouter threshold {r['threshold']}: overall accuracy "
                  f"{_pct(r['accuracy'])} ({r['bright_model']} for normal light, {r['dark_model']} for low light).", "",
                  "| condition | accuracy | routed to | best single model | its SAD | routed SAD | gap |",
                  "|---|---:|---|---|---:|---:|---:|"]
        for cond, c in r["per_condition"].items():
            to = ", ".join(f"{m}: {k}" for m, k in c["routed_to"].items())
            gap = "-" if c["routed_sad_gap_pct"] is None else f"{c['routed_sad_gap_pct']:+.1f}%"
            lines.append(f"| {cond} | {_pct(c['accuracy'])} | {to} | {c['best_single_model']} | "
                         f"{_fmt(c['best_single_sad'], 'sad')} | {_fmt(c['routed_sad'], 'sad')} | {gap} |")
        lines.append("")
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


# --------------------------------------------------------------------------- CLI / setup


def parse_models(specs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``name=URI`` or ``URI`` (named by file stem) -> ((name, URI), ...); names unique, not reserved."""
    models: dict[str, str] = {}
    for s in specs:
        head, sep, tail = s.partition("=")
        if sep and head and not any(c in head for c in "/:."):
            name, uri = head, tail
        else:
            name, uri = posixpath.splitext(posixpath.basename(s.rstrip("/")))[0], s
        if not name or not uri:
            raise SetupError(f"--checkpoint {s!r}: expected URI or name=URI")
        if name in (BASELINE, BACKGROUND, ROUTED):
            raise SetupError(f"--checkpoint {s!r}: the name {name!r} is reserved; use name=URI")
        if name in models:
            raise SetupError(f"--checkpoint: two checkpoints are named {name!r} ({models[name]}, {uri}); use name=URI")
        models[name] = uri
    return tuple(models.items())


def load_model_info(spec: EvalSpec) -> dict[str, dict[str, Any]]:
    """Load every checkpoint into this process's predictors (checks files, device and max side).

    Returns ``{name: {uri, parameters, device, checkpoint_metrics}}`` for the summary (the
    device this process resolved; Ray workers resolve ``auto`` on their own node).
    """
    info = {}
    for name, uri in spec.models:
        uris = sorted({spec.checkpoint_for(uri, image) for image, _ in spec.folds}) if FOLD_FIELD in uri else [uri]
        loaded = [predictor(u, spec) for u in uris]
        p = loaded[0]
        n_params = sum(t.numel() for t in p.model.parameters())
        info[name] = {"uri": uri, "parameters": n_params, "device": str(p.device),
                      "checkpoint_metrics": p.metadata.get("metrics", {})}
        if len(uris) > 1 or FOLD_FIELD in uri:
            info[name]["fold_checkpoints"] = uris
    return info


def worst_images(results: Sequence[ImageResult], model: str, n: int) -> list[str]:
    """The ``n`` images where ``model``'s whole-image MAD (normal light) is highest, worst first."""
    mads = {r["image"]: r["mad"] for res in results for r in res.rows if r["model"] == model and r["condition"] == "normal"}
    return sorted(mads, key=lambda k: -mads[k])[:n]


def fold_lists(folds: Sequence[tuple[str, int]]) -> list[list[str]]:
    """(name, fold) pairs -> the names of fold 0, 1, ..."""
    k = max((f for _, f in folds), default=-1) + 1
    return [[n for n, f in folds if f == i] for i in range(k)]


def read_folds(uri: str) -> tuple[tuple[str, int], ...]:
    """(name, fold) pairs from a ``folds.json`` of ``ray_jobs.prepare_data --folds``: its photos
    and, when listed, its validation composites (``val_samples``), each in its photo's fold."""
    try:
        doc = json.loads(io.read_text(uri))
        groups = [list(f) + list(v) for f, v in zip(doc["folds"], doc.get("val_samples") or [[]] * len(doc["folds"]))]
        pairs = tuple((str(n), k) for k, names in enumerate(groups) for n in names)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SetupError(f"--folds: cannot read folds from {uri}: {e}") from None
    if not pairs:
        raise SetupError(f"--folds: {uri} lists no photos")
    return pairs


def split_names(data: str, split: str) -> list[str]:
    """Names of ``split`` (``all``: every split file present, first occurrence kept)."""
    if not io.isdir(data):
        raise SetupError(f"--data: dataset not found: {data}")
    if split != "all":
        return read_split(data, split)
    present = [s for s in SPLITS if io.exists(io.join(data, f"{s}.txt"))]
    if not present:
        raise SetupError(f"--data: {data} has none of {', '.join(s + '.txt' for s in SPLITS)}")
    return list(dict.fromkeys(n for s in present for n in read_split(data, s)))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint URI or name=URI (repeat for several models); default name: file stem")
    p.add_argument("--data", required=True, help="dataset in the seed format, local path or s3://")
    p.add_argument("--split", default="val", help="split file to score: train, val, test... or all (default val)")
    p.add_argument("--lowlight", action="store_true", help="also score low-light versions (fixed simulation)")
    p.add_argument("--routed", action="store_true",
                   help="also score the service's routing between checkpoints named base and lowlight (implies --lowlight)")
    p.add_argument("--router-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"brightness below which the router picks lowlight (default {DEFAULT_THRESHOLD}, the service's)")
    p.add_argument("--out", default="eval_results", help="output folder, local or s3:// (default eval_results)")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help=f"long side the network works at (0 = full size; default {DEFAULT_MAX_SIDE}, the service's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-baseline", action="store_true", help="skip the GrabCut baseline")
    p.add_argument("--limit", type=int, default=0, help="score only the first N images (0 = all)")
    p.add_argument("--grid", type=int, default=6, help="images shown in grid.png (default 6; 0 = no grid)")
    p.add_argument("--grid-worst", type=int, default=0,
                   help="also grid_worst.png: the N images where the first model's MAD is highest (normal light)")
    p.add_argument("--ray", action="store_true", help="score images as Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (implies --ray)")
    p.add_argument("--task-cpus", type=float, default=0.5, help="CPUs per Ray scoring task (default 0.5)")
    p.add_argument("--task-gpus", type=float, default=0.0,
                   help="GPUs per Ray scoring task (e.g. 0.25 with --device cuda; default 0)")
    p.add_argument("--folds", default="",
                   help="folds.json of prepare_data --folds: score its photos, each with the checkpoint of its fold "
                        "(write {fold} in a checkpoint URI, e.g. base=runs/cv-fold{fold}/best.pt)")
    p.add_argument("--save-alphas", action="store_true",
                   help="also write every predicted alpha as <out>/alphas/<condition>/<model>/<name>.png")
    args = p.parse_args(argv)
    args.command = "python -m ray_jobs.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def make_spec(args: argparse.Namespace) -> tuple[EvalSpec, list[str], dict[str, dict[str, Any]]]:
    """Validate options, dataset and checkpoints (loaded here, once); raises SetupError,
    DatasetError, CheckpointError, OSError (storage) or ValueError (device, max side)."""
    models = parse_models(args.checkpoint)
    if args.routed:
        router = BrightnessRouter(args.router_threshold)
        missing = [m for m in (router.bright_model, router.dark_model) if m not in dict(models)]
        if missing:
            raise SetupError(f"--routed needs checkpoints named {router.bright_model} and {router.dark_model} "
                             f"(missing: {', '.join(missing)}); name them with name=URI")
    for opt, value, ok in (("--limit", args.limit, args.limit >= 0), ("--grid", args.grid, args.grid >= 0),
                           ("--grid-worst", args.grid_worst, args.grid_worst >= 0),
                           ("--task-cpus", args.task_cpus, 0 < args.task_cpus <= 64),
                           ("--task-gpus", args.task_gpus, 0 <= args.task_gpus <= 8)):
        if not ok:
            raise SetupError(f"{opt}: invalid value {value}")
    BrightnessRouter(args.router_threshold)  # validates the threshold
    names = split_names(args.data, args.split)
    folds: tuple[tuple[str, int], ...] = ()
    if args.folds:
        folds = read_folds(args.folds)
        in_folds = {n for n, _ in folds}
        scored = [n for n in names if n in in_folds]
        if not scored:
            raise SetupError(f"--folds: none of the images in {args.folds} is in split {args.split!r} of {args.data}")
        if len(scored) < len(names):
            print(f"--folds: {len(names) - len(scored)} image(s) of split {args.split!r} are in no fold and are not scored",
                  flush=True)
        names = scored
    elif any(FOLD_FIELD in uri for _, uri in models):
        raise SetupError(f"--checkpoint: {FOLD_FIELD} in a checkpoint URI needs --folds")
    if args.limit:
        names = names[: args.limit]
    check_output(args.out)
    conditions = CONDITIONS if (args.lowlight or args.routed) else CONDITIONS[:1]
    spec = EvalSpec(
        data=args.data, models=models, conditions=conditions, routed=args.routed,
        router_threshold=args.router_threshold, baseline=None if args.no_baseline else GrabCutParams(),
        max_side=args.max_side or None, device=args.device, grid_names=frozenset(names[: args.grid]),
        alphas_uri=io.join(args.out, "alphas") if args.save_alphas else "", folds=folds,
    )
    return spec, names, load_model_info(spec)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec, names, info = make_spec(args)
    except CheckpointError as e:
        fail(f"--checkpoint: {e}", code=2)
    except (SetupError, DatasetError, OSError) as e:
        fail(str(e), code=2)
    except ValueError as e:  # predictor options (device, max side), router threshold
        fail(f"invalid option: {e}", code=2)
    models = ", ".join([n for n, _ in spec.models] + ([BASELINE] if spec.baseline else []) + ([ROUTED] if spec.routed else []))
    print(f"evaluating {models} on {len(names)} image(s) of {args.data} (split {args.split}), "
          f"conditions: {', '.join(spec.conditions)}", flush=True)
    t0 = time.perf_counter()
    use_ray = args.ray or args.address is not None
    results = run_ray(names, spec, args.address, args.task_cpus, args.task_gpus) if use_ray else run_local(names, spec)
    summary = build_summary(spec, args, names, results, info, time.perf_counter() - t0)
    try:
        uris = write_outputs(args.out, results, summary)
    except OSError as e:
        fail(f"--out: cannot write results: {e}", code=1)
    if args.grid_worst:
        worst = worst_images(results, spec.models[0][0], args.grid_worst)
        if worst:
            print(f"grid of the {len(worst)} worst images for {spec.models[0][0]}: {', '.join(worst)}", flush=True)
            rows = [row for n in worst for row in score_image(n, replace(spec, grid_names=frozenset(worst),
                                                                           conditions=("normal",))).grid]
            uris["grid_worst"] = save_grid(io.join(args.out, "grid_worst.png"), rows, tile=160)
    print(markdown(summary), flush=True)
    print("wrote " + ", ".join(uris.values()), flush=True)
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} image(s) failed: {', '.join(summary['failed'])}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
