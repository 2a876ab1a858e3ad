"""Serving under load: steady load, a model replica killed, and a checkpoint hot swap, all mid-run.

    python -m bench.load [--requests 600] [--concurrency 16] [--scenarios steady,kill,swap]
                         [--checkpoints BASE.pt LOWLIGHT.pt] [--no-write]

Starts its own local Ray cluster (``ray start --head`` on loopback, free ports, token auth, as
the tests do) and deploys the app like ``serve deploy`` with the tests' config
(:func:`testkit.serve.serve_yaml_for_test`: one replica per model, no scale-up, model
``max_side`` 256). Without ``--checkpoints`` the two models are tiny random-weight checkpoints
(:func:`testkit.serve.make_checkpoint`); weights do not change the serving path.

Workload (:func:`make_workload`, fixed seed): POST /v1/matte with images of 64-512 px on each
side (mixed aspect), 40 % dark (routed to ``lowlight``) and 60 % normal light (``base``),
a quarter PNG and the rest JPEG, three output kinds, ``history=false``; a quarter of the requests repeat an
earlier request's exact bytes and parameters, so the result cache answers them. ``concurrency``
client threads send the requests back to back.

Scenarios, each over the same workload on the same running app, one after the other:

- ``steady``: the load alone.
- ``kill``: after a third of the requests, ``ray.kill`` of the ``model_base`` replica (found with
  the State API). Serve starts a new one; the ingress retries a model call whose replica died
  (``ingress.model_retries``), so no request should fail.
- ``swap``: after a third of the requests, ``serve deploy`` of the same config with a new
  ``user_config`` checkpoint for ``model_base``: the replica reconfigures in place.

Each reports requests, status classes (2xx/4xx/5xx/connection errors), latency p50/p95/p99,
throughput, the ingress's cache hits/misses and model-call retries (``GET /v1/stats``), the RSS of
every Serve replica and of the HTTP proxy before and after (from ``/proc/<pid>``, pids from the
State API), and replica restarts. A scenario fails when any request fails, when the kill does
not lead to a restarted replica or the swap does not take, or when a process's RSS grows more
than :data:`MEMORY_BOUND_MB` (the ingress: net of its result cache's growth, which is bounded by
``cache.max_mb``). Results replace this benchmark's sections of ``bench/RELIABILITY.md``;
the exit status is 1 when a scenario failed.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY = Path(__file__).resolve().parent / "RELIABILITY.md"
RELIABILITY_HEADER = (
    "# Reliability results\n\n"
    "Written by the reliability runs themselves (`bench/load.py` for serving under load, and the hostile-input "
    "and training-fault runs); each section is replaced by the latest run of its scenario.\n"
)
MEMORY_BOUND_MB = 64.0
"""Largest RSS growth (MB) of any replica or proxy over one scenario, measured after a warm-up."""
WARMUP = 96
"""Requests sent before the first scenario, so allocators and caches reach their working size."""
APP = "matting"
SECTION = "Serving load: {}"
SCENARIOS = ("steady", "kill", "swap")


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Request:
    """One POST /v1/matte: the encoded image, its content type and query parameters."""

    body: bytes
    content_type: str
    params: dict[str, str]
    light: str
    repeat: bool


OUTPUTS = (
    {"output": "rgba"},
    {"output": "alpha"},
    {"output": "composite", "background": "#ffffff", "format": "jpeg"},
)


def stamp(rgb: np.ndarray, number: int) -> None:
    """Write ``number`` (< 2**48) into six flat 8x8 blocks of the top-left corner, in place.

    Flat blocks survive JPEG compression, so images stamped with different numbers stay
    different after encoding, in pixels and in bytes.
    """
    for k, byte in enumerate(number.to_bytes(6, "little")):
        rgb[:8, 8 * k:8 * k + 8] = byte


@functools.cache
def base_photos(n_shapes: int = 8) -> dict[tuple[tuple[int, int], str], np.ndarray]:
    """(shape, light) -> photo, for ``n_shapes`` fixed random shapes with sides in 64-512 px."""
    from testkit.serve import photo

    rng = np.random.default_rng(1234)
    shapes = [(int(rng.integers(64, 513)), int(rng.integers(64, 513))) for _ in range(n_shapes)]
    return {(s, light): photo(*s, light, seed=i) for i, s in enumerate(shapes) for light in ("bright", "dark")}


def make_workload(n: int, seed: int = 0, repeat_fraction: float = 0.25, dark_fraction: float = 0.4) -> list[Request]:
    """``n`` requests: sides 64-512 px, mixed light, PNG/JPEG, a ``repeat_fraction`` of repeats.

    Unique images are variants of a few rendered photos (:func:`testkit.serve.photo`) with
    ``seed`` and their index stamped into the first pixels, so every one has its own content hash
    and workloads of different seeds share no image.
    """
    from testkit.serve import encode

    rng = np.random.default_rng(seed)
    bases = base_photos()
    shapes = sorted({s for s, _ in bases})
    out: list[Request] = []
    for i in range(n):
        if out and rng.random() < repeat_fraction:
            prev = out[int(rng.integers(len(out)))]
            out.append(Request(prev.body, prev.content_type, prev.params, prev.light, True))
            continue
        light = "dark" if rng.random() < dark_fraction else "bright"
        rgb = bases[(shapes[int(rng.integers(len(shapes)))], light)].copy()
        stamp(rgb, seed << 24 | i)
        fmt = "PNG" if i % 4 == 0 else "JPEG"
        body = encode(rgb, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
        params = {"history": "false", **OUTPUTS[int(rng.integers(len(OUTPUTS)))]}
        out.append(Request(body, f"image/{fmt.lower()}", params, light, False))
    return out


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Result:
    """One request's outcome. ``status`` 0: no HTTP answer (``error`` says why)."""

    start_s: float
    ms: float
    status: int
    error: str = ""
    model: str = ""
    cache: str = ""
    checkpoint: str = ""


