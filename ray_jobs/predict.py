"""Offline batch prediction: every image of a folder or URI -> an RGBA cut-out PNG.

    python -m ray_jobs.predict --checkpoint models/base.pt --input photos/ --output cutouts/
    python -m ray_jobs.predict --checkpoint s3://models/base.pt --input s3://in/ --output s3://out/ \\
        --max-side 1024 --device auto --batch-size 4

For each ``<input>/<name>.<ext>`` (jpg, jpeg, png, webp, bmp, tif, tiff; not recursive; or a
single image file) it writes ``<output>/<name>.png``: RGBA at the input's own size, the
input's colours (or, with ``--decontaminate``, the estimated foreground colours) and the
predicted alpha (0 = transparent background). Every file's outcome is printed and written
to ``<output>/predict_log.jsonl`` (or ``--log``): one JSON object per file with ``file``,
``output``, ``status`` ("ok", "error", or "skipped" with ``--skip-existing``), ``stage`` of a failure (read, decode, predict,
write), ``error``, ``width``, ``height``, ``ms`` (the file's wall time: its read, decode and
write plus an equal share of its batch's forward pass) and ``bytes_out``.

A bad file (corrupt, truncated, too large, unreadable) is reported and skipped; the rest are
written. ``--skip-existing`` resumes an interrupted run: inputs whose ``<name>.png`` is already
in the output folder are logged as "skipped" and not recomputed. Exit status: 0 every file written, 1 some files failed (see the log), 2 nothing was
attempted: missing or invalid checkpoint, input not found or without images, output not
writable, bad options. Those print one ``error: ...`` line and no traceback.

``--checkpoint`` is a checkpoint or an ``.onnx`` export, loaded by
:func:`matting_lib.inference.load.load_predictor` (``--backend``: auto runs ONNX Runtime on CPU
and for exports, torch on CUDA).

Runs in one local process without Ray, deliberately: the model is loaded once, the backend
already spreads each forward pass over all cores (or one GPU, ``--device``), and a thread pool
overlaps storage reads and writes with compute, which is what saturates one machine. Ray
tasks would load the model once per worker and split the same cores. Sharding a bucket over
a cluster is a Ray Data job around the same predictor (:func:`matting_lib.inference.load.load_predictor`); this
command is the tool for a folder on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from matting_lib import io
from matting_lib.checkpoint import CheckpointError
from matting_lib.data.decode import ImageDecodeError
from matting_lib.postprocess import decontaminate_foreground, encode_image, to_rgba
from matting_lib.inference.backends import BACKENDS
from matting_lib.inference.load import backend_name, load_predictor
from matting_lib.inference.predictor import DEFAULT_MAX_SIDE, Predictor, as_rgb
from matting_lib.refine import MODES as REFINE_MODES
from matting_lib.resize import side_from_flag
from ray_jobs.common import SetupError, check_output, fail

INPUT_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""Extensions read from an input folder (case-insensitive)."""
LOG_NAME = "predict_log.jsonl"
IO_THREADS = 8
"""Threads for reads and writes (hides object-storage latency)."""


@dataclass
class FileRecord:
    """One line of the per-file log."""

    file: str
    output: str
    status: str = "pending"
    stage: str = ""
    error: str = ""
    width: int = 0
    height: int = 0
    ms: float = 0.0
    bytes_out: int = 0

    def failed(self, stage: str, error: Exception | str) -> None:
        self.status, self.stage, self.error = "error", stage, str(error)


@dataclass
class Loaded:
    """A file read and decoded (``image`` None when that failed; ``record`` says why)."""

    record: FileRecord
    image: np.ndarray | None
    ms: float


# --------------------------------------------------------------------------- setup


def list_inputs(uri: str) -> list[str]:
    """Image URIs under ``uri`` (a folder, sorted) or ``[uri]`` for a single file.

    Raises:
        SetupError: ``uri`` does not exist or holds no image.
    """
    if io.isdir(uri):
        names = [n for n in io.listdir(uri) if n.lower().endswith(INPUT_EXTS)]
        if not names:
            raise SetupError(f"--input: no images ({', '.join(INPUT_EXTS)}) in {uri}")
        return [io.join(uri, n) for n in names]
    if io.exists(uri):
        return [uri]
    raise SetupError(f"--input: not found: {uri}")


