"""Evaluate matting checkpoints on a dataset: per-image table, summary and a visual grid.

The command line of ``python -m ray_jobs.evaluate`` (described in :mod:`ray_jobs.evaluate`):
options, checking the dataset and checkpoints, and the run from scoring to written outputs.
"""

from __future__ import annotations

import argparse
import posixpath
import shlex
import sys
import time
from dataclasses import replace
from typing import Any, Sequence

from matting_lib import io
from matting_lib.baselines import GrabCutParams
from matting_lib.checkpoint import CheckpointError
from matting_lib.data import folds as folds_file
from matting_lib.data.dataset import DatasetError, read_split
from matting_lib.evaluation.scoring import (
    BACKGROUND, BASELINE, CONDITIONS, FOLD_FIELD, ROUTED, EvalSpec, predictor, score_image, worst_images,
)
from matting_lib.evaluation.summary import build_summary, markdown, write_outputs
from matting_lib.inference.backends import BACKENDS
from matting_lib.inference.load import backend_name, parameter_count
from matting_lib.inference.predictor import DEFAULT_MAX_SIDE
from matting_lib.refine import MODES as REFINE_MODES
from matting_lib.refine import resolve_mode
from matting_lib.resize import side_from_flag
from matting_lib.report import save_grid
from matting_lib.routing import DEFAULT_THRESHOLD, BrightnessRouter
from ray_jobs.common import SetupError, check_output, fail
from ray_jobs.evaluate.runner import run_local, run_ray


SPLITS = ("train", "val", "test")
"""Split files that ``--split all`` looks for."""


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
        images = [next((im for im, _ in spec.folds if spec.checkpoint_for(uri, im) == u), "") for u in uris]
        refiners = [spec.checkpoint_for(spec.refiner, im) if spec.refiner else "" for im in images]
        loaded = [predictor(u, spec, r) for u, r in zip(uris, refiners)]
        for mode in spec.refine:  # a mode the model cannot run fails here, before any scoring
            for p in loaded:
                resolve_mode(mode, p.has_refiner)
        p = loaded[0]
        info[name] = {"uri": uri, "parameters": parameter_count(p), "device": str(p.device), "backend": backend_name(p),
                      "checkpoint_metrics": p.metadata.get("metrics", {}),
                      "refine": [resolve_mode(m, p.has_refiner) for m in spec.refine],
                      "refiner": sorted({q.metadata.get("refiner", "") for q in loaded})}
        if len(uris) > 1 or FOLD_FIELD in uri:
            info[name]["fold_checkpoints"] = uris
    return info


def read_folds(uri: str) -> tuple[tuple[str, int], ...]:
    """(name, fold) pairs of ``--folds`` (:func:`matting_lib.data.folds.read_folds`)."""
    try:
        return folds_file.read_folds(uri)
    except ValueError as e:
        raise SetupError(f"--folds: {e}") from None


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
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto (default: ONNX Runtime for an .onnx export, and for a checkpoint on CPU; torch on CUDA), "
                        "torch or onnx (matting_lib.inference.load.load_predictor)")
    p.add_argument("--refine", nargs="+", default=["auto"], metavar="MODE",
                   help="refinement mode(s) to score: auto (learned when the checkpoint carries a refiner, else off), "
                        "learned, classical, off; with several, each model is scored once per mode as NAME:MODE")
    p.add_argument("--no-subject-prior", action="store_true",
                   help="score the network's alpha even where it is empty (by default the ImageNet subject prior "
                        "stands in for an empty alpha, as in the service)")
    p.add_argument("--refiner", default="",
                   help="learned refiner to use instead of the checkpoints' own (a refiner file or a checkpoint "
                        "carrying one; {fold} allowed with --folds)")
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
    DatasetError, CheckpointError, OSError (storage) or ValueError (device, max side, backend)."""
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
    elif FOLD_FIELD in args.refiner:
        raise SetupError(f"--refiner: {FOLD_FIELD} in a refiner URI needs --folds")
    bad = [m for m in args.refine if m != "auto" and m not in REFINE_MODES]
    if bad or len(set(args.refine)) < len(args.refine):
        raise SetupError(f"--refine: modes must be distinct, each one of auto, {', '.join(REFINE_MODES)}; got {' '.join(args.refine)}")
    if args.limit:
        names = names[: args.limit]
    check_output(args.out)
    conditions = CONDITIONS if (args.lowlight or args.routed) else CONDITIONS[:1]
    spec = EvalSpec(
        data=args.data, models=models, conditions=conditions, routed=args.routed,
        router_threshold=args.router_threshold, baseline=None if args.no_baseline else GrabCutParams(),
        max_side=side_from_flag(args.max_side), device=args.device, backend=args.backend, grid_names=frozenset(names[: args.grid]),
        alphas_uri=io.join(args.out, "alphas") if args.save_alphas else "", folds=folds,
        refine=tuple(args.refine), refiner=args.refiner, subject_prior=not args.no_subject_prior,
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
        first = spec.column(spec.models[0][0], spec.refine[0])
        worst = worst_images(results, first, args.grid_worst)
        if worst:
            print(f"grid of the {len(worst)} worst images for {first}: {', '.join(worst)}", flush=True)
            rows = [row for n in worst for row in score_image(n, replace(spec, grid_names=frozenset(worst),
                                                                           conditions=("normal",))).grid]
            uris["grid_worst"] = save_grid(io.join(args.out, "grid_worst.png"), rows, tile=160)
    print(markdown(summary), flush=True)
    print("wrote " + ", ".join(uris.values()), flush=True)
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} image(s) failed: {', '.join(summary['failed'])}", file=sys.stderr, flush=True)
        return 1
    return 0
