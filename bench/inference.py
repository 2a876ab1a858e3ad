"""Inference speed: the base model in torch and ONNX Runtime against two reference architectures.

    python -m bench.inference [--quick] [--config configs/base.yaml] [--checkpoint models/base.pt]

Measured side by side in one run, on random float32 input (B, 3, S, S) in [0, 1] straight into
the network (no decoding or resizing), for S in {512, 1024} and B in {1, 4}:

- the base model (``--checkpoint`` if it exists, else the ``model`` section of ``--config``,
  else ``ModelConfig()`` defaults; weights do not change speed) in torch eager FP32, ONNX
  Runtime FP32 and ONNX Runtime INT8 (static QDQ, calibrated on generated images);
- the anchors of :mod:`bench.anchors`, MODNet and U²-Netp, in torch eager FP32 and ONNX
  Runtime FP32, so each architecture is also compared in its best backend.

Figures: images/s (median time of 2-5 calls after a warm-up call, :func:`repeats`), FLOPs per image from
``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 2 FLOPs), achieved GFLOP/s, and
that as a fraction of this machine's FP32 matmul peak measured in the same run (torch.mm of
2048x2048, all threads). Both runtimes use the same thread count. Results replace the
"Inference" section of ``bench/RESULTS.md`` and ``bench/inference.png`` (images/s at 512²,
batch 1). ``--quick``: 512² batch 1 only, fewer repeats, nothing written unless ``--write``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from bench.anchors import ANCHORS  # noqa: E402
from bench.results import markdown_table, median_time, save_chart, update_results  # noqa: E402
from matting_lib.config import ModelConfig, load_config  # noqa: E402

CHART = Path(__file__).resolve().parent / "inference.png"
TARGET_VS_MODNET = 5.0
"""Issue target: base images/s at 512² (best backend) over MODNet's (best backend)."""


