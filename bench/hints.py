"""Quality and speed of user corrections (issue 26): a box, then strokes on the largest errors.

    python -m bench.hints --checkpoint 'runs/cv1-fold{fold}/best.pt' --refiner 'refiners/v2-fold{fold}.pt' \\
        --data ../shared/data/alphamatting --folds data/cv1/folds.json --out models/eval/hints

Each real photo is scored at full size by the model of its fold (cross-validation: a model that
never saw it), as a user would correct it:

0. no hints (the service's default matte);
1. a box: the truth's bounding box grown by 4% of its size on each side
   (:func:`matting_lib.refine.hints.truth_box`);
2-4. the box plus 1, 2, 3 strokes, each a disc on the worst remaining error, keep or remove by
   its sign, of radius at most 2% of the long side (:func:`matting_lib.refine.hints.simulated_stroke`).

Whole-image MAD (and unknown-region SAD) per step, per photo and on average; and the time of
one stroke's update at 1024 x 1024 (box + 3 strokes, median of ``--repeats``), the latency a
user waits for after a stroke, without HTTP. Writes ``<out>/hints.json`` and ``<out>/hints.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import cv2
import numpy as np

from matting_lib import io
from matting_lib.data.dataset import load_sample, read_split
from matting_lib.data.folds import read_folds
from matting_lib.evaluation.scoring import score
from matting_lib.inference.load import load_predictor
from matting_lib.inference.predictor import Predictor
from matting_lib.refine.hints import Hints, simulated_stroke, truth_box
from matting_lib.tables import markdown_table

STEPS = ("none", "box", "box+1", "box+2", "box+3")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint URI; {fold} with --folds")
    p.add_argument("--refiner", default="", help="refiner to use instead of the checkpoint's own; {fold} allowed")
    p.add_argument("--data", required=True, help="seed-format real photos with truth")
    p.add_argument("--split", default="train")
    p.add_argument("--folds", default="", help="folds.json: each photo scored by its fold's model")
    p.add_argument("--max-side", type=int, default=320)
    p.add_argument("--backend", default="auto", help="auto (ONNX Runtime on CPU, as the service), torch or onnx")
    p.add_argument("--stroke-radius", type=float, default=0.02, help="largest stroke radius, share of the long side")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the 1024 x 1024 stroke update")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    names = read_split(args.data, args.split)
    fold_of = {n: k for n, k in read_folds(args.folds)} if args.folds else {}
    if fold_of:
        names = [n for n in names if n in fold_of]
    predictors: dict[int, Predictor] = {}

    def predictor(fold: int) -> Predictor:
        if fold not in predictors:
            predictors[fold] = load_predictor(args.checkpoint.replace("{fold}", str(fold)), backend=args.backend,
                                              refiner_uri=args.refiner.replace("{fold}", str(fold)), max_side=args.max_side)
        return predictors[fold]

    rows = []
    for name in names:
        sample = load_sample(args.data, name)
        gt = sample.alpha.astype(np.float32) / 255.0
        pred = predictor(fold_of.get(name, -1))
        alpha = pred.predict(sample.image)
        box = truth_box(gt)
        marks = np.zeros(gt.shape, np.int8)
        scores = [score(alpha, gt, sample.trimap)]
        alpha, _ = pred.matte_hinted(sample.image, Hints(box=box))
        scores.append(score(alpha, gt, sample.trimap))
        for _ in range(3):
            stroke = simulated_stroke(alpha, gt, max_radius=max(1, round(args.stroke_radius * max(gt.shape))))
            if stroke is not None:
                marks = np.where(stroke != 0, stroke, marks).astype(np.int8)
                alpha, _ = pred.matte_hinted(sample.image, Hints(box=box, marks=marks))
            scores.append(score(alpha, gt, sample.trimap))
        row = {"name": name, "fold": fold_of.get(name, -1), **{f"mad_{s}": sc["mad"] for s, sc in zip(STEPS, scores)},
               **{f"sad_unknown_{s}": sc["sad_unknown"] for s, sc in zip(STEPS, scores)}}
        rows.append(row)
        print(name, " ".join(f"{s} {row[f'mad_{s}']:.4f}" for s in STEPS), flush=True)

    # the latency of one stroke at 1024 x 1024: the last photo, resized, box and 3 strokes
    big = cv2.resize(sample.image, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    scale_x, scale_y = 1024 / gt.shape[1], 1024 / gt.shape[0]
    x0, y0, x1, y1 = box
    big_box = (int(x0 * scale_x), int(y0 * scale_y), min(1024, int(np.ceil(x1 * scale_x))), min(1024, int(np.ceil(y1 * scale_y))))
    big_marks = cv2.resize(marks, (1024, 1024), interpolation=cv2.INTER_NEAREST)
    hints = Hints(box=big_box, marks=big_marks)
    pred.matte_hinted(big, hints)  # warm
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pred.matte_hinted(big, hints)
        times.append((time.perf_counter() - t0) * 1000)
    means = {s: float(np.mean([r[f"mad_{s}"] for r in rows])) for s in STEPS}
    means_unk = {s: float(np.nanmean([r[f"sad_unknown_{s}"] for r in rows])) for s in STEPS}
    result = {"command": "python -m bench.hints " + " ".join(sys.argv[1:] if argv is None else argv), "n": len(rows), "mad": means,
              "sad_unknown": means_unk, "stroke_ms_1024": {"median": statistics.median(times), "runs": times},
              "refine": pred.refine, "max_side": args.max_side, "rows": rows}
    io.makedirs(args.out)
    io.write_text(io.join(args.out, "hints.json"), json.dumps(result, indent=1) + "\n")
    r_align = ["", *("r" for _ in STEPS)]
    means_table = markdown_table(["step", *STEPS], [["MAD", *(f"{means[s]:.4f}" for s in STEPS)],
                                                    ["SAD unk.", *(f"{means_unk[s]:.2f}" for s in STEPS)]], align=r_align)
    photos_table = markdown_table(["photo", "fold", *STEPS],
                                  [[r["name"], r["fold"], *(f"{r[f'mad_{s}']:.4f}" for s in STEPS)] for r in rows],
                                  align=["", "r", *r_align[1:]])
    lines = [means_table, photos_table,
             f"One stroke's update at 1024 x 1024 (box + 3 strokes, refine {pred.refine}): median "
             f"{statistics.median(times):.0f} ms of {len(times)} runs ({', '.join(f'{t:.0f}' for t in times)})"]
    io.write_text(io.join(args.out, "hints.md"), "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
