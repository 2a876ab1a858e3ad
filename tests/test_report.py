"""The visual report grid (matting_lib.report): layout, tile contents, cut-outs, PNG output."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from matting_lib.report import (
    CAPTION_H,
    CHECKER,
    GAP,
    ReportRow,
    alpha_to_grey,
    checkerboard,
    cutout_on_checkerboard,
    grid_columns,
    render_grid,
    save_grid,
)
from testkit.data import synthetic_pair

TILE = 64


def _row(rng, h=TILE, w=TILE, label="img"):
    image, alpha = synthetic_pair(rng, h, w)
    pred = np.clip(alpha.astype(np.float32) / 255 + 0.1, 0, 1)
    return ReportRow(label, image, alpha, {"model": pred}, {"model": "MAD 0.100"})


def _tile(grid, row, col):
    y = CAPTION_H + row * (TILE + CAPTION_H + GAP)
    x = GAP + col * (TILE + GAP)
    return grid[y : y + TILE, x : x + TILE]


def test_grid_size_columns_and_tiles_show_the_alphas(rng):
    rows = [_row(rng, label="a"), _row(rng, label="b")]
    grid = render_grid(rows, tile=TILE)
    cols = grid_columns(rows)
    assert cols == ["input", "ground truth", "model"]
    assert grid.dtype == np.uint8
    assert grid.shape == (CAPTION_H + 2 * (TILE + CAPTION_H + GAP) + GAP, 3 * TILE + 4 * GAP, 3)
    for i, r in enumerate(rows):
        # Tiles are the same size as the inputs here, so they are shown pixel for pixel (the
        # label box covers the top-left corner of the input tile only).
        np.testing.assert_array_equal(_tile(grid, i, 1), np.repeat(r.alpha_gt[..., None], 3, axis=2))
        expected = np.rint(r.predictions["model"] * 255).astype(np.uint8)
        np.testing.assert_array_equal(_tile(grid, i, 2)[..., 0], expected)
        np.testing.assert_array_equal(_tile(grid, i, 0)[20:], r.image[20:])


def test_non_square_input_is_letterboxed_with_aspect_kept(rng):
    row = _row(rng, h=32, w=128)
    grid = render_grid([row], tile=TILE)
    gt_tile = _tile(grid, 0, 1)
    # 128x32 fits as 64x16, centred vertically: rows 24..39 hold the image.
    expected = cv2.resize(row.alpha_gt, (64, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(gt_tile[24:40, :, 0], expected)
    assert (gt_tile[:24] == 40).all() and (gt_tile[40:] == 40).all()


def test_cutout_columns_show_the_input_over_a_checkerboard(rng):
    image = np.full((TILE, TILE, 3), (250, 10, 10), np.uint8)
    alpha = np.zeros((TILE, TILE), np.float32)
    alpha[:, TILE // 2 :] = 1.0
    row = ReportRow("r", image, None, {"m": alpha})
    grid = render_grid([row], tile=TILE, cutouts=True)
    assert grid_columns([row], cutouts=True) == ["input", "m", "m cut-out"]
    cut = _tile(grid, 0, 2)
    np.testing.assert_array_equal(cut[:, TILE // 2 :], image[:, TILE // 2 :])
    np.testing.assert_array_equal(cut[:, : TILE // 2], checkerboard(TILE, TILE)[:, : TILE // 2])
    assert set(np.unique(cut[:, : TILE // 2])) == set(CHECKER)


def test_cutout_matches_the_compositing_formula(rng):
    image, alpha8 = synthetic_pair(rng, 24, 40)
    a = alpha8.astype(np.float64) / 255
    board = np.where(((np.arange(24)[:, None] // 8 + np.arange(40)[None] // 8) % 2) == 0, CHECKER[0], CHECKER[1])
    expected = np.rint(a[..., None] * image + (1 - a[..., None]) * board[..., None])
    got = cutout_on_checkerboard(image, alpha8).astype(np.float64)
    assert np.abs(got - expected).max() <= 1  # float32 arithmetic in the function


def test_missing_columns_are_empty_tiles_and_notes_are_drawn(rng):
    with_gt = _row(rng)
    without = ReportRow("no gt", with_gt.image, None, {"other": with_gt.predictions["model"]})
    grid = render_grid([with_gt, without], tile=TILE)
    assert grid_columns([with_gt, without]) == ["input", "ground truth", "model", "other"]
    assert (_tile(grid, 1, 1) == 40).all()  # no ground truth for row 1
    assert (_tile(grid, 0, 3) == 40).all()  # no "other" prediction for row 0
    caption = grid[CAPTION_H + TILE : CAPTION_H + TILE + CAPTION_H, GAP + 2 * (TILE + GAP) :][:, :TILE]
    assert caption.max() > 150  # the note "MAD 0.100" is written under the model tile


def test_save_grid_writes_a_png_of_the_grid(tmp_path, rng):
    rows = [_row(rng)]
    uri = save_grid(str(tmp_path / "sub" / "grid.png"), rows, tile=TILE, cutouts=True)
    with Image.open(io.BytesIO(open(uri, "rb").read())) as im:
        decoded = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(decoded, render_grid(rows, tile=TILE, cutouts=True))


def test_bad_inputs_raise_clear_errors(rng):
    with pytest.raises(ValueError, match="at least one row"):
        render_grid([])
    with pytest.raises(ValueError, match="tile"):
        render_grid([_row(rng)], tile=8)
    with pytest.raises(ValueError, match="uint8"):
        render_grid([ReportRow("bad", np.zeros((8, 8, 3), np.float32))])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        alpha_to_grey(np.zeros((4, 4, 3), np.float32))


def test_markdown_table_is_the_one_writer_of_the_reports_tables():
    """matting_lib.tables.markdown_table: the evaluation summary, the sweep report and the
    benchmarks all write their tables with it (alignment per column, cells through ``fmt``)."""
    from bench.results import markdown_table as bench_table
    from matting_lib.tables import markdown_table
    from ray_jobs.tune.report import to_markdown

    assert markdown_table(["a", "b"], [[1, None], ["x", 2.5]], align="r") == (
        "| a | b |\n|---:|---|\n| 1 | None |\n| x | 2.5 |\n")
    assert bench_table(["t"], [[0.123456], [12345.6]]) == "| t |\n|---|\n| 0.123 |\n| 12346 |\n"
    assert to_markdown([{"trial": "t1", "lr": None, "sad": 0.0123456}]) == (
        "| trial | lr | sad |\n|---|---|---|\n| t1 |  | 0.01235 |\n")
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        markdown_table(["a"], [[1, 2]])
