"""Shared plumbing for the benchmarks: timing, the machine description, and ``bench/RESULTS.md``.

Each benchmark owns one section of ``RESULTS.md`` (``## <section>``) and rewrites only that
section, with the machine and the date in its header, so the file always holds the latest
run of every benchmark. Charts are PNGs next to it.

Timing rules (the machine is shared and noisy): warm up first, report the median of
repeated measurements, and compare variants only within one run (ratios side by side).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

from matting_lib import tables

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Written by the benchmarks in `bench/` themselves; each section is replaced by the latest run "
    "of its benchmark. Figures are medians after a warm-up; ratios are measured side by side in one run.\n"
)


def machine() -> str:
    """One line describing the CPU, core count, memory and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def load_average() -> str:
    """The 1-minute load average, to tell a reader how busy the machine was."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def median_time(fn: Callable[[], object], warmup: int = 2, repeats: int = 7, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` calls.

    At least ``repeats`` measurements are taken, more while their total is under ``min_time``.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table; floats are shown with 3 significant digits."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    return tables.markdown_table(header, rows, fmt=cell)


def update_results(section: str, markdown: str, path: Path = RESULTS) -> Path:
    """Replace (or append) ``## <section>`` in ``RESULTS.md`` with ``markdown``.

    The section starts with the date, the machine and its load, then ``markdown``.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = f"## {section}\n\nRun {stamp} on: {machine()} (load average at the end: {load_average()}).\n\n{markdown.strip()}\n"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")
    return path


BAR = (40, 120, 200)
"""The bars' colour (8-bit RGB)."""


def save_chart(path: Path, title: str, labels: list[str], values: list[float], unit: str) -> Path:
    """A horizontal bar chart as PNG (matplotlib, Agg): one bar per label, top to bottom in the
    given order, each with its value and ``unit`` at its end. 900 px wide, 34 px per bar."""
    from matting_lib import charts

    if len(labels) != len(values):
        raise ValueError(f"save_chart: {len(labels)} labels for {len(values)} values")
    fig = charts.figure(900, 60 + 34 * len(labels))
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ys = range(len(labels))
    ax.barh(ys, values, height=0.7, color=charts.colour(BAR))
    ax.set_yticks(ys, [label[:40] for label in labels], fontsize=9)
    ax.invert_yaxis()  # the first label on top
    vmax = max(values) if values and max(values) > 0 else 1.0
    ax.set_xlim(0, vmax * 1.25)  # room for the value labels
    for y, v in zip(ys, values):
        ax.annotate(f"{v:.3g} {unit}", (v, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.subplots_adjust(left=0.36, right=0.97, top=1 - 42 / fig.bbox.height, bottom=24 / fig.bbox.height)
    return charts.save_png(fig, path)
