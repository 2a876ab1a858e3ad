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


# --------------------------------------------------------------------------- charts (matplotlib, Agg)


def test_chart_figures_have_the_exact_pixel_size():
    from matting_lib import charts

    for w, h in [(960, 540), (900, 94), (333, 77)]:
        img = charts.to_rgb(charts.figure(w, h))
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert (img == 255).all()  # an empty figure is white
    with pytest.raises(ValueError, match="positive size"):
        charts.figure(0, 10)


def _trial(name, curve, planned=3, status="TERMINATED"):
    from ray_jobs.tune.report import TrialSummary

    best = min(curve, key=lambda c: c[1]) if curve else None
    return TrialSummary(name, {}, status, planned, list(curve), {"val_sad": best[1], "epochs_done": best[0]} if best else {})


def _pixels_of(img, rgb):
    return np.argwhere(np.all(img == np.array(rgb, np.uint8), axis=-1))  # (row, col) of the exact colour


def test_sweep_plot_draws_each_trial_as_a_line_in_its_colour():
    """ray_jobs.tune.report.plot_curves: one line per trial in the palette's colours, placed by its values."""
    from ray_jobs.tune.report import PALETTE, plot_curves

    falling = _trial("t1", [(1, 5.0), (2, 4.0), (3, 3.0)])
    stopped = _trial("t2", [(1, 9.0)])  # ASHA stopped it after epoch 1 of 3
    assert stopped.stopped_early
    img = plot_curves([falling, stopped], "sweep asha: validation SAD per epoch")
    assert img.shape == (540, 960, 3) and img.dtype == np.uint8
    plot_area = slice(0, 960 - 250)  # the legend is right of x = 710
    first, second = (_pixels_of(img[:, plot_area], c) for c in PALETTE[:2])
    assert len(first) > 200 and len(second) > 20, (len(first), len(second))
    assert len(_pixels_of(img, PALETTE[2])) == 0  # two trials, two colours
    # The falling curve goes down the image from left to right (row grows with column) and
    # spans most of the axes' width (epochs 1 to 3 are the x range).
    assert np.corrcoef(first[:, 1], first[:, 0])[0, 1] > 0.9
    assert first[:, 1].max() - first[:, 1].min() > 500
    # The stopped trial's single point (SAD 9) is above every point of the other (SAD <= 5).
    assert second[:, 0].max() < first[:, 0].min()
    # Each trial has a legend swatch in its colour right of the axes.
    for c in PALETTE[:2]:
        assert len(_pixels_of(img[:, 960 - 250:], c)) > 10


def test_sweep_plot_without_results_says_so():
    from ray_jobs.tune.report import PALETTE, plot_curves

    img = plot_curves([_trial("t1", [])], "sweep s", size=(640, 360))
    assert img.shape == (360, 640, 3)
    assert not any(len(_pixels_of(img, c)) for c in PALETTE if len(set(c)) > 1)  # no curve (grey is the text's)
    assert (img.min(axis=-1) < 100).sum() > 200  # the title and the message are written


def test_bench_bar_chart_bars_are_proportional_to_the_values(tmp_path):
    """bench.results.save_chart: one bar per label, in order from the top, lengths in proportion."""
    from bench.results import BAR, save_chart

    values = [10.0, 25.0, 5.0]
    path = save_chart(tmp_path / "c.png", "title", ["a", "b", "c"], values, "img/s")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (60 + 34 * 3, 900, 3)
    bar = np.all(img == np.array(BAR, np.uint8), axis=-1)
    rows = np.flatnonzero(bar.any(axis=1))
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)  # one run of rows per bar, top to bottom
    assert len(bands) == 3, [b.tolist() for b in bands]
    widths = [int(bar[b[len(b) // 2]].sum()) for b in bands]
    assert widths[1] > 300
    for w, v in zip(widths, values):
        assert abs(w / widths[1] - v / values[1]) < 0.01, (widths, values)
    with pytest.raises(ValueError, match="2 labels for 3 values"):
        save_chart(tmp_path / "d.png", "t", ["a", "b"], values, "s")