def output_names(inputs: Sequence[str], output: str) -> list[tuple[str, str, str]]:
    """``(input, output URI, clash)``: ``clash`` names the earlier input that already takes
    that output name (e.g. ``a.jpg`` and ``a.png``), else is empty."""
    seen: dict[str, str] = {}
    out = []
    for uri in inputs:
        stem = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        target = io.join(output, f"{stem}.png")
        out.append((uri, target, seen.get(target, "")))
        seen.setdefault(target, uri)
    return out


# --------------------------------------------------------------------------- per file


def load(uri: str, target: str, clash: str = "") -> Loaded:
    """Read and decode one input (never raises; failures go into the record)."""
    rec = FileRecord(file=uri, output=target)
    t0 = time.perf_counter()
    image = None
    if clash:
        rec.failed("read", f"skipped: {clash} has the same name and already writes {target}")
    else:
        try:
            data = io.read_bytes(uri)
        except OSError as e:
            rec.failed("read", e)
        else:
            try:
                image = as_rgb(data, name=uri)
                rec.height, rec.width = image.shape[:2]
            except (ImageDecodeError, ValueError) as e:
                rec.failed("decode", e)
    return Loaded(rec, image, (time.perf_counter() - t0) * 1000)


def save(rec: FileRecord, image: np.ndarray, alpha: np.ndarray, decontaminate: bool) -> float:
    """Encode the RGBA PNG and write it; returns ms. Failures go into the record."""
    t0 = time.perf_counter()
    try:
        colours = decontaminate_foreground(image, alpha) if decontaminate else image
        png = encode_image(to_rgba(colours, alpha), "png")
        io.write_bytes(rec.output, png)
        rec.status, rec.bytes_out = "ok", len(png)
    except (OSError, ValueError, RuntimeError) as e:
        rec.failed("write", e)
    return (time.perf_counter() - t0) * 1000


def predict_loaded(predictor: Predictor, batch: list[Loaded]) -> list[np.ndarray | None]:
    """Alphas for the decoded files of a batch (None for failures), in order.

    Decoded images are valid RGB arrays, so a failing forward pass (e.g. out of memory) is
    not one file's fault: every file of the batch is marked failed with that error.
    """
    ok = [b for b in batch if b.image is not None]
    try:
        alphas = iter(predictor.predict_batch([b.image for b in ok]) if ok else [])
    except (RuntimeError, ValueError) as e:
        for b in ok:
            b.record.failed("predict", f"{type(e).__name__}: {e}")
        return [None] * len(batch)
    return [next(alphas) if b.image is not None else None for b in batch]


def batches(items: Sequence, size: int) -> Iterator[list]:
    for k in range(0, len(items), size):
        yield list(items[k : k + size])


def run(predictor: Predictor, jobs: list[tuple[str, str, str]], batch_size: int, decontaminate: bool,
        quiet: bool = False) -> list[FileRecord]:
    """Predict every job; reads of the next batch overlap the current batch's forward pass."""
    records: list[FileRecord] = []
    chunks = list(batches(jobs, batch_size))
    with ThreadPoolExecutor(IO_THREADS) as pool, tqdm(total=len(jobs), unit="img", file=sys.stderr) as bar:
        def submit(chunk: list) -> list[Future]:
            return [pool.submit(load, *job) for job in chunk]

        pending = submit(chunks[0]) if chunks else []
        for k in range(len(chunks)):
            loaded = [f.result() for f in pending]
            pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
            t0 = time.perf_counter()
            alphas = predict_loaded(predictor, loaded)
            share = (time.perf_counter() - t0) * 1000 / max(1, sum(a is not None for a in alphas))
            writes = [pool.submit(save, b.record, b.image, a, decontaminate) if a is not None else None
                      for b, a in zip(loaded, alphas)]
            for b, a, w in zip(loaded, alphas, writes):
                b.record.ms = round(b.ms + (share + w.result() if w is not None else 0.0), 1)
                records.append(b.record)
                _report(b.record, quiet)
                bar.update(1)
    return records


def _report(rec: FileRecord, quiet: bool) -> None:
    if rec.status == "ok":
        if not quiet:
            tqdm.write(f"ok      {rec.file} -> {rec.output} ({rec.width}x{rec.height}, {rec.ms:.0f} ms)")
    else:
        tqdm.write(f"FAILED  {rec.file} [{rec.stage}]: {rec.error}")


