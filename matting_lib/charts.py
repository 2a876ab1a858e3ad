"""Charts: matplotlib figures of an exact pixel size, drawn with the Agg backend.

The one home of how the project makes a chart (the sweep's validation-SAD plot, the benchmarks'
bar and RSS charts). Every figure is a plain :class:`matplotlib.figure.Figure` with an Agg canvas
attached explicitly: no ``pyplot``, so no global figure state, no GUI backend and no display
needed, and it is safe to use from any thread of a job driver. matplotlib is imported only here,
and only when a chart is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
"""Pixels per inch: sizes are given in pixels, so a figure of ``w x h`` px is ``w/DPI x h/DPI`` in."""

TABLEAU10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
             (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
"""matplotlib's default colour cycle (``tab10``) as 8-bit RGB, for callers that cycle over series."""


def figure(width: int, height: int) -> Figure:
    """An empty white figure of exactly ``width`` x ``height`` pixels with an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if width < 1 or height < 1:
        raise ValueError(f"a chart needs a positive size in pixels, got {width} x {height}")
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def colour(rgb: Sequence[int]) -> tuple[float, ...]:
    """An 8-bit RGB triple as matplotlib's 0-1 floats."""
    return tuple(c / 255 for c in rgb)


def to_rgb(fig: Figure) -> np.ndarray:
    """The figure rendered as an ``(H, W, 3)`` uint8 RGB array (the size it was made with)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG of its own pixel size (no tight bounding box, so no resizing)."""
    fig.savefig(path, format="png", dpi=DPI, facecolor=fig.get_facecolor())
    return Path(path)
