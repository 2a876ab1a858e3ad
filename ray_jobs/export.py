"""Export a checkpoint to ONNX (FP32, FP16 or INT8) and check the export against torch.

    python -m ray_jobs.export --checkpoint models/base.pt --format onnx --out models/base.onnx
    python -m ray_jobs.export --checkpoint s3://b/base.pt --format onnx --fp16 --out s3://b/base.fp16.onnx
    python -m ray_jobs.export --checkpoint models/base.pt --format onnx --int8 \\
        --calibration s3://b/dataset --out models/base.int8.onnx
    python -m ray_jobs.export --checkpoint runs/base/checkpoint_.../model.pt --format checkpoint --out models/base.pt
    python -m ray_jobs.export --checkpoint models/base.pt --format checkpoint --refiner runs/refiner/refiner.pt --out models/base.pt

``--refiner FILE`` attaches a learned full-resolution refiner (``python -m ray_jobs.train_refiner``)
to the published checkpoint, or embeds it in the ONNX export (its own FP32 graph inside the
file's metadata, run by the ONNX Runtime backend); without it, a refiner the checkpoint already
carries is kept, and ``--refiner none`` drops it. The parity checks then cover the refined alpha.

``--format checkpoint`` publishes a training checkpoint for serving: the same self-describing
file without the optimizer and scheduler state (``training_state``, about two thirds of a
training checkpoint), its weights, configs, metrics and data fingerprint unchanged, and the
reloaded model checked to give bit-identical alphas. Absolute local paths in its training config
(dataset, run folder, init checkpoint) become ``<local>/<name>``: a published file names no
machine's folders; URIs (``s3://...``) are kept.

Steps: load the checkpoint, export (dynamic batch, height and width), convert (FP16) or
quantize (INT8: static QDQ, calibrated on up to ``--calibration-samples`` images of the
dataset's train split), then the parity check through both predictors (same resizing policy,
``--parity-side`` working side): max and mean absolute alpha difference on the sample images
(the dataset's validation images when ``--calibration`` is given, otherwise generated images
of odd sizes such as 97x131), plus, for INT8, the SAD change on the validation split.
Thresholds default per precision (:func:`matting_lib.inference.export.default_thresholds`) and
can be set with ``--max-abs``, ``--mean-abs`` and ``--max-sad-increase``.

Outputs: the ``.onnx`` and, next to it, ``<name>.parity.json`` with the figures, thresholds and
versions. A failed parity check writes nothing and exits 3; bad arguments or inputs exit 2.
The work is one process (no Ray cluster needed); through ``ray job submit`` it runs on the
node the entrypoint runs on. Local paths and any fsspec URI (``s3://``) work everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from typing import Any, Sequence

from matting_lib import io
from matting_lib.checkpoint import CheckpointError, build_refiner, load_checkpoint
from matting_lib.config import ConfigError
from matting_lib.data.dataset import DatasetError, Sample, load_sample, read_split
from matting_lib.io import StorageError
from matting_lib.resize import side_from_flag
from ray_jobs.common import fail

EXIT_PARITY = 3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a matting checkpoint to ONNX and check its parity with torch.")
    p.add_argument("--checkpoint", required=True, help="checkpoint URI (local path or s3://)")
    p.add_argument("--format", default="onnx", choices=["onnx", "checkpoint"],
                   help="onnx, or checkpoint: a slim release checkpoint (no optimizer state) for serving")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 weights and activations (for GPU runtimes)")
    precision.add_argument("--int8", action="store_true", help="static INT8 quantization (needs --calibration)")
    p.add_argument("--calibration", default="", help="dataset root (seed format): train split calibrates INT8, val split checks parity")
    p.add_argument("--out", required=True, help="output URI ending in .onnx (local path or s3://)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--calibration-samples", type=int, default=64, help="most train images used for INT8 calibration")
    p.add_argument("--val-samples", type=int, default=32, help="most validation images used for the parity and SAD checks")
    p.add_argument("--refiner", default="",
                   help="learned refiner to attach or embed (a refiner file, or a checkpoint carrying one); "
                        "'none' drops the checkpoint's own (default: keep it)")
    p.add_argument("--working-side", type=int, default=None,
                   help="--format checkpoint: set the published model's model.working_side (px; 0 = no limit, stored as null)")
    p.add_argument("--parity-side", type=int, default=512, help="working long side (max_side) for calibration and parity, px")
    p.add_argument("--max-abs", type=float, default=None, help="largest accepted per-pixel |alpha difference| (default per precision)")
    p.add_argument("--mean-abs", type=float, default=None, help="largest accepted per-image mean |alpha difference| (default per precision)")
    p.add_argument("--max-sad-increase", type=float, default=None, help="INT8: largest accepted relative SAD increase on val (default 0.02)")
    args = p.parse_args(argv)
    if args.format == "checkpoint":
        if not args.out.lower().endswith(".pt"):
            p.error(f"--format checkpoint: --out must end in .pt, got {args.out!r}")
        if args.fp16 or args.int8:
            p.error("--fp16 and --int8 are ONNX precisions; --format checkpoint keeps the FP32 weights")
        return args
    if not args.out.lower().endswith(".onnx"):
        p.error(f"--out must end in .onnx, got {args.out!r}")
    if args.int8 and not args.calibration:
        p.error("--int8 needs --calibration DATA_URI (real images to calibrate on)")
    for name in ("calibration_samples", "val_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 32 <= args.parity_side <= 8192:
        p.error("--parity-side must be in [32, 8192]")
    return args


def sidecar_uri(out: str) -> str:
    """``.../name.onnx`` -> ``.../name.parity.json``."""
    return out[: -len(".onnx")] + ".parity.json"


def load_split(root: str, split: str, limit: int) -> list[Sample]:
    """Up to ``limit`` decoded samples of ``split`` (evenly spread over the split)."""
    names = read_split(root, split)
    step = max(1, len(names) // limit)
    return [load_sample(root, n) for n in names[::step][:limit]]


def thresholds(args: argparse.Namespace, precision: str):
    from matting_lib.inference.export import default_thresholds

    t = default_thresholds(precision)
    given = {"max_abs": args.max_abs, "mean_abs": args.mean_abs, "max_sad_increase": args.max_sad_increase}
    return replace(t, **{k: v for k, v in given.items() if v is not None})


def redact_local_paths(value: Any) -> Any:
    """``value`` with every absolute local path string replaced by ``<local>/<basename>``."""
    if isinstance(value, dict):
        return {k: redact_local_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_local_paths(v) for v in value)
    if isinstance(value, str) and value.startswith("/") and "://" not in value:
        return "<local>/" + value.rstrip("/").rsplit("/", 1)[-1]
    return value


def publish(args: argparse.Namespace) -> dict:
    """``--format checkpoint``: rewrite without ``training_state``; check the reload is identical."""
    import numpy as np

    from matting_lib.checkpoint import checkpoint_bytes, parse_checkpoint
    from matting_lib.inference.export import generated_images
    from matting_lib.inference.predictor import Predictor

    ck = load_checkpoint(args.checkpoint)
    model = ck.build_model().eval()
    refiner_data = chosen_refiner(args, ck)
    model_config = ck.model_config
    if args.working_side is not None:  # an inference setting, chosen by measurement after training
        model_config = replace(model_config, working_side=side_from_flag(args.working_side))
        model.config = model_config
        print(f"export: model.working_side {ck.model_config.working_side} -> {model_config.working_side}", flush=True)
    data = checkpoint_bytes(model, model_config=model_config, train_config=redact_local_paths(ck.train_config), metrics=ck.metrics,
                            data_fingerprint=ck.data_fingerprint, refiner=refiner_data)
    reloaded = parse_checkpoint(data, args.out)
    again, again_refiner = reloaded.build_model().eval(), reloaded.build_refiner()
    refiner = build_refiner(refiner_data, args.refiner or args.checkpoint) if refiner_data else None
    images = generated_images()
    a = Predictor(model, device="cpu", max_side=args.parity_side, refiner=refiner, subject_prior=False).predict_batch(images)
    b = Predictor(again, device="cpu", max_side=args.parity_side, refiner=again_refiner, subject_prior=False).predict_batch(images)
    max_abs = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    if max_abs != 0.0:
        raise CheckpointError(f"{args.out}: reloaded model differs from {args.checkpoint} (max |alpha difference| {max_abs})")
    io.write_bytes(args.out, data)
    with_refiner = f", with the learned refiner of {args.refiner or args.checkpoint}" if refiner_data else ", no refiner"
    print(f"export: wrote {args.out} ({len(data) / 1e6:.1f} MB, without training state{with_refiner}); "
          "reload gives identical alphas", flush=True)
    return {"checkpoint": args.checkpoint, "out": args.out, "bytes": len(data), "metrics": dict(ck.metrics),
            "refiner": bool(refiner_data)}


def chosen_refiner(args: argparse.Namespace, ck: Any) -> dict | None:
    """The refiner section to publish: ``--refiner FILE``, none with ``--refiner none``, else the checkpoint's own."""
    from matting_lib.checkpoint import load_refiner_section

    if args.refiner.lower() == "none":
        return None
    return load_refiner_section(args.refiner) if args.refiner else ck.refiner


