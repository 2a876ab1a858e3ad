"""Read the seed's dataset format from any fsspec URI (local path, ``file://``, ``s3://``).

Layout::

    <root>/images/<name>.jpg|.jpeg|.png   RGB image (extension matched case-insensitively)
    <root>/masks/<name>.png               alpha, 8-bit grey, 0 = background, 255 = foreground
    <root>/trimaps/<name>.png             optional trimap (0 / 128 / 255)
    <root>/train.txt, val.txt, test.txt   one name per line, no extension

``images/`` and ``trimaps/`` are listed once per dataset root and cached (one LIST instead
of one probe per extension per sample on S3). A name missing from a cached listing
triggers one re-listing before failing, so files written after the first lookup are found;
:func:`clear_cache` drops the listings. Storage failures (:class:`matting_lib.io.StorageError`)
propagate unchanged; everything wrong with the *data* raises :class:`DatasetError`.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from matting_lib import io
from matting_lib.data.decode import MAX_PIXELS, ImageDecodeError, decode_image, decode_mask

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
"""Image extensions tried, in this order (case-insensitive)."""
MASK_DIR, IMAGE_DIR, TRIMAP_DIR = "masks", "images", "trimaps"


class DatasetError(ValueError):
    """The dataset is malformed. The message names the offending file or split."""


@dataclass
class Sample:
    """One decoded training pair."""

    name: str
    """Sample name (file stem shared by image, mask and trimap)."""
    image: np.ndarray
    """uint8 (H, W, 3) RGB."""
    alpha: np.ndarray
    """uint8 (H, W), 0 = background, 255 = foreground."""
    trimap: np.ndarray | None = None
    """uint8 (H, W) or None when the dataset has no trimap for this sample."""


# --------------------------------------------------------------------------- listings

_listings: dict[tuple[str, str], dict[str, str]] = {}
_key_locks: dict[tuple[str, str], threading.Lock] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget the cached directory listings (after files were added or removed)."""
    with _lock:
        _listings.clear()


