"""Visual reports: a grid of input | ground truth | prediction(s), one row per image, as a PNG.

The grid generalises seed 002's ``visualize_result`` (input, ground-truth alpha, predicted
alpha side by side) to many images and many models, drawn with OpenCV so it needs no
plotting library and runs headless:

    rows = [ReportRow("GT01", image, alpha_gt, {"base": a1, "grabcut": a2}, {"base": "MAD 0.031"})]
    save_grid("out/grid.png", rows, cutouts=True)        # local path or s3://

Layout: a header strip with the column titles; then per row, one tile per column, each
image fitted (aspect kept, area/linear resampling) into a ``tile`` x ``tile`` box on a dark
grey background, with a caption strip under it. The row label is written on the input tile;
each prediction's note (e.g. its metrics) in its caption. Columns: ``input``, ``ground
truth`` (if any row has one), then every prediction name in order of first appearance;
with ``cutouts=True`` each prediction is followed by its cut-out (the input composited
with that alpha over a light/dark checkerboard, the usual transparency display). A row
without some column gets an empty tile.

Conventions: images uint8 (H, W, 3) RGB; alphas (H, W) float in [0, 1] or uint8 0..255,
shown as grey (0 = black = background, 1 = white = foreground). The returned grid is uint8
RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from matting_lib import io
from matting_lib.postprocess import encode_image
from matting_lib.resize import resize_long_side

__all__ = ["ReportRow", "grid_columns", "render_grid", "save_grid", "checkerboard", "cutout_on_checkerboard", "alpha_to_grey"]

BACKGROUND = (40, 40, 40)
"""Tile and margin colour (RGB)."""
TEXT = (235, 235, 235)
CAPTION_H = 18
"""Height in pixels of the header strip and of each caption strip."""
GAP = 4
"""Pixels between tiles."""
CHECKER = (200, 150)
"""Light and dark grey levels of the checkerboard."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.4


@dataclass
class ReportRow:
    """One grid row: an input, its ground truth (optional) and named predictions."""

    label: str
    """Written on the input tile, e.g. the image name and condition."""
    image: np.ndarray
    """uint8 (H, W, 3) RGB input."""
    alpha_gt: np.ndarray | None = None
    """Ground-truth alpha (H, W), float [0, 1] or uint8; None when unknown."""
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    """Column title -> predicted alpha (H, W), float [0, 1] or uint8."""
    notes: dict[str, str] = field(default_factory=dict)
    """Column title -> caption text (e.g. ``"MAD 0.031"``); may also key ``"input"``."""