def _send(session: Any, url: str, req: Request, t0: float, timeout: float) -> Result:
    start = time.perf_counter()
    try:
        r = session.post(f"{url}/v1/matte", params=req.params, data=req.body,
                         headers={"Content-Type": req.content_type}, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - a failed request is what the load test counts
        return Result(start - t0, (time.perf_counter() - start) * 1000, 0, f"{type(e).__name__}: {e}"[:200])
    ms = (time.perf_counter() - start) * 1000
    h = r.headers
    error = "" if r.status_code == 200 else r.text[:200]
    return Result(start - t0, ms, r.status_code, error, h.get("X-Matting-Model", ""), h.get("X-Matting-Cache", ""),
                  h.get("X-Matting-Checkpoint", ""))


def run_load(
    url: str,
    requests_: list[Request],
    concurrency: int,
    disrupt: Callable[[], dict[str, Any]] | None = None,
    disrupt_after: int = 0,
    timeout: float = 120.0,
    label: str = "load",
) -> tuple[list[Result], float, dict[str, Any]]:
    """Send ``requests_`` from ``concurrency`` threads (one HTTP session each), in order.

    When ``disrupt_after`` requests have completed, ``disrupt()`` runs in its own thread while
    the load goes on; its returned dict (or ``error``: the error it raised), with ``at_s`` (when
    it started, in seconds since the load's start, as :attr:`Result.start_s`), comes back as the third value.
    Returns (results in request order, wall seconds, disruption info).
    """
    import requests

    results: list[Result | None] = [None] * len(requests_)
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    triggered = threading.Event()
    info: dict[str, Any] = {}
    step = max(1, len(requests_) // 10)

    def disruption() -> None:
        info["at_s"] = time.perf_counter() - t0
        try:
            info.update(disrupt())
        except Exception as e:  # noqa: BLE001 - reported with the scenario
            info["error"] = f"{type(e).__name__}: {e}"

    disruptor = threading.Thread(target=disruption, daemon=True) if disrupt else None

    def worker() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = state["next"]
                    if i >= len(requests_):
                        return
                    state["next"] += 1
                results[i] = _send(session, url, requests_[i], t0, timeout)
                with lock:
                    state["done"] += 1
                    done = state["done"]
                if disruptor and done >= disrupt_after and not triggered.is_set():
                    triggered.set()
                    disruptor.start()
                if done % step == 0:
                    print(f"  {label}: {done}/{len(requests_)} requests, {time.perf_counter() - t0:.0f} s", flush=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    if disruptor and disruptor.is_alive():
        disruptor.join(180)
    return [r for r in results if r is not None], wall, info


def percentile_ms(results: list[Result], q: float) -> float:
    return float(np.percentile([r.ms for r in results], q)) if results else float("nan")


def status_counts(results: list[Result]) -> dict[str, int]:
    """Requests per class: 2xx, 4xx, 5xx and ``conn`` (no HTTP answer)."""
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "conn": 0}
    for r in results:
        key = "conn" if r.status == 0 else f"{r.status // 100}xx"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --------------------------------------------------------------------------- replicas and memory


@dataclass(frozen=True)
class Replica:
    """A live Serve actor: ``deployment`` is the deployment name, or ``proxy``."""

    deployment: str
    name: str
    pid: int


def serve_replicas(dashboard: str, app: str = APP) -> list[Replica]:
    """The application's live replicas and the HTTP proxy, from the State API at ``dashboard`` (URL)."""
    from ray.util.state import list_actors

    out = []
    alive = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False)
    for a in alive:
        cls = a.class_name or ""
        if cls.startswith(f"ServeReplica:{app}:"):
            out.append(Replica(cls.split(":", 2)[2], a.name, int(a.pid)))
        elif cls == "ProxyActor":
            out.append(Replica("proxy", a.name, int(a.pid)))
    return sorted(out, key=lambda r: (r.deployment, r.name))


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (10^6 bytes); NaN when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


def anon_mb(pid: int) -> float:
    """The anonymous part of ``pid``'s resident set in MB (``RssAnon``: its own heap and arenas), without
    the shared pages it maps (``RssShmem``: Ray's object store; ``RssFile``: code and files). NaN when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


def memory_snapshot(dashboard: str, app: str = APP) -> dict[str, tuple[Replica, float]]:
    """Actor name -> (replica, RSS in MB)."""
    return {r.name: (r, rss_mb(r.pid)) for r in serve_replicas(dashboard, app)}


@dataclass(frozen=True)
class MemoryRow:
    deployment: str
    before_mb: float
    after_mb: float
    note: str
    """'' (same process), or how the process changed (restarted after the kill)."""
    cache_growth_mb: float = 0.0

    @property
    def growth_mb(self) -> float:
        return self.after_mb - self.before_mb - self.cache_growth_mb

    @property
    def ok(self) -> bool:
        return self.growth_mb <= MEMORY_BOUND_MB


def compare_memory(before: dict[str, tuple[Replica, float]], after: dict[str, tuple[Replica, float]],
                   cache_growth_mb: float, between: dict[str, tuple[Replica, float]] | None = None) -> list[MemoryRow]:
    """One row per process, matched by actor name; a replaced replica is matched by deployment.

    ``between``: snapshots of some processes taken in the middle (right after a hot swap), shown in the note.
    """
    rows = []
    for name, (rep, mb) in before.items():
        note = f"{between[name][1]:.0f} right after the swap" if between and name in between else ""
        if name in after:
            rows.append(MemoryRow(rep.deployment, mb, after[name][1], note,
                                  cache_growth_mb if rep.deployment == "ingress" else 0.0))
        else:
            new = [m for n, (r, m) in after.items() if r.deployment == rep.deployment and n not in before]
            rows.append(MemoryRow(rep.deployment, mb, new[0] if new else float("nan"),
                                  "replaced (new process)" if new else "gone"))
    return rows


def kill_replica(dashboard: str, deployment: str, app: str = APP, restart_timeout: float = 120.0) -> dict[str, Any]:
    """``ray.kill`` the first live replica of ``deployment``; wait until Serve runs a new one.

    Returns the killed actor's name, the new one's, and how many seconds the new replica took.
    """
    import ray
    from ray import serve

    victim = next(r for r in serve_replicas(dashboard, app) if r.deployment == deployment)
    t_kill = time.perf_counter()
    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    print(f"  killed {victim.name} (pid {victim.pid})", flush=True)
    deadline = t_kill + restart_timeout
    while time.perf_counter() < deadline:
        new = [r for r in serve_replicas(dashboard, app) if r.deployment == deployment and r.name != victim.name]
        st = serve.status().applications[app].deployments[deployment]
        if new and st.replica_states.get("RUNNING", 0) >= 1 and st.status == "HEALTHY":
            return {"killed": victim.name, "restart_s": time.perf_counter() - t_kill, "new": new[0].name}
        time.sleep(0.25)
    raise RuntimeError(f"no new {deployment} replica within {restart_timeout:g} s of the kill")


def hot_swap(dashboard: str, config: dict[str, Any], url: str, model: str, checkpoint: str,
             timeout: float = 120.0) -> dict[str, Any]:
    """Deploy ``config`` with ``model``'s ``user_config`` checkpoint changed; wait until it serves it.

    Returns the seconds the swap took, the replica's ``swaps`` counter and the new checkpoint.
    """
    import requests

    from serve_app.replica import checkpoint_label
    from testkit.serve import deploy

    app = config["applications"][0]
    others = [d for d in app.get("deployments", []) if d["name"] != f"model_{model}"]
    app["deployments"] = [*others, {"name": f"model_{model}", "user_config": {"checkpoint": checkpoint}}]
    want = checkpoint_label(checkpoint)  # /v1/models names a checkpoint by its label, not the server's path
    t0 = time.perf_counter()
    deploy(dashboard, config)
    print(f"  deployed the swap of {model} to {Path(checkpoint).name}", flush=True)
    last_error = ""
    while time.perf_counter() - t0 < timeout:
        try:
            info = next(m for m in requests.get(f"{url}/v1/models", timeout=30).json()["models"] if m["name"] == model)
        except requests.RequestException as e:  # a poll refused under load is not the swap's failure: poll again
            last_error = f" (last poll: {type(e).__name__}: {e})"
            time.sleep(0.5)
            continue
        if info.get("checkpoint") == want:
            return {"swap_s": time.perf_counter() - t0, "swaps": info.get("swaps"), "checkpoint": want}
        time.sleep(0.25)
    raise RuntimeError(f"{model} did not serve {want} within {timeout:g} s{last_error}")


def ingress_stats(url: str) -> dict[str, Any]:
    import requests

    return requests.get(f"{url}/v1/stats", timeout=30).json()


# --------------------------------------------------------------------------- scenarios


@dataclass
class ScenarioReport:
    """What one scenario measured, and whether it kept its bounds (``problems`` empty)."""

    name: str
    results: list[Result]
    wall_s: float
    memory: list[MemoryRow]
    stats_before: dict[str, Any]
    stats_after: dict[str, Any]
    repeats: int = 0
    """Requests in the workload that repeat an earlier one (cache candidates)."""
    disruption: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.results)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status != 200]

    def cache_delta(self, key: str) -> int:
        return int(self.stats_after["cache"][key]) - int(self.stats_before["cache"][key])

    @property
    def retries(self) -> int:
        return int(self.stats_after["model_retries"]) - int(self.stats_before["model_retries"])


def run_scenario(name: str, url: str, dashboard: str, workload: list[Request], concurrency: int,
                 disrupt: Callable[[], dict[str, Any]] | None = None, watch: str = "") -> ScenarioReport:
    """Run the workload once (with ``disrupt`` after a third of it) and check the bounds.

    ``watch``: a deployment whose memory is also read right after the disruption (a hot swap).
    """
    print(f"scenario {name}: {len(workload)} requests at concurrency {concurrency}", flush=True)

    def disrupt_then_snapshot() -> dict[str, Any]:
        out = disrupt()
        out["memory"] = {n: v for n, v in memory_snapshot(dashboard).items() if v[0].deployment == watch}
        return out

    stats0, mem0 = ingress_stats(url), memory_snapshot(dashboard)
    results, wall, info = run_load(url, workload, concurrency, disrupt and disrupt_then_snapshot,
                                   len(workload) // 3, label=name)
    stats1, mem1 = ingress_stats(url), memory_snapshot(dashboard)
    cache_growth = max(0.0, (stats1["cache"]["bytes"] - stats0["cache"]["bytes"]) / 1e6)
    memory = compare_memory(mem0, mem1, cache_growth, info.pop("memory", None))
    rep = ScenarioReport(name, results, wall, memory, stats0, stats1, sum(r.repeat for r in workload), info)
    rep.problems = check(rep)
    print(f"scenario {name}: {rep.counts}, p50 {percentile_ms(results, 50):.0f} ms, "
          f"p99 {percentile_ms(results, 99):.0f} ms, problems: {rep.problems or 'none'}", flush=True)
    return rep


def check(rep: ScenarioReport) -> list[str]:
    """The bounds a scenario broke, in words."""
    problems = []
    if rep.failed:
        sample = "; ".join(f"{r.status} {r.error[:80]}" for r in rep.failed[:3])
        problems.append(f"{len(rep.failed)} of {len(rep.results)} requests failed ({sample})")
    if "error" in rep.disruption:
        problems.append(f"the disruption failed: {rep.disruption['error']}")
    for m in rep.memory:
        if not m.ok:
            problems.append(f"{m.deployment} RSS grew {m.growth_mb:.0f} MB (bound {MEMORY_BOUND_MB:g} MB)")
    if rep.name == "kill" and not any(m.note.startswith("replaced") for m in rep.memory):
        problems.append("no replica was replaced after the kill")
    if rep.name == "swap" and "checkpoint" in rep.disruption:
        if not any(r.checkpoint == rep.disruption["checkpoint"] for r in rep.results):
            problems.append("no request was answered by the swapped-in checkpoint")
        if any(m.note.startswith("replaced") for m in rep.memory):
            problems.append("the swap replaced a replica instead of reconfiguring it in place")
    return problems


def markdown(rep: ScenarioReport, concurrency: int, checkpoints: str) -> str:
    """The scenario's section body for RELIABILITY.md."""
    from bench.results import markdown_table

    c, res = rep.counts, rep.results
    hits, misses = rep.cache_delta("hits"), rep.cache_delta("misses")
    what = {
        "steady": "The load alone.",
        "kill": "After a third of the requests, `ray.kill` of the `model_base` replica; Serve starts a new one "
                "and the ingress retries model calls whose replica died.",
        "swap": "After a third of the requests, `serve deploy` with a new `user_config` checkpoint for "
                "`model_base` (hot swap in place).",
    }[rep.name]
    lines = [
        f"{what} {len(res)} POST /v1/matte requests at concurrency {concurrency}: sides 64-512 px, "
        f"40 % dark (lowlight model) / 60 % normal light (base model), a quarter PNG and the rest JPEG, three "
        f"output kinds, {rep.repeats} repeating an earlier request of the run; {checkpoints}; one replica per model. "
        f"Verdict: **{'PASS' if not rep.problems else 'FAIL'}**"
        + ("" if not rep.problems else " (" + "; ".join(rep.problems) + ")") + ".",
        "",
    ]
    served = {m: sum(1 for r in res if r.model == m) for m in sorted({r.model for r in res if r.model})}
    lines.append(markdown_table(
        ["requests", "2xx", "4xx", "5xx", "conn. errors", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s",
         "cache hits", "cache misses", "hit rate", "model retries"],
        [[len(res), c["2xx"], c["4xx"], c["5xx"], c["conn"], percentile_ms(res, 50), percentile_ms(res, 95),
          percentile_ms(res, 99), max((r.ms for r in res), default=float("nan")), len(res) / rep.wall_s,
          hits, misses, f"{hits / max(1, hits + misses):.0%}", rep.retries]],
    ))
    lines.append("Served by model: " + ", ".join(f"{m} {n}" for m, n in served.items()) + ". Latencies are the "
                 "client's, request sent to response read; model retries are model calls the ingress sent again "
                 "because their replica died.")
    d = rep.disruption
    if rep.name == "kill" and "restart_s" in d:
        lines.append(f"The new `model_base` replica ran {d['restart_s']:.1f} s after the kill.")
    if rep.name == "swap" and "swap_s" in d:
        new = {r.checkpoint for r in res if r.model == "base"}
        lines.append(f"The swap took {d['swap_s']:.1f} s from deploy to serving (replica swaps counter: "
                     f"{d.get('swaps')}); base answers carried {len(new)} distinct checkpoints. Repeats of images "
                     "first matted before the swap miss the cache by design (its key includes the checkpoint).")
    lines += ["", f"Memory (RSS, MB) before and after the scenario, after a {WARMUP}-request warm-up at the start of "
              f"the run; bound: growth <= {MEMORY_BOUND_MB:g} MB per process (the ingress net of its result cache's "
              "growth, which `cache.max_mb` bounds):", ""]
    lines.append(markdown_table(
        ["process", "before", "after", "growth", "within bound", "note"],
        [[m.deployment, m.before_mb, m.after_mb, m.growth_mb, "yes" if m.ok else "NO",
          m.note or (f"cache grew {m.cache_growth_mb:.1f} MB" if m.deployment == "ingress" else "")]
         for m in rep.memory],
    ))
    return "\n".join(lines)


def write_section(rep: ScenarioReport, concurrency: int, checkpoints: str, path: Path = RELIABILITY) -> None:
    """Replace this scenario's section of ``path`` (created with the reliability header if missing)."""
    from bench.results import update_results

    if not path.exists():
        path.write_text(RELIABILITY_HEADER)
    update_results(SECTION.format(rep.name), markdown(rep, concurrency, checkpoints), path=path)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=600, help="requests per scenario (default 600: ~3 min on 2 cores)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of steady,kill,swap")
    p.add_argument("--checkpoints", nargs=2, metavar=("BASE", "LOWLIGHT"), help="real checkpoints (default: tiny ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print, do not update bench/RELIABILITY.md")
    args = p.parse_args(argv)
    bad = set(args.scenarios.split(",")) - set(SCENARIOS)
    if bad:
        p.error(f"--scenarios: unknown {sorted(bad)}; choose from {', '.join(SCENARIOS)}")
    return args


