"""Manifests: one JSON line per validated sample, so jobs stream pairs without listing buckets.

Each line of ``manifest.jsonl``::

    {"name": "GT01", "image_uri": "s3://b/ds/images/GT01.png", "mask_uri": "s3://b/ds/masks/GT01.png",
     "trimap_uri": null, "height": 497, "width": 800, "brightness": 0.4123, "split": "train"}

``brightness`` is the mean Rec.601 luma of the image (:func:`matting_lib.data.luma.luminance`),
in [0, 1] (it drives brightness-aware loss weights and low-light sampling). URIs keep the
root's scheme; plain local roots are made absolute so workers with another working
directory still find the files. An existing manifest is trusted as is: rebuild it with
:func:`build_manifest` after changing the dataset.

Jobs never write into the user's dataset unless asked to (:func:`ensure_manifest`): a dataset's
own ``<root>/manifest.jsonl`` is used when it has one, otherwise the manifest is built in the
run's folder (or the per-user cache). A dataset without ``val.txt`` (the seeds' layout teaches
``train.txt`` alone) gets a validation split held out of its train rows by :func:`hold_out`:
:data:`VAL_HOLDOUT_FRACTION` of them, chosen by a fixed seed, so every run of every job holds out
the same samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from matting_lib import io
from matting_lib.data.dataset import DatasetError, find_image, mask_uri, read_sample, read_split, trimap_uri
from matting_lib.data.luma import luminance

MANIFEST_NAME = "manifest.jsonl"
FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "image_uri": (str,),
    "mask_uri": (str,),
    "trimap_uri": (str, type(None)),
    "height": (int,),
    "width": (int,),
    "brightness": (float, int),
    "split": (str,),
}
"""Required keys of a manifest row and their JSON types."""
VAL_HOLDOUT_FRACTION = 0.1
"""Share of the train rows held out for validation when a dataset has no validation split."""
VAL_HOLDOUT_SEED = 0
"""Seed of that choice: fixed, so resumed runs, sweeps and both training jobs validate on the same rows."""
CACHE_ENV = "MATTING_CACHE_DIR"
"""Environment variable naming the cache folder (default ``~/.cache/matting``)."""


def _absolute(root: str) -> str:
    return os.path.abspath(os.path.expanduser(root)) if "://" not in root else root.rstrip("/")


def _row(root: str, split: str, name: str) -> dict[str, Any]:
    image_uri, m_uri, t_uri = find_image(root, name), mask_uri(root, name), trimap_uri(root, name)
    sample = read_sample(name, image_uri, m_uri, t_uri)
    h, w = sample.alpha.shape
    return {
        "name": name,
        "image_uri": image_uri,
        "mask_uri": m_uri,
        "trimap_uri": t_uri,
        "height": int(h),
        "width": int(w),
        "brightness": luminance(sample.image),
        "split": split,
    }


def build_manifest(
    root: str,
    splits: Sequence[str] = ("train", "val", "test"),
    out_uri: str | None = None,
    progress: bool = True,
    max_workers: int = 16,
) -> list[dict[str, Any]]:
    """Validate every pair of the splits that exist and write ``<root>/manifest.jsonl``.

    Args:
        root: dataset root (local path, file:// or s3://).
        splits: split names; those without a ``<split>.txt`` are skipped.
        out_uri: where to write; default ``<root>/manifest.jsonl``. Written atomically.
        progress: show a progress bar (tqdm) on stderr.
        max_workers: threads decoding in parallel (hides S3 latency).

    Returns:
        The rows, in split order then split-file order.

    Raises:
        DatasetError: no split exists, a split is empty, or any pair is invalid (all
            problems are listed, each naming its file).
    """
    root = _absolute(root)
    jobs: list[tuple[str, str]] = []
    for split in splits:
        if io.exists(io.join(root, f"{split}.txt")):
            jobs.extend((split, name) for name in read_split(root, split))
    if not jobs:
        raise DatasetError(f"no split file found in {root} (looked for {', '.join(f'{s}.txt' for s in splits)})")

    # tqdm redraws its line in place; where stderr is a log file or `ray job logs` (manifests are
    # mostly built inside jobs), each redraw stays in the log, so redraw rarely there.
    bar = tqdm(total=len(jobs), desc=f"[manifest] {root}", unit="sample", file=sys.stderr, disable=not progress,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)

    def work(job: tuple[str, str]) -> dict[str, Any] | str:
        try:
            return _row(root, *job)
        except DatasetError as e:
            return f"[{job[0]}] {e}"
        finally:
            bar.update(1)

    with bar, ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = list(pool.map(work, jobs))
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DatasetError(f"cannot build manifest of {root}: {len(errors)} invalid sample(s):\n  {shown}{more}")
    rows = [r for r in results if isinstance(r, dict)]
    text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)
    io.write_text(out_uri or io.join(root, MANIFEST_NAME), text)
    return rows


def _parse_line(line: str, uri: str, lineno: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{uri}:{lineno}: malformed manifest line ({e.msg})") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{uri}:{lineno}: manifest line must be a JSON object, got {type(row).__name__}")
    for key, types in FIELDS.items():
        if key not in row:
            raise DatasetError(f"{uri}:{lineno}: manifest line lacks key {key!r}")
        if not isinstance(row[key], types) or isinstance(row[key], bool):
            raise DatasetError(f"{uri}:{lineno}: {key!r} has the wrong type ({type(row[key]).__name__})")
    return row


def read_manifest(uri: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a manifest, optionally only those of ``split``.

    Raises:
        DatasetError: missing file, malformed line (with its line number), or no rows
            (for ``split``).
    """
    try:
        text = io.read_text(uri)
    except FileNotFoundError:
        raise DatasetError(f"manifest {uri} not found") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"manifest {uri} is not UTF-8 text ({e})") from None
    rows = [_parse_line(line, uri, i) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DatasetError(f"manifest {uri} is empty")
    if split is None:
        return rows
    selected = [r for r in rows if r["split"] == split]
    if not selected:
        present = sorted({r["split"] for r in rows})
        raise DatasetError(f"split {split!r} in manifest {uri} is empty (splits present: {', '.join(present)})")
    return selected


def cache_dir() -> str:
    """The per-user cache folder: ``$MATTING_CACHE_DIR``, else ``~/.cache/matting``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "matting")


def _cache_uri(root: str, splits: Sequence[str]) -> str:
    """A cache file for the manifest of ``root``, keyed by the root and its split files' contents
    (editing ``train.txt`` gives a new manifest, not a stale one)."""
    h = hashlib.sha256(root.encode())
    for split in splits:
        uri = io.join(root, f"{split}.txt")
        h.update(b"\0" + split.encode() + b"\0" + (io.read_bytes(uri) if io.exists(uri) else b"-"))
    return os.path.join(cache_dir(), "manifests", f"{h.hexdigest()[:24]}.jsonl")


def ensure_manifest(root: str, manifest_uri: str = "", progress: bool = True, out_dir: str = "") -> str:
    """URI of a manifest of the dataset at ``root``, built if missing; the dataset is never written to
    unless ``manifest_uri`` points into it.

    In this order: ``manifest_uri`` when given (built there if missing: the caller asked for it);
    the dataset's own ``<root>/manifest.jsonl`` when it exists (read, never written); else
    ``<out_dir>/manifest.jsonl`` (a job passes its run folder), built if missing; else a file in
    :func:`cache_dir` keyed by the root and its split files.
    """
    if manifest_uri:
        uri = manifest_uri
    else:
        root = _absolute(root)
        own = io.join(root, MANIFEST_NAME)
        if io.exists(own):
            return own
        uri = io.join(out_dir, MANIFEST_NAME) if out_dir else _cache_uri(root, ("train", "val", "test"))
    if not io.exists(uri):
        build_manifest(root, out_uri=uri, progress=progress)
    return uri


def held_out_names(names: Sequence[str], count: int, seed: int = VAL_HOLDOUT_SEED) -> set[str]:
    """``count`` of ``names`` drawn with ``seed``: the same ones whatever the names' order (they are
    sorted first). The one seeded choice of validation samples: :func:`hold_out` and
    ``ray_jobs.prepare_data``'s held-out photos."""
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i] for i in order[:count]}


def hold_out(
    rows: Sequence[dict[str, Any]], val_split: str = "val", fraction: float = VAL_HOLDOUT_FRACTION, seed: int = VAL_HOLDOUT_SEED
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, val): ``fraction`` of ``rows`` (at least one, rounded) moved to a validation split.

    The choice depends only on the rows' names and ``seed`` (:func:`held_out_names`), so it is the
    same in every run. The held-out rows are copies with ``split`` set to ``val_split``; both
    lists keep the input order.

    Raises:
        DatasetError: fewer than 2 rows (nothing would be left to train or to validate on).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"hold_out: fraction must be in (0, 1), got {fraction}")
    if len(rows) < 2:
        raise DatasetError(f"cannot hold out a validation split from {len(rows)} sample(s): add a val.txt or more samples")
    n_val = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    chosen = held_out_names([r["name"] for r in rows], n_val, seed)
    train = [r for r in rows if r["name"] not in chosen]
    val = [{**r, "split": val_split} for r in rows if r["name"] in chosen]
    return train, val
