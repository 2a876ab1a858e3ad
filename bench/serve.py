"""Serving overhead: the HTTP endpoint against the direct predictor, on the same cores, in one run.

    python -m bench.serve [--checkpoint models/base.pt] [--size 512 1024] [--backend auto] [--quick]

One model (``base``) is served by the real app (:func:`serve_app.app.build_from_config`) on a
local Ray cluster, one replica (no autoscaling), so the endpoint and the direct predictor have
the same compute: the replica runs the same backend with the same thread count as the direct
predictor in this process. Every request is a distinct PNG photo of each ``--size``² (so the result
cache never answers) posted to ``/v1/matte?output=alpha&history=false``; the answer is the
alpha PNG.

Direct predictor: this process decodes the same PNG bytes, predicts and encodes the alpha PNG
(the work a request needs besides HTTP and Serve). Sequentially for concurrency 1, and in
batches of ``max_batch_size`` for the throughput reference (the best the cores do).

For Serve, three setups (``--setups``): the models in their own deployment with dynamic
batching on (``max_batch_size`` 4, 10 ms wait) and off (``max_batch_size`` 1), and the model
inside the ingress replica (``model_deployment.placement: ingress``, batching off, no Ray call
per image); concurrency 1, 4 and 16 client threads. Figures: p50 and
p95 latency (ms) and throughput (images/s), medians over the requests of each level after a
warm-up. Targets (issue 9): at concurrency 1, Serve's p50 at most 15% above the direct p50;
at concurrency 16, Serve's throughput at least 85% of the direct throughput.

Results replace the "Serving" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from bench.results import load_average, machine, markdown_table, update_results  # noqa: E402
from serve_app.run import free_port  # noqa: E402
from matting_lib.data.decode import decode_image  # noqa: E402

TARGET_LATENCY_OVERHEAD = 1.15
"""Serve p50 at concurrency 1 over the direct predictor's p50, at most."""
TARGET_THROUGHPUT_SHARE = 0.85
"""Serve throughput at concurrency 16 over the direct predictor's, at least."""
CONCURRENCY = (1, 4, 16)
BODIES = {"multipart": "a multipart file", "raw": "the raw request body"}
SETUPS = ("separate:4", "separate:1", "ingress:1")
"""Serve setups measured: ``model_deployment.placement`` and ``max_batch_size``."""
STAGES = ("upload", "decode", "model", "forward", "encode", "total")
"""Stages reported per level (``Server-Timing`` names; ``model`` = the call to the model replica)."""


@dataclass
class Level:
    """One measured level: who, with batching or not, at which concurrency."""

    who: str
    batching: str
    concurrency: int
    latencies_ms: list[float]
    seconds: float
    errors: int = 0
    stages: list[dict[str, float]] = field(default_factory=list)
    """Per request, milliseconds per stage: the service's ``Server-Timing`` header for Serve
    (key, decode, model, forward, encode, total), measured in-process for the direct path."""
    placement: str = ""
    """Serve's ``model_deployment.placement`` (empty for the direct predictor)."""

    def stage_p50(self, name: str) -> float | None:
        values = [s[name] for s in self.stages if name in s]
        return statistics.median(values) if values else None

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies_ms, 95))

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds


