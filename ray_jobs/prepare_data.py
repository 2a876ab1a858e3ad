"""Build a composite training set in the seed's format from real mattes and background photos.

    python -m ray_jobs.prepare_data --foregrounds ../shared/data/alphamatting \\
        --backgrounds ../shared/data/backgrounds --out s3://bucket/composites --n 5000

What it does, in order:

1. Lists the foreground dataset (seed format; ``train.txt`` if present, else every mask) and
   the background folder (``.jpg/.jpeg/.png/.webp``).
2. Holds out validation photos (``--val-names`` or ``--val-count`` drawn with ``--seed``) and a
   fraction of the backgrounds (``--val-bg-frac``). Held-out photos never appear in ``train``;
   held-out backgrounds neither.
3. Estimates each real foreground once (multilevel ``estimate_foreground_ml``, :mod:`matting_lib.foreground`), kept in memory.
4. Makes ``--n`` train samples: sample ``i`` uses generators seeded from ``(seed, 0, i)`` only,
   so any number of workers gives byte-identical output. A fraction ``--procedural-frac`` uses
   procedural foregrounds (textures cut from training backgrounds), the rest a random training
   photo; both are placed with random scale, position and flip (``random_composite``), and a
   fraction ``--lowlight-frac`` is darkened with seed 001's physical model *after* compositing
   (foreground and background darkened consistently, one noise field).
5. Makes ``--val-per-fg`` composites per held-out photo on held-out backgrounds (same low-light
   fraction, never procedural) plus, with ``--val-originals`` (default), each held-out photo
   itself at its own resolution, named ``orig_<name>``. Validation samples get trimaps
   (the source trimap for originals when it exists, otherwise derived from alpha).
6. Writes ``images/ masks/ trimaps/ train.txt val.txt`` and ``provenance.jsonl`` (per sample:
   split, kind, foreground, background, low-light parameters) to ``--out`` (local or ``s3://``).

Needs no Ray: "ray_jobs" because it feeds the Ray training jobs.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Sequence

import cv2
import numpy as np

from matting_lib import io
from matting_lib.data.dataset import DatasetError, load_sample, read_split
from matting_lib.data.darken import LowlightParams, darken
from matting_lib.data.decode import decode_image
from matting_lib.data.folds import assign_folds, write_folds
from matting_lib.data.manifest import held_out_names
from matting_lib.data.procedural import GENERATORS, pick_generator
from matting_lib.data.synthesis import (
    crop_to_alpha,
    estimate_foreground,
    photo_crop,
    random_composite,
    touching_sides,
    trimap_from_alpha,
)
from matting_lib.data.writer import DatasetWriter, encode_sample

BG_EXTS = (".jpg", ".jpeg", ".png", ".webp")
PLACEMENTS = ("uniform", "centered")
CENTER_SD = 0.12
"""``--placement centered``: the object's centre is drawn around the canvas centre with this
standard deviation (a fraction of the canvas side)."""
HARMONIZE_MAX = 0.25


class PrepError(ValueError):
    """Bad inputs or options; the message names the path or option."""


@dataclass(frozen=True)
class PrepOptions:
    """Everything that determines the output (the CLI mirrors it)."""

    foregrounds: str
    backgrounds: str
    out: str
    n: int = 5000
    size: int = 512
    seed: int = 0
    procedural_frac: float = 0.3
    lowlight_frac: float = 0.0
    val_names: tuple[str, ...] = ()
    val_count: int = 3
    val_per_fg: int = 10
    val_bg_frac: float = 0.1
    val_originals: bool = True
    scale_range: tuple[float, float] = (0.45, 1.0)
    image_format: str = "jpg"
    workers: int = 1
    folds: int = 0
    """K > 0: every photo is a training foreground and is assigned to one of K folds; per-fold
    manifests train without a fold's photos and validate on their composites (cross-validation)."""
    photo_frac: float = 0.0
    """Fraction of train samples that are crops of the real training photos themselves."""
    placement: str = "uniform"
    """Where composited objects go: uniform over the canvas, or centred (photographers' framing)."""
    bg_blur_frac: float = 0.0
    """Fraction of composites whose background is defocused (Gaussian blur)."""
    bg_blur_sigma: tuple[float, float] = (1.5, 6.0)
    """Range of that blur's sigma, in px at a 384 px canvas (scaled with --size)."""
    bg_exclude: tuple[str, ...] = ()
    """Glob patterns of background file names left out (e.g. photos with subjects of their own)."""
    harmonize_frac: float = 0.0
    """Fraction of composites whose foreground colour moves towards the background's (up to 25%)."""
    noise_frac: float = 0.0
    """Fraction of train samples with sensor noise over the whole image (std 1-5 levels)."""

    def __post_init__(self) -> None:
        checks = [
            (self.n >= 1, "--n", f"must be >= 1, got {self.n}"),
            (self.size >= 16, "--size", f"must be >= 16, got {self.size}"),
            (0 <= self.procedural_frac <= 1, "--procedural-frac", f"must be in [0, 1], got {self.procedural_frac}"),
            (0 <= self.lowlight_frac <= 1, "--lowlight-frac", f"must be in [0, 1], got {self.lowlight_frac}"),
            (self.val_count >= 0, "--val-count", f"must be >= 0, got {self.val_count}"),
            (self.val_per_fg >= 0, "--val-per-fg", f"must be >= 0, got {self.val_per_fg}"),
            (0 <= self.val_bg_frac < 1, "--val-bg-frac", f"must be in [0, 1), got {self.val_bg_frac}"),
            (0 < self.scale_range[0] <= self.scale_range[1], "--scale", f"must be 0 < min <= max, got {self.scale_range}"),
            (self.workers >= 1, "--workers", f"must be >= 1, got {self.workers}"),
            (0 <= self.folds <= 20 and self.folds != 1, "--folds", f"must be 0 (off) or 2..20, got {self.folds}"),
            (0 <= self.photo_frac <= 1, "--photo-frac", f"must be in [0, 1], got {self.photo_frac}"),
            (self.procedural_frac + self.photo_frac <= 1, "--photo-frac",
             f"--procedural-frac + --photo-frac must be <= 1, got {self.procedural_frac + self.photo_frac}"),
            (self.placement in PLACEMENTS, "--placement", f"must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"),
            (0 <= self.bg_blur_frac <= 1, "--bg-blur-frac", f"must be in [0, 1], got {self.bg_blur_frac}"),
            (0 < self.bg_blur_sigma[0] <= self.bg_blur_sigma[1], "--bg-blur-sigma", f"must be 0 < min <= max, got {self.bg_blur_sigma}"),
            (0 <= self.harmonize_frac <= 1, "--harmonize-frac", f"must be in [0, 1], got {self.harmonize_frac}"),
            (0 <= self.noise_frac <= 1, "--noise-frac", f"must be in [0, 1], got {self.noise_frac}"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise PrepError(f"{key}: {msg}")


# --------------------------------------------------------------------------- inputs


def list_foregrounds(root: str) -> list[str]:
    """Sample names of the foreground dataset: its ``train.txt``, else every ``masks/*.png``."""
    if not io.isdir(root):
        raise PrepError(f"--foregrounds: directory not found: {root}")
    if io.exists(io.join(root, "train.txt")):
        return read_split(root, "train")
    masks = io.listdir(io.join(root, "masks")) if io.isdir(io.join(root, "masks")) else []
    names = [m[:-4] for m in masks if m.lower().endswith(".png")]
    if not names:
        raise PrepError(f"--foregrounds: no train.txt and no masks/*.png in {root}")
    return names


def list_backgrounds(root: str, exclude: Sequence[str] = ()) -> list[str]:
    """URIs of the background photos directly under ``root`` (sorted), without file names
    matching any glob of ``exclude``."""
    if not io.isdir(root):
        raise PrepError(f"--backgrounds: directory not found: {root}")
    files = [f for f in io.listdir(root) if f.lower().endswith(BG_EXTS)]
    kept = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in exclude)]
    if not kept:
        what = f" left after --bg-exclude {' '.join(exclude)}" if files else ""
        raise PrepError(f"--backgrounds: no background images ({'/'.join(BG_EXTS)}){what} in {root}")
    return [io.join(root, f) for f in kept]


