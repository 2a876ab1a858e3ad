"""Pictures of mattes on photos without ground truth: what a user sees, before and after refinement.

    python -m bench.pictures --checkpoint models/base.pt --out models/eval/subjects.png \\
        --skimage coffee astronaut chelsea rocket --images ../shared/data/backgrounds/cbsd68_108005.jpg ...

One row per photo: the input, then the network's alpha upsampled with no subject prior (what the
service answered before the refinement stage), then the default two-stage matte (the checkpoint's
refinement mode, the subject prior on), each with its cut-out on a checkerboard. Captions give
the share of foreground pixels (alpha >= 0.5) and whether the prior stood in. It scores nothing;
it is the "look at the mattes" half of ``models/README.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from matting_lib import io
from matting_lib.data.decode import decode_image
from matting_lib.inference.predictor import Predictor
from matting_lib.postprocess import foreground_fraction
from matting_lib.report import ReportRow, save_grid

ROOT = Path(__file__).resolve().parents[1]


def load_photos(skimage_names: list[str], paths: list[str]) -> list[tuple[str, np.ndarray]]:
    photos = []
    if skimage_names:
        import skimage.data

        photos += [(n, getattr(skimage.data, n)()) for n in skimage_names]
    photos += [(Path(p).stem, decode_image(io.read_bytes(p), name=p)) for p in paths]
    return [(n, im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2)) for n, im in photos]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "base.pt"))
    p.add_argument("--refiner", default="", help="a learned refiner to use instead of the checkpoint's own")
    p.add_argument("--skimage", nargs="*", default=[], help="scikit-image sample photos by name (coffee, astronaut...)")
    p.add_argument("--images", nargs="*", default=[], help="image files (local or s3://)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--tile", type=int, default=160)
    args = p.parse_args(argv)
    pred = Predictor.from_checkpoint(args.checkpoint, refiner_uri=args.refiner)
    plain = Predictor(pred.model, device=pred.device, max_side=pred.max_side, metadata=pred.metadata, subject_prior=False)
    rows = []
    for name, image in load_photos(args.skimage, args.images):
        before = plain.predict(image, refine="off")
        (after, info), = pred.matte_batch([image])
        prior = ", prior" if info.prior else ""
        rows.append(ReportRow(name, image, None, {"before": before, f"after ({pred.refine})": after},
                              {"before": f"fg {foreground_fraction(before):.0%}",
                               f"after ({pred.refine})": f"fg {foreground_fraction(after):.0%}{prior}"}))
        print(f"{name}: foreground {foreground_fraction(before):.1%} before, {foreground_fraction(after):.1%} after"
              f"{' (subject prior)' if info.prior else ''}", flush=True)
    print(f"wrote {save_grid(args.out, rows, tile=args.tile, cutouts=True)}", flush=True)


if __name__ == "__main__":
    main()
