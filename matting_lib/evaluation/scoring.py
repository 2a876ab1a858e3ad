"""Scoring one image for an evaluation: every model's alpha against the ground truth, per condition.

The rules of what is scored (conditions, the low-light simulation, baselines, routing, folds)
are described in :mod:`ray_jobs.evaluate`, the job that runs this over a dataset; this module
holds no Ray and runs the same in a notebook, the job's process or a Ray task.
"""

from __future__ import annotations

import functools
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from matting_lib import io, metrics
from matting_lib.baselines import GrabCutParams, grabcut_alpha
from matting_lib.data.dataset import DatasetError, load_sample
from matting_lib.data.encode import encode_png
from matting_lib.data.darken import darken
from matting_lib.inference.load import load_predictor
from matting_lib.inference.predictor import DEFAULT_MAX_SIDE, Predictor
from matting_lib.report import ReportRow
from matting_lib.routing import DEFAULT_THRESHOLD, BrightnessRouter, measure_brightness


CONDITIONS = ("normal", "lowlight")

BASELINE = "grabcut"

BACKGROUND = "background"
"""The trivial answer "everything is background" (alpha 0 everywhere), scored beside GrabCut."""

ROUTED = "routed"

FOLD_FIELD = "{fold}"
"""In a checkpoint URI with ``--folds``: replaced by the fold of the image being scored."""

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
    """The fixed low-light condition (seed 001's model, :func:`matting_lib.data.darken.darken`)."""

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
    backend: str = "auto"
    """:func:`matting_lib.inference.load.load_predictor`'s ``backend``: ``auto`` runs an ``.onnx``
    export on ONNX Runtime, and a checkpoint on ONNX Runtime on CPU, on torch on CUDA."""
    grid_names: frozenset[str] = frozenset()
    """Images whose inputs and predictions come back for the visual grid."""
    alphas_uri: str = ""
    """When set, every prediction is written as ``<alphas_uri>/<condition>/<model>/<name>.png``."""
    folds: tuple[tuple[str, int], ...] = ()
    """(image name, fold) pairs from ``--folds``: a checkpoint URI with ``{fold}`` scores each
    image with the model of that image's fold, which never saw it."""
    refine: tuple[str, ...] = ("auto",)
    """Refinement modes scored (:data:`matting_lib.refine.MODES` or ``auto``). With one, each
    model's column is its name; with several, ``<name>:<mode>`` per mode."""
    refiner: str = ""
    """A learned refiner (file or checkpoint, ``{fold}`` allowed) used instead of the ones the
    checkpoints carry."""
    subject_prior: bool = True
    """Let the ImageNet subject prior stand in for an empty alpha, as the service does."""

    def column(self, model: str, mode: str) -> str:
        """The name a model's results go under for a refinement mode."""
        return model if len(self.refine) == 1 else f"{model}:{mode}"

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


def predictor(uri: str, spec: EvalSpec, refiner: str = "") -> Predictor:
    """``uri``'s predictor (a checkpoint or an ``.onnx`` export) for ``spec``, through
    :func:`matting_lib.inference.load.load_predictor`; loaded once per process (the driver, or
    each Ray worker)."""
    return _load(uri, refiner, spec.backend, spec.device, spec.max_side, spec.subject_prior)


@functools.cache
def _load(uri: str, refiner: str, backend: str, device: str, max_side: int | None, subject_prior: bool) -> Predictor:
    return load_predictor(uri, backend=backend, device=device, max_side=max_side, subject_prior=subject_prior,
                          refiner_uri=refiner)


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
        refiner = spec.checkpoint_for(spec.refiner, image_name) if spec.refiner else ""
        model = predictor(spec.checkpoint_for(uri, image_name), spec, refiner)
        for mode in spec.refine:
            t0 = time.perf_counter()
            alpha = model.predict(image, refine=mode)
            out[spec.column(name, mode)] = (alpha, (time.perf_counter() - t0) * 1000)
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
        result.rows.append({**by_model[spec.column(pick, spec.refine[0])], "model": ROUTED, "routed_to": pick,
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


def worst_images(results: Sequence[ImageResult], model: str, n: int) -> list[str]:
    """The ``n`` images where ``model``'s whole-image MAD (normal light) is highest, worst first."""
    mads = {r["image"]: r["mad"] for res in results for r in res.rows if r["model"] == model and r["condition"] == "normal"}
    return sorted(mads, key=lambda k: -mads[k])[:n]