def alpha_to_grey(alpha: np.ndarray) -> np.ndarray:
    """(H, W) alpha, float [0, 1] or uint8 -> uint8 (H, W, 3) grey (round(255 * alpha))."""
    a = np.asarray(alpha)
    if a.ndim != 2:
        raise ValueError(f"alpha must be (H, W), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2)


def checkerboard(h: int, w: int, square: int = 8) -> np.ndarray:
    """uint8 (h, w, 3) checkerboard of ``square``-pixel squares; light (CHECKER[0]) at the top-left."""
    yy, xx = np.mgrid[0:h, 0:w]
    light = ((yy // square + xx // square) % 2) == 0
    grey = np.where(light, CHECKER[0], CHECKER[1]).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def cutout_on_checkerboard(image: np.ndarray, alpha: np.ndarray, square: int = 8) -> np.ndarray:
    """``alpha * image + (1 - alpha) * checkerboard``, rounded; uint8 (H, W, 3)."""
    im = _check_rgb(image, "image")
    a = alpha_to_grey(alpha)[..., :1].astype(np.float32) / 255.0
    if a.shape[:2] != im.shape[:2]:
        raise ValueError(f"alpha shape {a.shape[:2]} != image shape {im.shape[:2]}")
    board = checkerboard(*im.shape[:2], square=square).astype(np.float32)
    return np.clip(np.rint(a * im + (1.0 - a) * board), 0, 255).astype(np.uint8)


def _check_rgb(image: np.ndarray, name: str) -> np.ndarray:
    im = np.asarray(image)
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 (H, W, 3) RGB, got {im.dtype} {im.shape}")
    return im


def _fit(tile_img: np.ndarray, tile: int) -> np.ndarray:
    """Fit an RGB image into a ``tile`` x ``tile`` box (centred, aspect kept) on BACKGROUND."""
    small = resize_long_side(tile_img, tile)
    nh, nw = small.shape[:2]
    box = np.empty((tile, tile, 3), np.uint8)
    box[:] = BACKGROUND
    y0, x0 = (tile - nh) // 2, (tile - nw) // 2
    box[y0 : y0 + nh, x0 : x0 + nw] = small
    return box


def _text(canvas: np.ndarray, text: str, x: int, y: int, width: int, boxed: bool = False) -> None:
    """Draw ``text`` with its baseline at y, cut with '...' to fit ``width`` pixels.

    ``boxed``: on a filled BACKGROUND box, so it stays legible over an image.
    """
    def size(t: str) -> int:
        return cv2.getTextSize(t, _FONT, _FONT_SCALE, 1)[0][0]

    if size(text) > width - 4:
        while text and size(text + "...") > width - 4:
            text = text[:-1]
        text += "..."
    if boxed:
        (tw, th), base = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
        cv2.rectangle(canvas, (x, y - th - 3), (x + tw + 4, y + base), BACKGROUND, thickness=-1)
    cv2.putText(canvas, text, (x + 2, y), _FONT, _FONT_SCALE, TEXT, 1, cv2.LINE_AA)


def grid_columns(rows: Sequence[ReportRow], cutouts: bool = False) -> list[str]:
    """Column titles of :func:`render_grid` for these rows, left to right."""
    cols = ["input"]
    if any(r.alpha_gt is not None for r in rows):
        cols.append("ground truth")
    names: list[str] = []
    for r in rows:
        names.extend(n for n in r.predictions if n not in names)
    for n in names:
        cols.append(n)
        if cutouts:
            cols.append(f"{n} cut-out")
    return cols


def _tile_for(row: ReportRow, col: str, names: set[str]) -> np.ndarray | None:
    """The full-size RGB image shown in column ``col`` of ``row`` (None = empty tile)."""
    image = _check_rgb(row.image, f"row {row.label!r} image")
    if col == "input":
        return image
    if col == "ground truth":
        return None if row.alpha_gt is None else alpha_to_grey(row.alpha_gt)
    if col in row.predictions:
        return alpha_to_grey(row.predictions[col])
    if col.endswith(" cut-out") and col[: -len(" cut-out")] in names:
        alpha = row.predictions.get(col[: -len(" cut-out")])
        return None if alpha is None else cutout_on_checkerboard(image, alpha)
    return None


def render_grid(rows: Sequence[ReportRow], tile: int = 192, cutouts: bool = False) -> np.ndarray:
    """The report grid as uint8 (H, W, 3) RGB; see the module docstring for the layout.

    Size: ``W = n_cols * tile + (n_cols + 1) * GAP``,
    ``H = CAPTION_H + n_rows * (tile + CAPTION_H + GAP) + GAP``.

    Raises:
        ValueError: no rows, a tile under 32 pixels, or a malformed image/alpha.
    """
    if not rows:
        raise ValueError("render_grid needs at least one row")
    if tile < 32:
        raise ValueError(f"tile must be >= 32 pixels, got {tile}")
    cols = grid_columns(rows, cutouts)
    names = {n for r in rows for n in r.predictions}
    width = len(cols) * tile + (len(cols) + 1) * GAP
    height = CAPTION_H + len(rows) * (tile + CAPTION_H + GAP) + GAP
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    for j, col in enumerate(cols):
        _text(canvas, col, GAP + j * (tile + GAP), CAPTION_H - 5, tile)
    for i, row in enumerate(rows):
        y = CAPTION_H + i * (tile + CAPTION_H + GAP)
        for j, col in enumerate(cols):
            x = GAP + j * (tile + GAP)
            content = _tile_for(row, col, names)
            if content is not None:
                canvas[y : y + tile, x : x + tile] = _fit(content, tile)
            note = row.notes.get(col, "")
            if note:
                _text(canvas, note, x, y + tile + CAPTION_H - 5, tile)
        _text(canvas, row.label, GAP, y + 14, tile, boxed=True)
    return canvas


def save_grid(uri: str, rows: Sequence[ReportRow], tile: int = 192, cutouts: bool = False) -> str:
    """Render :func:`render_grid` and write it as PNG to a local path or fsspec URI; returns ``uri``."""
    io.write_bytes(uri, encode_image(render_grid(rows, tile, cutouts), "png"))
    return uri
