"""Memory of the largest request the app accepts; writes "Memory of the largest request" in ``bench/RELIABILITY.md``.

    python -m bench.memory                      # the shipped models, a 6000x6000 PNG at max_side=MAX_SIDE
    python -m bench.memory --max-side 4096 --no-write   # (what the app accepted before MAX_SIDE was 2048)

Starts a local Ray cluster and the app (the tests' machinery, with the shipped checkpoints,
``model_deployment.max_side`` 1024 and the shipped upload limits), warms every replica up with a
small image, then sends the largest accepted request twice (two different 6000x6000 PNGs, 36 Mpx,
under the 40 Mpx limit, forced to ``base``) and reads every Serve process's resident set size
(``VmRSS`` in ``/proc``, MB = 10^6 bytes): before, the peak while the request runs (sampled every
20 ms), and 5 s after each answer ("steady"). The bound this checks: peak and steady RSS of the
model replica and the ingress stay what the table says, and the steady RSS returns near its level
before the request (the replica hands back what it used).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.results import load_average, machine, markdown_table, update_results

RELIABILITY = Path(__file__).resolve().parent / "RELIABILITY.md"
SECTION = "Memory of the largest request"
CONCURRENT_SECTION = "Memory under concurrent large uploads"
PEAK_LIMIT_MB = 2500
"""Issue 27's bound: no Serve process over 2.5 GB (MB = 10^6 bytes, as VmRSS is reported here) while 8 camera-size uploads arrive at once."""
ROOT = Path(__file__).resolve().parents[1]
PROCESSES = ("model_base", "ingress", "model_lowlight", "proxy")
"""The Serve processes each table lists, in this order."""


def big_png(side: int, seed: int) -> bytes:
    """A smooth side x side photo-like PNG (a blob on a gradient): small enough to upload (a few MB)."""
    import cv2

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    d = np.hypot(yy - 0.5, xx - 0.5 - 0.05 * seed)
    a = np.clip((0.3 - d) * 20, 0, 1)[..., None]
    bg = np.stack([60 + 80 * xx, 110 + 60 * yy, 170 - 50 * xx], -1)
    img = (a * np.array([200, 150, 120], np.float32) + (1 - a) * bg).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img[..., ::-1])
    assert ok
    return buf.tobytes()