@dataclass
class Row:
    model: str
    backend: str
    size: int
    batch: int
    seconds: float
    """Median seconds per call (one batch)."""
    gflops: float
    """GFLOPs per image at this size."""

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 5) -> dict[str, float]:
    """This machine's FP32 matmul GFLOP/s: the best of ``repeats`` n x n products, for torch.mm
    and an ONNX Runtime MatMul, each with the current thread count; ``peak`` is the larger."""
    from onnx import TensorProto, helper

    from matting_lib.inference.onnx_runtime import make_session

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", "n"]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", "n"])],
    )
    session = make_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                           "cpu", num_threads=torch.get_num_threads())
    best = {"torch.mm": 0.0, "ORT MatMul": 0.0}
    for n in sizes:
        a, b = torch.rand(n, n), torch.rand(n, n)
        an, bn = a.numpy(), b.numpy()
        for name, fn in (("torch.mm", lambda: torch.mm(a, b)), ("ORT MatMul", lambda: session.run(None, {"a": an, "b": bn}))):
            fn()
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best[name] = max(best[name], 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {**best, "peak": max(best.values())}


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    """GFLOPs of one forward pass on a (1, 3, size, size) image."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def flops_by_part(model: torch.nn.Module, size: int) -> dict[str, float]:
    """GFLOPs of one (1, 3, size, size) forward per top-level part (``encoder``,
    ``decoder.blocks.<i>``, ``head``; other modules' FLOPs under their own names)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    counts = counter.get_flop_counts()
    root = type(model).__name__ + "."
    names = [k[len(root):] for k in counts if k.startswith(root)]
    parts = [n for n in names if "." not in n and n != "decoder"] + [n for n in names if n.startswith("decoder.blocks.") and n.count(".") == 2]
    return {n: sum(counts[root + n].values()) / 1e9 for n in parts}


def ort_profile(data: bytes, x: np.ndarray, threads: int, runs: int = 3) -> dict[str, dict[str, float]]:
    """Shares of ONNX Runtime node time over ``runs`` calls (after a warm-up):
    ``{"ops": per op type, "nodes": per node, "op type: node name"}``, largest first."""
    import json
    import tempfile

    from matting_lib.inference.onnx_runtime import onnxruntime

    ort = onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        session.run(None, {"image": x})
        for _ in range(runs):
            session.run(None, {"image": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    by_node: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            node = f"{op} {e['name'][: -len('_kernel_time')]}"
            by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0))
            by_node[node] = by_node.get(node, 0.0) + float(e.get("dur", 0))
    total = sum(by_op.values()) or 1.0

    def shares(d: dict[str, float]) -> dict[str, float]:
        return dict(sorted(((k, v / total) for k, v in d.items()), key=lambda kv: -kv[1]))

    return {"ops": shares(by_op), "nodes": shares(by_node)}


def shown(path: str) -> str:
    """``path`` relative to the repository when inside it (no machine paths in RESULTS.md)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


def base_model(config: str, checkpoint: str) -> tuple[torch.nn.Module, str]:
    """The model to benchmark and where it came from."""
    from matting_lib.nets import build_model

    if checkpoint and Path(checkpoint).exists():
        from matting_lib.checkpoint import load_model

        return load_model(checkpoint), shown(checkpoint)
    if config and Path(config).exists():
        return build_model(load_config(config).model, load_pretrained=False).eval(), f"{shown(config)} (model section, random weights)"
    return build_model(ModelConfig()).eval(), "ModelConfig() defaults (random weights)"


def runners(
    model: torch.nn.Module, int8: bool, threads: int
) -> tuple[dict[str, Callable[[np.ndarray], object]], dict[str, bytes]]:
    """(backend name -> function running one float32 NCHW batch, ORT backend name -> ONNX bytes)."""
    from matting_lib.inference.onnx_runtime import make_session
    from matting_lib.inference.export import export_onnx, generated_images, quantize_int8

    def torch_run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    fp32 = export_onnx(model)
    out: dict[str, Callable[[np.ndarray], object]] = {"torch eager FP32": torch_run}
    graphs = {"ORT FP32": fp32}
    if int8:
        calib = generated_images(seed=1, sizes=[(512, 512)] * 8)
        graphs["ORT INT8"] = quantize_int8(fp32, calib, max_side=512)
    for name, data in graphs.items():
        session = make_session(data, "cpu", num_threads=threads)
        out[name] = lambda x, s=session: s.run(None, {"image": x})
    return out, graphs


def repeats(quick: bool, size: int, batch: int) -> int:
    """Timed calls per setting (after one warm-up call): 5 at 512² batch 1 down to 2 at 1024²
    batch 4, so each setting costs about the same; 2 with ``--quick``."""
    return 2 if quick else max(2, 5 - (size // 512 - 1) * 2 - (batch > 1))


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all processes of the machine have used, CPU seconds this process has used)."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def measure(settings: list[tuple[int, int]], quick: bool, threads: int, config: str, checkpoint: str) -> tuple[list[Row], dict]:
    info: dict = {"cpu_start": cpu_seconds(), "wall_start": time.perf_counter()}
    info["matmul"] = matmul_peak((1024,) if quick else (1024, 2048, 3072))
    info["peak"] = info["matmul"]["peak"]
    print(f"inference: FP32 matmul peak {info['peak']:.1f} GFLOP/s ({threads} threads)", flush=True)
    base, info["base_source"] = base_model(config, checkpoint)
    models = {"base": base, **{name: make().eval() for name, make in ANCHORS.items()}}
    info["params"] = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()}
    rows: list[Row] = []
    rng = np.random.default_rng(0)
    for name, model in models.items():
        flops = {s: flops_per_image(model, s) for s in sorted({s for s, _ in settings})}
        t0 = time.perf_counter()
        runs, graphs = runners(model, int8=name == "base", threads=threads)
        if name == "base":
            x512 = rng.random((1, 3, 512, 512), dtype=np.float32)
            info["base_flops"] = flops_by_part(model, 512)
            info["base_ort_ops"] = {backend: ort_profile(data, x512, threads) for backend, data in graphs.items()}
        for backend, run in runs.items():
            for size, batch in settings:
                x = rng.random((batch, 3, size, size), dtype=np.float32)
                seconds = median_time(lambda: run(x), warmup=1, repeats=repeats(quick, size, batch))
                rows.append(Row(name, backend, size, batch, seconds, flops[size]))
                print(f"inference: {name:8s} {backend:17s} {size}² x{batch}: {batch / seconds:7.2f} images/s", flush=True)
        print(f"inference: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    (all0, own0), (all1, own1) = info["cpu_start"], cpu_seconds()
    info["wall"] = time.perf_counter() - info["wall_start"]
    info["others_cpu"] = max(0.0, (all1 - all0) - (own1 - own0))
    return rows, info


def best(rows: list[Row], model: str, size: int, batch: int) -> Row:
    return max((r for r in rows if (r.model, r.size, r.batch) == (model, size, batch)), key=lambda r: r.images_per_s)


def report(rows: list[Row], info: dict, settings: list[tuple[int, int]], threads: int) -> str:
    peak = info["peak"]
    table = [
        [r.model, r.backend, f"{r.size}²", r.batch, r.images_per_s, 1000 * r.seconds / r.batch, r.gflops,
         r.gflops * r.images_per_s, f"{100 * r.gflops * r.images_per_s / peak:.1f}%"]
        for r in rows
    ]
    header = ["model", "backend", "size", "batch", "images/s", "ms/image", "GFLOP/image", "GFLOP/s", "of matmul peak"]
    ratios = []
    for size, batch in settings:
        b = best(rows, "base", size, batch)
        for anchor in ANCHORS:
            a = best(rows, anchor, size, batch)
            same = next(r for r in rows if (r.model, r.backend, r.size, r.batch) == (anchor, "torch eager FP32", size, batch))
            base_torch = next(r for r in rows if (r.model, r.backend, r.size, r.batch) == ("base", "torch eager FP32", size, batch))
            ratios.append([f"{size}²", batch, anchor, f"{b.backend}", f"{a.backend}", b.images_per_s / a.images_per_s,
                           base_torch.images_per_s / same.images_per_s])
    torch512 = next(r for r in rows if (r.model, r.backend, r.size, r.batch) == ("base", "torch eager FP32", 512, 1))
    ort512 = next(r for r in rows if (r.model, r.backend, r.size, r.batch) == ("base", "ORT FP32", 512, 1))
    target = best(rows, "base", 512, 1).images_per_s / best(rows, "MODNet", 512, 1).images_per_s
    others = info["others_cpu"] / (info["wall"] * (os.cpu_count() or 1))
    params = ", ".join(f"{k} {v:.2f}M" for k, v in info["params"].items())
    lines = [
        f"Base model: {info['base_source']}. Parameters: {params}. Threads: {threads} (torch and ONNX Runtime).",
        f"FP32 matmul peak measured in this run: **{peak:.1f} GFLOP/s** (best n x n product, n up to 3072: "
        + ", ".join(f"{k} {v:.1f}" for k, v in info["matmul"].items() if k != "peak")
        + "). INT8 rows can pass 100%: the int8 dot-product units (AVX-512 VNNI) do 4x the multiply-adds of FP32.",
        f"Other processes used {info['others_cpu']:.0f} CPU-seconds during this {info['wall']:.0f} s run "
        f"({100 * others:.1f}% of the machine's cores)"
        + (": **the shared machine was busy**, so absolute figures are noisy; ratios come from the same run."
           if others > 0.05 else "; the machine was otherwise quiet."),
        "",
        markdown_table(header, table),
        "Ratios, base over anchor (images/s), per setting: best backend of each, and both in torch eager FP32.",
        "",
        markdown_table(["size", "batch", "anchor", "base backend", "anchor backend", "best/best", "torch/torch"], ratios),
        f"Target (base >= {TARGET_VS_MODNET:g}x MODNet at 512², batch 1, best backends): **{target:.2f}x — "
        + ("met" if target >= TARGET_VS_MODNET else f"missed by {TARGET_VS_MODNET / target:.2f}x") + "**.",
        "",
        f"CPU backend for `load_predictor(backend=\"auto\")`: base at 512² batch 1 runs {torch512.images_per_s:.2f} images/s "
        f"in torch eager and {ort512.images_per_s:.2f} in ONNX Runtime FP32 → "
        f"**{'onnx' if ort512.images_per_s > torch512.images_per_s else 'torch'}**.",
        "",
        "![images/s at 512², batch 1](inference.png)",
        "",
        "Where the base model's work goes at 512² (FLOP counter, GFLOPs per part): "
        + ", ".join(f"{k} {v:.2f}" for k, v in info["base_flops"].items()) + ".",
        "",
    ]
    for backend, prof in info["base_ort_ops"].items():
        lines.append(f"{backend} profile at 512² batch 1 (share of kernel time per op type): "
                     + ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(prof["ops"].items())[:8]) + ". "
                     + "Largest nodes: " + ", ".join(f"`{k}` {100 * v:.0f}%" for k, v in list(prof["nodes"].items())[:4]) + ".")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="512² batch 1 only, fewer repeats; writes nothing unless --write")
    p.add_argument("--write", action="store_true", help="with --quick: still update RESULTS.md and the chart")
    p.add_argument("--config", default=str(ROOT / "configs" / "base.yaml"))
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "base.pt"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = [(512, 1)] if args.quick else [(512, 1), (512, 4), (1024, 1), (1024, 4)]
    rows, info = measure(settings, args.quick, args.threads, args.config, args.checkpoint)
    text = report(rows, info, settings, args.threads)
    print(text)
    if args.quick and not args.write:
        return
    r512 = [r for r in rows if (r.size, r.batch) == (512, 1)]
    save_chart(CHART, "Inference, 512x512, batch 1 (images/s, higher is better)",
               [f"{r.model} {r.backend}" for r in r512], [r.images_per_s for r in r512], "img/s")
    update_results("Inference", text)
    print(f"inference: wrote {CHART.name} and the 'Inference' section of RESULTS.md", flush=True)


if __name__ == "__main__":
    main()