def photo_png(size: int, seed: int) -> bytes:
    """A distinct, photo-like PNG (smooth gradient + a bright disc + mild noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(np.float32)
    base = np.stack([0.3 + 0.4 * xx, 0.35 + 0.3 * yy, 0.5 - 0.2 * xx], -1)
    rgb = base * (1 - disc[..., None]) + disc[..., None] * np.array(rng.uniform(0.5, 1.0, 3), np.float32)
    rgb = np.clip(rgb * 255 + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def alpha_png(alpha: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.rint(alpha * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def run_level(who: str, batching: str, concurrency: int, images: list[bytes], call, placement: str = "") -> Level:
    """``call(png) -> (ok, stage ms)`` for every image from ``concurrency`` threads; per-call latency and wall time."""
    latencies: list[float] = []
    server: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(png: bytes) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        ok, stages = call(png)
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            if ok:
                latencies.append(ms)
                if stages:
                    server.append(stages)
            else:
                errors += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, images))
    level = Level(who, batching, concurrency, latencies, time.perf_counter() - t0, errors, server, placement)
    extra = "  " + " ".join(f"{k} {level.stage_p50(k):.1f}" for k in STAGES if level.stage_p50(k) is not None)
    print(f"  {who:6s} {placement:8s} batching {batching:3s} c={concurrency:2d}: p50 {level.p50:7.1f} ms  p95 {level.p95:7.1f} ms  "
          f"{level.throughput:6.2f} img/s  errors {errors}{extra}", flush=True)
    return level


def direct_levels(args: argparse.Namespace, images: dict[int, list[bytes]]) -> list[Level]:
    """The direct predictor in this process: sequential latency, and batched throughput."""
    from matting_lib.inference.load import backend_name, load_predictor

    pred = load_predictor(args.checkpoint, backend=args.backend, device="cpu", max_side=args.size,
                          batch_size=4, num_threads=args.threads)
    print(f"direct predictor: {backend_name(pred)}, {args.threads} thread(s)", flush=True)
    pred.predict(images[1][0])  # warm-up

    def single(png: bytes) -> tuple[bool, dict[str, float]]:
        t0 = time.perf_counter()
        rgb = decode_image(png)
        t1 = time.perf_counter()
        alpha = pred.predict(rgb)
        t2 = time.perf_counter()
        alpha_png(alpha)
        t3 = time.perf_counter()
        return True, {"decode": (t1 - t0) * 1000, "forward": (t2 - t1) * 1000, "encode": (t3 - t2) * 1000, "total": (t3 - t0) * 1000}

    out = [run_level("direct", "off", 1, images[1], single)]
    batch = images[16]
    t0 = time.perf_counter()
    lat: list[float] = []
    for i in range(0, len(batch), 4):
        t1 = time.perf_counter()
        for a in pred.predict_batch(batch[i:i + 4]):
            alpha_png(a)
        lat += [(time.perf_counter() - t1) * 1000] * len(batch[i:i + 4])
    level = Level("direct", "on", 4, lat, time.perf_counter() - t0)
    print(f"  direct batch 4: {level.throughput:6.2f} img/s", flush=True)
    out.append(level)
    return out


def serve_levels(
    args: argparse.Namespace, images: dict[int, list[bytes]], placement: str, batch_size: int, tmp: Path
) -> list[Level]:
    """Deploy the app with ``placement`` and ``max_batch_size=batch_size``; measure every concurrency."""
    import requests
    from ray import serve

    from serve_app.app import build_from_config
    from serve_app.config import serve_config_from_args
    from serve_app.api import parse_server_timing

    port = free_port()
    cfg = serve_config_from_args({
        "models": [{"name": "base", "checkpoint": str(Path(args.checkpoint).resolve())}],
        "routing": {"bright_model": "base", "dark_model": "base"},
        "model_deployment": {
            "num_cpus": 1.0, "backend": args.backend, "num_threads": args.threads, "max_side": args.size,
            "max_batch_size": batch_size, "max_ongoing_requests": 32,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1}, "placement": placement,
        },
        "ingress": {"num_cpus": 0.1, "num_replicas": 1},
        "history": {"db_path": str(tmp / "history.sqlite"), "store_uri": str(tmp / "results")},
    })
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    serve.run(build_from_config(cfg), name="matting", route_prefix="/", logging_config={"log_level": "WARNING"})
    url = f"http://127.0.0.1:{port}/v1/matte"
    session = threading.local()

    def call(png: bytes) -> tuple[bool, dict[str, float]]:
        """(answered 200, the service's Server-Timing stages)."""
        s = getattr(session, "s", None) or requests.Session()
        session.s = s
        query = {"output": "alpha", "history": "false"}
        if args.body == "raw":
            r = s.post(url, params=query, data=png, headers={"Content-Type": "image/png", "X-Filename": "x.png"}, timeout=300)
        else:
            r = s.post(url, params=query, files={"file": ("x.png", png, "image/png")}, timeout=300)
        return r.status_code == 200, parse_server_timing(r.headers.get("Server-Timing", ""))

    batching = "on" if batch_size > 1 else "off"
    try:
        for png in images[0]:  # warm-up: model load, first batches, HTTP connections
            assert call(png)[0], "warm-up request failed"
        return [run_level("serve", batching, c, images[c], call, placement) for c in CONCURRENCY]
    finally:
        serve.delete("matting")
        serve.shutdown()


def report(levels: list[Level], args: argparse.Namespace, backend: str) -> tuple[str, list[str]]:
    """Markdown for RESULTS.md, and the list of missed targets."""
    direct1 = next(lv for lv in levels if lv.who == "direct" and lv.concurrency == 1)
    direct_tp = max(lv.throughput for lv in levels if lv.who == "direct")
    rows = []
    for lv in levels:
        stage = [f"{v:.1f}" if (v := lv.stage_p50(k)) is not None else "–" for k in STAGES]
        total = lv.stage_p50("total")
        outside = f"{lv.p50 - total - (lv.stage_p50('upload') or 0):.1f}" if total is not None and lv.who == "serve" else "–"
        rows.append([lv.who, lv.placement or "–", lv.batching, lv.concurrency if lv.who == "serve" else ("1" if lv.batching == "off" else "batch 4"),
                     len(lv.latencies_ms), lv.errors, f"{lv.p50:.1f}", f"{lv.p95:.1f}", *stage, outside,
                     f"{lv.throughput:.2f}", f"{lv.p50 / direct1.p50:.2f}", f"{lv.throughput / direct_tp:.2f}"])
    missed = []
    lines = []
    setups = list(dict.fromkeys((lv.placement, lv.batching) for lv in levels if lv.who == "serve"))
    for placement, batching in setups:
        mine = [lv for lv in levels if lv.who == "serve" and (lv.placement, lv.batching) == (placement, batching)]
        s1 = next(lv for lv in mine if lv.concurrency == 1)
        s16 = next(lv for lv in mine if lv.concurrency == 16)
        lat, tp = s1.p50 / direct1.p50, s16.throughput / direct_tp
        name = f"placement {placement}, batching {batching}"
        lines.append(f"- {name}: p50 at concurrency 1 is **{lat:.2f}x** the direct predictor's "
                     f"(target ≤ {TARGET_LATENCY_OVERHEAD:.2f}x); throughput at concurrency 16 is **{tp:.0%}** of the "
                     f"direct predictor's best (target ≥ {TARGET_THROUGHPUT_SHARE:.0%}).")
        if lat > TARGET_LATENCY_OVERHEAD:
            missed.append(f"{name}: c=1 p50 {lat:.2f}x direct")
        if tp < TARGET_THROUGHPUT_SHARE:
            missed.append(f"{name}: c=16 throughput {tp:.0%} of direct")
    md = "\n".join([
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Load before the run: {args.load_before}.",
        "",
        f"`python -m bench.serve {' '.join(sys.argv[1:])}`: model `{Path(args.checkpoint).name}` on **{backend}**, "
        f"{args.threads} thread(s), {args.size}² PNG photos, one replica (num_cpus 1), every request a distinct image "
        f"(no cache hits), `output=alpha&history=false`, the image sent as {BODIES[args.body]}. "
        "Direct = decode PNG + predict + encode alpha PNG in one process; "
        "its throughput reference is the better of sequential and batch-4 prediction. Ratios against the direct "
        "predictor measured in the same run. Stage columns are p50 milliseconds: for Serve from the service's own "
        "`Server-Timing` header (upload = reading and parsing the request body; decode = PNG decode and brightness in the ingress; model = the ingress's call to the "
        "model: with placement `separate` a Ray call to the model replica, which holds the forward pass, the batching wait, "
        "queueing and moving the arrays; with placement `ingress` an in-process call; forward = the "
        "model's forward pass; encode = alpha PNG; total = from the cache lookup to the encoded alpha), for the direct "
        "path timed in-process. 'Outside' = p50 minus upload and total: the client's HTTP, the Serve proxy and the "
        "hops between the proxy and the ingress.",
        "",
        markdown_table(["path", "placement", "batching", "concurrency", "requests", "errors", "p50 ms", "p95 ms", *STAGES, "outside",
                        "images/s", "p50 / direct c=1", "throughput / direct best"], rows),
        "",
        *lines,
        "",
        ("All serving targets met." if not missed else "Missed: " + "; ".join(missed) + "."),
    ])
    return md, missed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "base.pt"), help="checkpoint to serve (default: the shipped base)")
    p.add_argument("--size", type=int, nargs="+", default=[512, 1024],
                   help="square image sides in px, each measured in turn (default 512 1024; the service's max_side is 1024)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads, direct and replica alike (default 1, as serve_app/config.yaml ships)")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level (default 48)")
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS,
                   help="Serve setups, PLACEMENT:MAX_BATCH_SIZE (default: all three)")
    p.add_argument("--body", default="multipart", choices=tuple(BODIES),
                   help="how requests carry the image: a multipart file (as the web UI and curl -F send it; default) "
                        "or the raw body (Content-Type image/png)")
    p.add_argument("--quick", action="store_true", help="12 requests per level, nothing written")
    args = p.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        print(f"error: checkpoint {args.checkpoint} not found (train one or pass --checkpoint)", file=sys.stderr)
        return 2
    n = 12 if args.quick else args.requests
    sizes = list(args.size)
    args.load_before = load_average()

    import ray

    from matting_lib.inference.load import backend_name, load_predictor

    backend = backend_name(load_predictor(args.checkpoint, backend=args.backend, device="cpu", max_side=64))
    images, levels = {}, {}
    for size in sizes:  # the direct references first, before Ray starts
        args.size = size
        images[size] = {c: [photo_png(size, 1000 * c + i) for i in range(n)] for c in CONCURRENCY}
        images[size][0] = [photo_png(size, 99_000 + i) for i in range(6)]
        print(f"{size}²:", flush=True)
        levels[size] = direct_levels(args, images[size])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                args.size = size
                for setup in args.setups:
                    placement, batch_size = setup.split(":")
                    print(f"{size}², serve, placement {placement}, max_batch_size {batch_size}:", flush=True)
                    levels[size] += serve_levels(args, images[size], placement, int(batch_size), Path(tmp))
    finally:
        ray.shutdown()
    sections, missed = [], []
    for size in sizes:
        args.size = size
        md, miss = report(levels[size], args, backend)
        sections.append(f"### {size}²\n\n{md}")
        missed += [f"{size}²: {m}" for m in miss]
    md = "\n\n".join(sections)
    print(md)
    if not args.quick:
        print(f"wrote {update_results('Serving', md)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