def md_backend() -> str:
    """The inference backend the test config asks the model deployments for."""
    from serve_app.config import DEFAULT_CONFIG_PATH, app_entry, load_serve_yaml

    return str(app_entry(load_serve_yaml(DEFAULT_CONFIG_PATH))["args"]["model_deployment"].get("backend", "auto"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.local_app import bench_checkpoints, local_app
    from testkit.env import configure
    from testkit.serve import make_checkpoint

    configure()  # the auth and S3 environment before Ray is imported

    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        checkpoints, described = bench_checkpoints(args.checkpoints, tmp)
        if args.checkpoints:
            swap_to = str(tmp / "base-v2.pt")
            shutil.copy(checkpoints["base"], swap_to)
        else:
            swap_to = make_checkpoint(tmp / "base-v2.pt", 7)
        described += f", backend {md_backend()}"
        with local_app(tmp, checkpoints) as (cluster, config, url):
            print("warming up ...", flush=True)
            warm, _, _ = run_load(url, make_workload(WARMUP, args.seed + 100), args.concurrency, label="warm-up")
            print(f"warm-up: {status_counts(warm)}", flush=True)
            reports = []
            for k, name in enumerate(args.scenarios.split(",")):
                disrupt = {
                    "steady": None,
                    "kill": lambda: kill_replica(cluster["dashboard"], "model_base"),
                    "swap": lambda: hot_swap(cluster["dashboard"], json.loads(json.dumps(config)), url, "base", swap_to),
                }[name]
                workload = make_workload(args.requests, args.seed + 1 + k)  # new images: a scenario starts cache-cold
                rep = run_scenario(name, url, cluster["dashboard"], workload, args.concurrency, disrupt,
                                   watch="model_base" if name == "swap" else "")
                reports.append(rep)
                if args.no_write:
                    print(markdown(rep, args.concurrency, described), flush=True)
                else:
                    write_section(rep, args.concurrency, described)
        if not args.no_write:
            print(f"wrote {RELIABILITY.relative_to(ROOT)}", flush=True)
        return 1 if any(r.problems for r in reports) else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