def skip_existing(jobs: list[tuple[str, str, str]], output: str) -> tuple[list[tuple[str, str, str]], list[FileRecord]]:
    """Split jobs into those still to do and records of those whose output exists (one listing)."""
    try:
        present = {io.join(output, n) for n in io.listdir(output)}
    except FileNotFoundError:
        present = set()
    todo = [j for j in jobs if j[1] not in present or j[2]]
    done = [FileRecord(file=u, output=t, status="skipped") for u, t, c in jobs if t in present and not c]
    return todo, done


def write_log(uri: str, records: Sequence[FileRecord]) -> None:
    io.write_text(uri, "".join(json.dumps(asdict(r)) + "\n" for r in records))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="matting checkpoint (.pt) or ONNX export (.onnx, from ray_jobs.export), local path or s3://")
    p.add_argument("--input", required=True, help="folder (or one image file), local path or s3://")
    p.add_argument("--output", required=True, help="folder for <name>.png cut-outs, local path or s3://")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help=f"long side the network works at, in pixels (the model's own working side caps it); bigger "
                        f"inputs are downscaled and their alpha refined to full size (0 = full size; default {DEFAULT_MAX_SIDE})")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto (default: ONNX Runtime for an .onnx export, and for a checkpoint on CPU; torch on CUDA), "
                        "torch or onnx (matting_lib.inference.load.load_predictor)")
    p.add_argument("--refine", default="auto", choices=["auto", *REFINE_MODES],
                   help="full-resolution refinement of the network's alpha: auto (learned when the checkpoint carries "
                        "a refiner, else off; default), learned, classical or off (bilinear upsampling)")
    p.add_argument("--refiner", default="", help="a learned refiner to use instead of the checkpoint's own")
    p.add_argument("--no-subject-prior", action="store_true",
                   help="never let the ImageNet subject prior stand in for an empty matte")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (same-size images batch together)")
    p.add_argument("--decontaminate", action="store_true",
                   help="estimate foreground colours (no halo of the old background in soft edges; slower)")
    p.add_argument("--skip-existing", action="store_true",
                   help="do not recompute inputs whose <name>.png already exists in --output (resume a run)")
    p.add_argument("--log", default=None, help=f"per-file JSONL log (default <output>/{LOG_NAME})")
    p.add_argument("--quiet", action="store_true", help="print failures only (the log has every file)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}", code=2)
    try:
        predictor = load_predictor(
            args.checkpoint, backend=args.backend, refiner_uri=args.refiner, device=args.device, max_side=side_from_flag(args.max_side),
            batch_size=args.batch_size, refine=args.refine, subject_prior=not args.no_subject_prior,
        )
        jobs = output_names(list_inputs(args.input), args.output)
        check_output(args.output)
        jobs, skipped = skip_existing(jobs, args.output) if args.skip_existing else (jobs, [])
    except CheckpointError as e:
        fail(f"--checkpoint: {e}", code=2)
    except (SetupError, OSError) as e:  # OSError: StorageError (unreachable) and friends, URI included
        fail(str(e), code=2)
    except ValueError as e:  # Predictor options: device, max-side, backend; a refiner with an export
        fail(f"invalid option: {e}", code=2)
    print(f"{len(jobs)} image(s) from {args.input} -> {args.output}{f' ({len(skipped)} already done)' if skipped else ''} "
          f"(model {args.checkpoint} on {backend_name(predictor)}, device {predictor.device}, max side {predictor.max_side or 'full'}, "
          f"refine {predictor.refine})", flush=True)
    log_uri = args.log or io.join(args.output, LOG_NAME)
    t0 = time.perf_counter()
    records = skipped + run(predictor, jobs, args.batch_size, args.decontaminate, args.quiet)
    try:
        write_log(log_uri, records)
    except OSError as e:
        print(f"warning: could not write the log {log_uri}: {e}", file=sys.stderr, flush=True)
    n_bad = sum(r.status == "error" for r in records)
    n_ok = sum(r.status == "ok" for r in records)
    print(f"done in {time.perf_counter() - t0:.1f} s: {n_ok} written, {len(skipped)} skipped, {n_bad} failed; "
          f"log: {log_uri}", flush=True)
    return 1 if n_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