def run(args: argparse.Namespace) -> dict:
    """Export, check, write; returns the sidecar's content. Raises ParityError on a failed check."""
    import onnx
    import onnxruntime
    import torch

    from matting_lib.inference.onnx_runtime import OnnxPredictor, make_session, session_metadata
    from matting_lib.inference.export import alpha_parity, check, export_onnx, generated_images, quantize_int8, sad_change, to_fp16
    from matting_lib.inference.predictor import Predictor

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    limits = thresholds(args, precision)
    t0 = time.perf_counter()
    ck = load_checkpoint(args.checkpoint)
    model = ck.build_model().eval()
    refiner_data = chosen_refiner(args, ck)
    refiner = build_refiner(refiner_data, args.refiner or args.checkpoint) if refiner_data else None
    print(f"export: loaded {args.checkpoint} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
          f"{', with a learned refiner' if refiner is not None else ''})", flush=True)
    data = export_onnx(model, opset=args.opset, checkpoint=args.checkpoint, refiner=refiner)
    print(f"export: traced to ONNX opset {args.opset} in {time.perf_counter() - t0:.1f} s", flush=True)

    train: list[Sample] = []
    val: list[Sample] = []
    if args.calibration:
        val = load_split(args.calibration, "val", args.val_samples)
        if args.int8:
            train = load_split(args.calibration, "train", args.calibration_samples)
        print(f"export: data {args.calibration}: {len(train)} calibration, {len(val)} validation images", flush=True)
    if precision == "fp16":
        data = to_fp16(data)
    elif precision == "int8":
        t1 = time.perf_counter()
        # Calibrate at the size the network will see: the smaller of the parity side and its working side.
        calib_side = Predictor(model, device="cpu", max_side=args.parity_side).effective_side()
        data = quantize_int8(data, [s.image for s in train], max_side=calib_side)
        print(f"export: INT8 calibrated on {len(train)} images in {time.perf_counter() - t1:.1f} s", flush=True)

    side = args.parity_side
    reference = Predictor(model, device="cpu", max_side=side, refiner=refiner, subject_prior=False)
    session = make_session(data, "cpu")
    exported = OnnxPredictor(session, device="cpu", max_side=side, metadata=session_metadata(session), subject_prior=False)
    images = [s.image for s in val] or generated_images()
    figures = alpha_parity(reference, exported, images)
    if precision == "int8":
        figures.update(sad_change(reference, exported, val))
    print("export: parity " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, float)), flush=True)
    check(figures, limits, f"{precision} export of {args.checkpoint}")

    report = {
        "onnx": args.out,
        "checkpoint": args.checkpoint,
        "precision": precision,
        "opset": args.opset,
        "parity_side": side,
        "parity": figures,
        "thresholds": asdict(limits),
        "parity_data": args.calibration or "generated images",
        "calibration_images": len(train),
        "bytes": len(data),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    io.write_bytes(args.out, data)
    io.write_text(sidecar_uri(args.out), json.dumps(report, indent=2) + "\n")
    print(f"export: wrote {args.out} ({len(data) / 1e6:.1f} MB) and {sidecar_uri(args.out)} in {time.perf_counter() - t0:.1f} s", flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the job; exits 3 on a failed parity check and 2 on unusable inputs (one clear line)."""
    from matting_lib.inference.export import ParityError

    args = parse_args(argv)
    if args.working_side is not None and args.format != "checkpoint":
        fail("--working-side applies to --format checkpoint (an ONNX export keeps the checkpoint's)", code=2)
    try:
        return publish(args) if args.format == "checkpoint" else run(args)
    except ConfigError as e:
        fail(f"--working-side: {e}", code=2)
    except ParityError as e:
        fail(str(e), code=EXIT_PARITY)
    except (CheckpointError, DatasetError, StorageError, FileNotFoundError) as e:
        fail(str(e), code=2)
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