def _list_stems(root: str, sub: str, exts: Sequence[str], refresh: bool = False) -> dict[str, str]:
    """``{name: file name}`` for files in ``<root>/<sub>`` with one of ``exts``; {} if the folder is absent.

    One listing per (root, sub) even when many threads ask at once (single flight).
    """
    key = (root.rstrip("/"), sub)
    with _lock:
        if not refresh and key in _listings:
            return _listings[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            if not refresh and key in _listings:
                return _listings[key]
        return _do_list(key, root, sub, exts, refresh)


def _do_list(key: tuple[str, str], root: str, sub: str, exts: Sequence[str], refresh: bool) -> dict[str, str]:
    uri = io.join(root, sub)
    if refresh:  # s3fs keeps its own listing cache; drop it so new objects show up
        fs, path = io.filesystem(uri)
        fs.invalidate_cache(path)
    try:
        files = io.listdir(uri)
    except FileNotFoundError:
        files = []
    rank = {e: i for i, e in enumerate(exts)}
    best: dict[str, tuple[int, str]] = {}
    for fname in files:
        stem, dot, ext = fname.rpartition(".")
        r = rank.get(f".{ext.lower()}")
        # Several extensions for one name: keep the first in ``exts`` order (deterministic).
        if dot and r is not None and (stem not in best or r < best[stem][0]):
            best[stem] = (r, fname)
    stems = {stem: fname for stem, (_, fname) in best.items()}
    with _lock:
        _listings[key] = stems
    return stems


def find_image(root: str, name: str) -> str:
    """URI of ``<root>/images/<name>.<ext>`` for the first existing ext of :data:`IMAGE_EXTS`.

    Raises:
        DatasetError: no such image (the message lists the extensions tried).
    """
    stems = _list_stems(root, IMAGE_DIR, IMAGE_EXTS)
    if name not in stems:
        stems = _list_stems(root, IMAGE_DIR, IMAGE_EXTS, refresh=True)
    if name not in stems:
        tried = ", ".join(f"{name}{e}" for e in IMAGE_EXTS)
        raise DatasetError(f"image for sample {name!r} not found in {io.join(root, IMAGE_DIR)} (tried {tried})")
    return io.join(root, IMAGE_DIR, stems[name])


def mask_uri(root: str, name: str) -> str:
    return io.join(root, MASK_DIR, f"{name}.png")


def trimap_uri(root: str, name: str) -> str | None:
    """URI of the trimap of ``name``, or None when ``<root>/trimaps`` has none (cached listing)."""
    stems = _list_stems(root, TRIMAP_DIR, (".png",))
    return io.join(root, TRIMAP_DIR, stems[name]) if name in stems else None


# --------------------------------------------------------------------------- splits


def read_split(root: str, split: str) -> list[str]:
    """Names listed in ``<root>/<split>.txt`` (blank lines and surrounding whitespace ignored).

    Raises:
        DatasetError: the split file is missing or lists no names.
    """
    uri = io.join(root, f"{split}.txt")
    try:
        text = io.read_text(uri)
    except FileNotFoundError:
        raise DatasetError(f"split file {uri} not found (split {split!r})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"split file {uri} is not UTF-8 text ({e})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split {split!r} in {root} is empty ({uri})")
    return names


# --------------------------------------------------------------------------- samples


def _read(uri: str, what: str, name: str) -> bytes:
    try:
        return io.read_bytes(uri)
    except FileNotFoundError:
        raise DatasetError(f"{what} file {uri} for sample {name!r} not found") from None


def read_sample(
    name: str, image_uri: str, mask_uri: str, trimap_uri: str | None = None, max_pixels: int = MAX_PIXELS
) -> Sample:
    """Decode and validate one pair from explicit URIs (what a manifest row holds).

    Raises:
        DatasetError: a file is missing or unreadable, or sizes differ (names both files).
    """
    try:
        image = decode_image(_read(image_uri, "image", name), image_uri, max_pixels)
        alpha = decode_mask(_read(mask_uri, "mask", name), mask_uri, max_pixels)
        trimap = None
        if trimap_uri:
            trimap = decode_mask(_read(trimap_uri, "trimap", name), trimap_uri, max_pixels)
    except ImageDecodeError as e:
        raise DatasetError(str(e)) from e
    h, w = image.shape[:2]
    if alpha.shape != (h, w):
        raise DatasetError(
            f"size mismatch for sample {name!r}: image {image_uri} is {w}x{h} "
            f"but mask {mask_uri} is {alpha.shape[1]}x{alpha.shape[0]}"
        )
    if trimap is not None and trimap.shape != (h, w):
        raise DatasetError(
            f"size mismatch for sample {name!r}: image {image_uri} is {w}x{h} "
            f"but trimap {trimap_uri} is {trimap.shape[1]}x{trimap.shape[0]}"
        )
    return Sample(name=name, image=image, alpha=alpha, trimap=trimap)


def load_sample(root: str, name: str, max_pixels: int = MAX_PIXELS) -> Sample:
    """Find, decode and validate sample ``name`` of the dataset at ``root``."""
    return read_sample(name, find_image(root, name), mask_uri(root, name), trimap_uri(root, name), max_pixels)


# --------------------------------------------------------------------------- validation


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_dataset`."""

    root: str
    """Dataset root that was checked."""
    counts: dict[str, int] = field(default_factory=dict)
    """Number of names per split checked."""
    errors: list[str] = field(default_factory=list)
    """One message per bad sample or split (empty when the dataset is valid)."""

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_dataset(
    root: str, splits: Sequence[str] = ("train",), raise_on_error: bool = True, max_workers: int = 8
) -> ValidationReport:
    """Decode every pair of ``splits`` and collect what is wrong.

    Args:
        raise_on_error: raise one :class:`DatasetError` summarising all problems instead of
            returning a report with ``errors``.
        max_workers: threads used to hide storage latency.
    """
    report = ValidationReport(root=root)
    names: list[str] = []
    for split in splits:
        try:
            split_names = read_split(root, split)
        except DatasetError as e:
            report.errors.append(str(e))
            continue
        report.counts[split] = len(split_names)
        names.extend(split_names)

    def check(name: str) -> str | None:
        try:
            load_sample(root, name)
        except DatasetError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        report.errors.extend(msg for msg in pool.map(check, dict.fromkeys(names)) if msg)
    if raise_on_error and report.errors:
        shown = "\n  ".join(report.errors[:20])
        more = f"\n  ... and {len(report.errors) - 20} more" if len(report.errors) > 20 else ""
        raise DatasetError(f"dataset {root} has {len(report.errors)} problem(s):\n  {shown}{more}")
    return report
