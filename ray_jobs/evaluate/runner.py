"""Scoring the images of an evaluation: in this process, or one Ray task per image."""

from __future__ import annotations

from typing import Sequence

from matting_lib.evaluation.scoring import EvalSpec, ImageResult, score_image
from ray_jobs.common import init_ray


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