def validation_photos(names: Sequence[str], opts: PrepOptions) -> list[str]:
    """The validation photos: ``--val-names`` (checked), else ``--val-count`` drawn with ``--seed`` by
    the manifest's seeded choice (:func:`matting_lib.data.manifest.held_out_names`)."""
    if opts.val_names:
        unknown = sorted(set(opts.val_names) - set(names))
        if unknown:
            raise PrepError(f"--val-names: {', '.join(unknown)} not in {opts.foregrounds} (has {', '.join(names)})")
        val = sorted(set(opts.val_names))
    else:
        val = sorted(held_out_names(names, min(opts.val_count, len(names)), opts.seed))
    if len(val) == len(names) and opts.procedural_frac < 1:
        raise PrepError(f"all {len(names)} foregrounds are held out for validation; "
                        "leave at least one for training (or use --procedural-frac 1)")
    return val


def split_backgrounds(uris: Sequence[str], opts: PrepOptions, need_val: bool) -> tuple[list[str], list[str]]:
    """(train, val) backgrounds: ``val_bg_frac`` of them (at least one) held out when there are >= 2."""
    if not need_val or len(uris) < 2 or opts.val_bg_frac == 0:
        return list(uris), list(uris)
    k = min(len(uris) - 1, max(1, round(opts.val_bg_frac * len(uris))))
    order = np.random.default_rng([opts.seed, 2]).permutation(len(uris))
    return [uris[i] for i in sorted(order[k:])], [uris[i] for i in sorted(order[:k])]