class Sampler:
    """Peak VmRSS (MB) of a set of pids, sampled in a thread."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.02):
        from bench.load import rss_mb

        self.rss, self.pids, self.every = rss_mb, pids, every_s
        self.peak = {name: 0.0 for name in pids}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], self.rss(pid))
            time.sleep(self.every)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def warm_app(tmp: Path):
    """The app with the shipped models and the shipped limits (model ``max_side`` 1024), every
    replica loaded and warm; yields (url, {deployment: pid})."""
    import requests

    from bench.load import serve_replicas
    from bench.local_app import local_app
    from serve_app.config import LimitSettings
    from testkit.serve import encode, photo

    checkpoints = {"base": str(ROOT / "models" / "base.pt"), "lowlight": str(ROOT / "models" / "lowlight.pt")}
    limits = dataclasses.asdict(LimitSettings())
    with local_app(tmp, checkpoints, args={"limits": limits, "model_deployment": {"max_side": 1024}}) as (cluster, _, url):
        for light in ("bright", "dark"):
            r = requests.post(f"{url}/v1/matte", files={"file": ("w.png", encode(photo(256, 256, light)))},
                              params={"history": "false"}, timeout=300)
            assert r.status_code == 200, r.text
        yield url, {r.deployment: r.pid for r in serve_replicas(cluster["dashboard"])}


def post_big(url: str, data: bytes, max_side: int):
    import requests

    return requests.post(f"{url}/v1/matte", data=data, headers={"Content-Type": "image/png"},
                         params={"model": "base", "max_side": max_side, "history": "false", "output": "alpha"},
                         timeout=600)


def measure(side: int, max_side: int) -> tuple[list[list[object]], list[str]]:
    from bench.load import rss_mb

    notes = []
    with tempfile.TemporaryDirectory() as tmp, warm_app(Path(tmp)) as (url, pids):
        time.sleep(2)
        rows = {name: [name, round(rss_mb(pid))] for name, pid in pids.items()}
        for i in range(2):
            data = big_png(side, seed=i)
            with Sampler(pids) as sampler:
                t0 = time.perf_counter()
                r = post_big(url, data, max_side)
                took = time.perf_counter() - t0
                time.sleep(0.5)
            if r.status_code != 200:
                raise SystemExit(f"the request got {r.status_code}: {r.text[:300]}")
            notes.append(f"request {i + 1}: {len(data) / 1e6:.1f} MB PNG, {side}x{side}, max_side={max_side}: "
                         f"200 in {took:.1f} s ({r.headers.get('Server-Timing', '')})")
            time.sleep(5)
            for name, pid in pids.items():
                rows[name] += [round(sampler.peak[name]), round(rss_mb(pid))]
    return [rows[n] for n in PROCESSES if n in rows], notes


def measure_concurrent(n: int, side: int, max_side: int) -> tuple[list[list[object]], list[str], bool]:
    """``n`` different ``side``-px uploads sent at once: the peak RSS of every Serve process over the
    burst, and each answer (200, or the documented 503 with ``Retry-After`` from admission control).
    Passes when no process peaks over :data:`PEAK_LIMIT_MB` and no answer is anything else."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.load import rss_mb

    images = [big_png(side, seed=i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp, warm_app(Path(tmp)) as (url, pids):
        time.sleep(2)
        before = {name: round(rss_mb(pid)) for name, pid in pids.items()}
        t0 = time.perf_counter()

        def one(data: bytes) -> tuple[int, str, float]:
            r = post_big(url, data, max_side)
            return r.status_code, r.headers.get("Retry-After", ""), time.perf_counter() - t0

        with Sampler(pids) as sampler, ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(one, images))
        time.sleep(5)
        after = {name: round(rss_mb(pid)) for name, pid in pids.items()}
    rows = [[d, before[d], round(sampler.peak[d]), after[d]] for d in PROCESSES if d in pids]
    ok = [a for a in answers if a[0] == 200]
    shed = [a for a in answers if a[0] == 503 and a[1]]
    other = [a for a in answers if not (a[0] == 200 or (a[0] == 503 and a[1]))]
    notes = [
        f"{n} different {side}x{side} PNGs ({sum(map(len, images)) / 1e6:.0f} MB in all) sent at once, max_side={max_side}, "
        f"forced to `base`: {len(ok)} answered 200 (last at {max((a[2] for a in ok), default=0):.1f} s), "
        f"{len(shed)} answered 503 with `Retry-After` (admission control), {len(other)} anything else"
        + (f": {other}" if other else "") + ".",
        f"Largest peak: {max(sampler.peak.values()):.0f} MB (limit {PEAK_LIMIT_MB} MB).",
    ]
    passed = not other and max(sampler.peak.values()) <= PEAK_LIMIT_MB
    return rows, notes, passed


def main(argv: list[str] | None = None) -> int:
    from serve_app.params import MAX_SIDE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=6000, help="the image's side in px (default 6000: 36 Mpx)")
    ap.add_argument("--max-side", type=int, default=MAX_SIDE, help=f"max_side of the request (default MAX_SIDE = {MAX_SIDE})")
    ap.add_argument("--concurrent", type=int, default=0, metavar="N",
                    help="send N different images at once instead (issue 27: 8) and write the section "
                         f"'{CONCURRENT_SECTION}'; exit 1 when a process peaks over {PEAK_LIMIT_MB} MB or an answer is "
                         "neither 200 nor 503 with Retry-After")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RELIABILITY.md")
    args = ap.parse_args(argv)
    from testkit.env import configure

    configure()  # the auth environment before Ray is imported
    if args.concurrent:
        rows, notes, passed = measure_concurrent(args.concurrent, args.side, args.max_side)
        md = "\n".join([
            f"`python -m bench.memory --concurrent {args.concurrent}`: the shipped models (ONNX Runtime on CPU) with the "
            "shipped limits and admission budget; resident set size (VmRSS, MB) of each Serve process before the burst, "
            "its peak during it (sampled every 20 ms) and 5 s after the last answer.",
            "",
            *[f"- {n}" for n in notes],
            "",
            markdown_table(["process", "before", "peak", "after"], rows),
        ])
        _write(CONCURRENT_SECTION, md, args.no_write)
        return 0 if passed else 1

    rows, notes = measure(args.side, args.max_side)
    header = ["process", "before", "peak, 1st", "steady, 1st", "peak, 2nd", "steady, 2nd"]
    md = "\n".join([
        f"`python -m bench.memory`: the shipped models (ONNX Runtime on CPU), one {args.side}x{args.side} PNG "
        f"at `max_side={args.max_side}` sent twice (two different images), resident set size (VmRSS, MB) of each "
        "Serve process: before, the peak while the request ran (sampled every 20 ms), and 5 s after the answer.",
        "",
        *[f"- {n}" for n in notes],
        "",
        markdown_table(header, rows),
    ])
    _write(SECTION, md, args.no_write)
    return 0


def _write(section: str, md: str, no_write: bool) -> None:
    if no_write:
        print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on: {machine()} (load average at the end: {load_average()}).\n")
        print(md)
    else:
        print(update_results(section, md, path=RELIABILITY).read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