def load_foregrounds(root: str, names: Sequence[str], photos: dict | None = None
                     ) -> dict[str, tuple[np.ndarray, np.ndarray, frozenset[str]]]:
    """``{name: (fg uint8, alpha uint8, sides cut by the frame)}`` cropped to the alpha's box; fg estimated once.
    With ``photos`` (a dict), also fills it with ``{name: (image, alpha)}``, the photos as they are."""
    out = {}
    for name in names:
        s = load_sample(root, name)
        if not s.alpha.any():
            raise PrepError(f"--foregrounds: mask of {name!r} in {root} is empty (all zero)")
        fg, alpha = crop_to_alpha(estimate_foreground(s.image, s.alpha), s.alpha)
        out[name] = (fg, alpha, touching_sides(s.alpha))
        if photos is not None:
            photos[name] = (s.image, s.alpha)
    return out


# --------------------------------------------------------------------------- samples (run in workers)

_STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    cv2.setNumThreads(1)
    _STATE.clear()
    _STATE.update(state)


def _read_bg(uri: str) -> np.ndarray:
    return decode_image(io.read_bytes(uri), uri)


def make_sample(task: tuple[str, int, str | None]) -> tuple[str, str, dict[str, bytes], dict[str, Any]]:
    """One output sample from ``(split, index, held-out fg name or None)``: (name, split, files, provenance)."""
    split, i, fg_name = task
    opts: PrepOptions = _STATE["opts"]
    r_kind, r_fg, r_comp, r_low, r_look = (np.random.default_rng(s) for s in np.random.SeedSequence(
        [opts.seed, 0 if split == "train" else 1, i]).spawn(5))
    bgs = _STATE["train_bgs"] if split == "train" else _STATE["val_bgs"]
    bg_uri = bgs[int(r_comp.integers(len(bgs)))]
    u = r_kind.random()
    procedural = split == "train" and (not _STATE["train_fgs"] or u < opts.procedural_frac)
    photo = split == "train" and not procedural and u < opts.procedural_frac + opts.photo_frac
    name = f"{split}_{i:06d}"
    if photo:
        fg_name = _STATE["train_fgs"][int(r_fg.integers(len(_STATE["train_fgs"])))]
        image, alpha8 = photo_crop(*_STATE["photos"][fg_name], r_comp, opts.size)
        image = _finish(image, opts, r_look)
        files = encode_sample(name, image, alpha8, None, opts.image_format)
        meta = {"name": name, "split": split, "kind": "photo", "fg": fg_name, "bg": None, "lowlight": None}
        return name, split, files, meta
    if procedural:
        kind = pick_generator(r_kind)
        textures = [_read_bg(_STATE["train_bgs"][int(r_fg.integers(len(_STATE["train_bgs"])))]) for _ in range(2)]
        fg, alpha = GENERATORS[kind](r_fg, opts.size, textures)
        kind, fg_name, anchor = f"procedural:{kind}", None, frozenset()
    else:
        kind = "real"
        if fg_name is None:
            fg_name = _STATE["train_fgs"][int(r_fg.integers(len(_STATE["train_fgs"])))]
        fg, alpha, anchor = _STATE["fgs"][fg_name]
    blur = 0.0
    if r_look.random() < opts.bg_blur_frac:
        blur = float(r_look.uniform(*opts.bg_blur_sigma)) * opts.size / 384
    harmonize = float(r_look.uniform(0, HARMONIZE_MAX)) if r_look.random() < opts.harmonize_frac else 0.0
    center = CENTER_SD if opts.placement == "centered" else None
    image, alpha8 = random_composite(fg, alpha, _read_bg(bg_uri), r_comp, opts.size, opts.scale_range, anchor=anchor,
                                     center_sd=center, bg_blur_sigma=blur, harmonize=harmonize)
    if split == "train":
        image = _finish(image, opts, r_look)
    low = None
    if r_low.random() < opts.lowlight_frac:
        low = LowlightParams().sample(r_low)
        image = darken(image, r_low, **low)
    trimap = trimap_from_alpha(alpha8) if split == "val" else None
    files = encode_sample(name, image, alpha8, trimap, opts.image_format)
    meta = {"name": name, "split": split, "kind": kind, "fg": fg_name, "bg": bg_uri.rsplit("/", 1)[-1], "lowlight": low,
            "bg_blur": round(blur, 2), "harmonize": round(harmonize, 3)}
    return name, split, files, meta


def _finish(image: np.ndarray, opts: PrepOptions, rng: np.random.Generator) -> np.ndarray:
    """Whole-image sensor noise on ``--noise-frac`` of train samples: subject and scene share it."""
    if rng.random() >= opts.noise_frac:
        return image
    noisy = image.astype(np.float32) + rng.normal(0.0, rng.uniform(1.0, 5.0), image.shape).astype(np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def original_sample(root: str, name: str, image_format: str) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """A held-out photo as it is (its own trimap when the dataset has one)."""
    s = load_sample(root, name)
    trimap = s.trimap if s.trimap is not None else trimap_from_alpha(s.alpha)
    out = f"orig_{name}"
    meta = {"name": out, "split": "val", "kind": "original", "fg": name, "bg": None, "lowlight": None}
    return out, encode_sample(out, s.image, s.alpha, trimap, image_format), meta


# --------------------------------------------------------------------------- driver


def prepare(opts: PrepOptions, log=print) -> dict[str, Any]:
    """Build the dataset at ``opts.out``; returns the summary (also printed through ``log``)."""
    t0 = time.time()
    names = list_foregrounds(opts.foregrounds)
    bg_uris = list_backgrounds(opts.backgrounds, opts.bg_exclude)
    folds: list[list[str]] = []
    if opts.folds:
        if opts.val_names:
            raise PrepError("--val-names and --folds exclude each other: with folds every photo is held out by its fold")
        if opts.folds > len(names):
            raise PrepError(f"--folds {opts.folds}: only {len(names)} photos in {opts.foregrounds}")
        folds = assign_folds(names, opts.folds, opts.seed)
        train_fgs, val_fgs = list(names), list(names)
        log(f"{opts.folds} folds: " + "; ".join(f"fold {k}: {', '.join(f)}" for k, f in enumerate(folds)))
    else:
        val_fgs = validation_photos(names, opts)
        train_fgs = [n for n in names if n not in val_fgs]
    train_bgs, val_bgs = split_backgrounds(bg_uris, opts, need_val=bool(val_fgs))
    log(f"foregrounds: {len(train_fgs)} train, {len(val_fgs)} held out ({', '.join(val_fgs) or '-'}); "
        f"backgrounds: {len(train_bgs)} train, {len(val_bgs) if val_fgs else 0} val"
        + (f" ({len(bg_uris)} after --bg-exclude)" if opts.bg_exclude else ""))
    used = train_fgs if opts.procedural_frac < 1 else []
    photos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fgs = load_foregrounds(opts.foregrounds, list(dict.fromkeys(used + val_fgs)), photos)
    t_fg = time.time() - t0
    log(f"estimated {len(fgs)} foregrounds in {t_fg:.1f} s")

    tasks = [("train", i, None) for i in range(opts.n)]
    tasks += [("val", k * opts.val_per_fg + j, v) for k, v in enumerate(val_fgs) for j in range(opts.val_per_fg)]
    state = {"opts": opts, "fgs": fgs, "photos": {n: photos[n] for n in used}, "train_fgs": used,
             "train_bgs": train_bgs, "val_bgs": val_bgs}
    writer = DatasetWriter(opts.out, image_format=opts.image_format)
    provenance, counts = [], {}
    t1, every = time.time(), max(1, len(tasks) // 20)
    try:
        for done, (name, split, files, meta) in enumerate(_run(tasks, state, opts.workers), 1):
            writer.add_encoded(name, files, split)
            provenance.append(meta)
            counts[meta["kind"]] = counts.get(meta["kind"], 0) + 1
            if done % every == 0 or done == len(tasks):
                log(f"  {done}/{len(tasks)} samples ({done / (time.time() - t1):.1f}/s)")
        if opts.val_originals and not folds:  # with folds, ray_jobs.evaluate --folds scores the photos themselves
            for v in val_fgs:
                name, files, meta = original_sample(opts.foregrounds, v, opts.image_format)
                writer.add_encoded(name, files, "val")
                provenance.append(meta)
        splits = writer.close()
    except BaseException:
        writer.__exit__(*sys.exc_info())
        raise
    io.write_text(io.join(opts.out, "provenance.jsonl"), "".join(json.dumps(m, sort_keys=True) + "\n" for m in provenance))
    dt = time.time() - t1
    fold_files = write_folds(opts.out, opts.seed, opts.foregrounds, folds, provenance, log) if folds else []
    summary = {
        "out": opts.out, "splits": splits, "kinds": dict(sorted(counts.items())),
        "lowlight": sum(m["lowlight"] is not None for m in provenance),
        "val_foregrounds": val_fgs, "train_foregrounds": used,
        "backgrounds": {"train": len(train_bgs), "val": len(val_bgs) if val_fgs else 0},
        "fg_estimation_s": round(t_fg, 2), "samples_s": round(dt, 2),
        "samples_per_s": round(len(tasks) / max(dt, 1e-9), 2), "workers": opts.workers,
        "folds": folds, "fold_manifests": fold_files,
    }
    log(f"wrote {opts.out}: " + ", ".join(f"{k} {v}" for k, v in splits.items())
        + f"; kinds {summary['kinds']}; low-light {summary['lowlight']}; "
        f"{summary['samples_per_s']} samples/s with {opts.workers} worker(s), total {time.time() - t0:.1f} s")
    return summary


def _run(tasks, state, workers: int):
    """Yield make_sample results in task order, in-process or from a spawn process pool."""
    if workers == 1:
        _init_worker(state)
        yield from map(make_sample, tasks)
        return
    cv2.setNumThreads(1)
    # spawn, not fork: s3fs keeps a background event-loop thread that a fork would copy half-alive.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(state,)) as ex:
        window = 32 * workers  # bounded: results wait for the writer, not in an unbounded queue
        for start in range(0, len(tasks), window):
            yield from ex.map(make_sample, tasks[start:start + window], chunksize=4)


def parse_args(argv: Sequence[str] | None = None) -> PrepOptions:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.prepare_data", description=__doc__.split("\n")[0])
    p.add_argument("--foregrounds", required=True, help="seed-format dataset of real photos + alpha (images/, masks/)")
    p.add_argument("--backgrounds", required=True, help="folder of background photos")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--n", type=int, default=5000, help="number of training samples")
    p.add_argument("--size", type=int, default=512, help="side of the square composites")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--procedural-frac", type=float, default=0.3, help="fraction of train samples with procedural foregrounds")
    p.add_argument("--lowlight-frac", type=float, default=0.0, help="fraction darkened with the seed-001 low-light model")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val-names", default="", help="comma-separated photos to hold out, e.g. GT01,GT02")
    g.add_argument("--val-count", type=int, default=3, help="number of photos to hold out (drawn with --seed)")
    p.add_argument("--val-per-fg", type=int, default=10, help="validation composites per held-out photo")
    p.add_argument("--val-bg-frac", type=float, default=0.1, help="fraction of backgrounds held out for validation")
    p.add_argument("--val-originals", action=argparse.BooleanOptionalAction, default=True,
                   help="also put the held-out photos themselves in val.txt (as orig_<name>)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.45, 1.0), metavar=("MIN", "MAX"),
                   help="object long side relative to the canvas")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="jpg = JPEG q95 4:4:4")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--folds", type=int, default=0,
                   help="K-fold cross-validation over the photos: every photo trains, folds/fold<k>.jsonl leave one fold out")
    p.add_argument("--photo-frac", type=float, default=0.0,
                   help="fraction of train samples that are random crops of the training photos themselves")
    p.add_argument("--placement", choices=PLACEMENTS, default="uniform",
                   help="object position: uniform over the canvas, or centred as photographers frame")
    p.add_argument("--bg-blur-frac", type=float, default=0.0, help="fraction of composites with a defocused background")
    p.add_argument("--bg-blur-sigma", type=float, nargs=2, default=(1.5, 6.0), metavar=("MIN", "MAX"),
                   help="defocus Gaussian sigma in px at a 384 px canvas (scaled with --size)")
    p.add_argument("--bg-exclude", nargs="*", default=[], metavar="GLOB",
                   help="background file names to leave out, e.g. 'cbsd68_*' (photos with subjects of their own)")
    p.add_argument("--harmonize-frac", type=float, default=0.0,
                   help=f"fraction of composites whose foreground colour moves up to {HARMONIZE_MAX:.0%} towards the background's")
    p.add_argument("--noise-frac", type=float, default=0.0, help="fraction of train samples with whole-image sensor noise")
    a = p.parse_args(argv)
    val_names = tuple(v.strip() for v in a.val_names.split(",") if v.strip())
    return PrepOptions(
        foregrounds=a.foregrounds, backgrounds=a.backgrounds, out=a.out, n=a.n, size=a.size, seed=a.seed,
        procedural_frac=a.procedural_frac, lowlight_frac=a.lowlight_frac, val_names=val_names,
        val_count=a.val_count, val_per_fg=a.val_per_fg, val_bg_frac=a.val_bg_frac, val_originals=a.val_originals,
        scale_range=tuple(a.scale), image_format=a.image_format, workers=a.workers, folds=a.folds,
        photo_frac=a.photo_frac, placement=a.placement, bg_blur_frac=a.bg_blur_frac, bg_blur_sigma=tuple(a.bg_blur_sigma),
        bg_exclude=tuple(a.bg_exclude), harmonize_frac=a.harmonize_frac, noise_frac=a.noise_frac,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
        summary = prepare(opts)
    except (PrepError, DatasetError, io.StorageError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
