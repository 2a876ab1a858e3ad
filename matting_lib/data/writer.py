"""Write a dataset in the seed's format to any URI (local folder, ``file://``, ``s3://``).

Layout (what :mod:`matting_lib.data.dataset` reads)::

    <root>/images/<name>.jpg (or .png)   RGB image
    <root>/masks/<name>.png              alpha, single-channel 8-bit (0 = background)
    <root>/trimaps/<name>.png            optional trimap (0 / 128 / 255)
    <root>/<split>.txt                   names in the order they were added, one per line

Image format: JPEG quality 95 with 4:4:4 chroma (no subsampling) by default. For 512 px
composites of the shared photos it is ~3x smaller than PNG (about 130 KB vs 420 KB) at an RMS
error of ~1.7 grey levels, below the noise of real photos (the backgrounds are JPEGs already);
4:4:4 keeps colour edges at the matte boundary sharp.
Pass ``image_format="png"`` for lossless images. Masks and trimaps are always PNG (lossless):
they are the labels.

Every file goes through :func:`matting_lib.io.write_bytes` (atomic); encoding and uploads run
in a thread pool (PIL and zlib release the GIL; S3 PUTs overlap). Split files are written
last, by :meth:`DatasetWriter.close`, so a reader never sees a name whose files are missing.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from matting_lib import io
from matting_lib.data.encode import DATASET_FORMATS, encode_dataset_image, encode_png

IMAGE_FORMATS = DATASET_FORMATS


def check_sample(name: str, image: np.ndarray, alpha: np.ndarray, trimap: np.ndarray | None = None) -> None:
    """Raise ValueError (naming the sample) unless name, dtypes and shapes are valid."""
    if not name or "/" in name or name != name.strip():
        raise ValueError(f"sample name {name!r}: must be non-empty, without '/' or surrounding spaces")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if alpha.dtype != np.uint8 or alpha.shape != image.shape[:2]:
        raise ValueError(f"{name}: alpha must be uint8 {image.shape[:2]}, got {alpha.dtype} {alpha.shape}")
    if trimap is not None and (trimap.dtype != np.uint8 or trimap.shape != alpha.shape):
        raise ValueError(f"{name}: trimap must be uint8 {alpha.shape}, got {trimap.dtype} {trimap.shape}")


def encode_sample(
    name: str,
    image: np.ndarray,
    alpha: np.ndarray,
    trimap: np.ndarray | None = None,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
) -> dict[str, bytes]:
    """Encoded files of one sample, keyed by path relative to the dataset root.

    Args:
        image: uint8 (H, W, 3) RGB. alpha: uint8 (H, W). trimap: uint8 (H, W) or None.
    """
    check_sample(name, image, alpha, trimap)
    files = {
        f"images/{name}.{image_format}": encode_dataset_image(image, image_format, jpeg_quality),
        f"masks/{name}.png": encode_png(alpha),
    }
    if trimap is not None:
        files[f"trimaps/{name}.png"] = encode_png(trimap)
    return files


class DatasetWriter:
    """Add samples, then :meth:`close` to write the split files. Usable as a context manager.

    >>> with DatasetWriter("s3://bucket/ds") as w:
    ...     w.add("0001", image, alpha, split="train")
    """

    def __init__(self, root_uri: str, image_format: str = "jpg", jpeg_quality: int = 95, threads: int = 8) -> None:
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format: expected one of {IMAGE_FORMATS}, got {image_format!r}")
        self.root = root_uri.rstrip("/")
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.splits: dict[str, list[str]] = {}
        self._names: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dataset-writer")
        self._pending: list[Future] = []
        self._slots = threading.BoundedSemaphore(4 * threads)  # bounds memory held by queued samples
        self._closed = False
        io.makedirs(self.root)

    def _register(self, name: str, split: str) -> None:
        if self._closed:
            raise RuntimeError(f"DatasetWriter({self.root}) is closed")
        if name in self._names:
            raise ValueError(f"duplicate sample name {name!r}")
        self._names.add(name)
        self.splits.setdefault(split, []).append(name)

    def _submit(self, fn, *args) -> None:
        self._raise_failed()
        self._slots.acquire()
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(lambda _: self._slots.release())
        self._pending.append(fut)

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            f.result()  # re-raises the first upload/encode error

    def _write(self, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            io.write_bytes(io.join(self.root, rel), data)

    def _encode_write(self, name, image, alpha, trimap) -> None:
        self._write(encode_sample(name, image, alpha, trimap, self.image_format, self.jpeg_quality))

    def add(self, name: str, image: np.ndarray, alpha: np.ndarray, split: str = "train", trimap: np.ndarray | None = None) -> None:
        """Queue one sample: image uint8 (H, W, 3) RGB, alpha uint8 (H, W), trimap uint8 (H, W) or None."""
        check_sample(name, image, alpha, trimap)
        self._register(name, split)
        self._submit(self._encode_write, name, image, alpha, trimap)

    def add_encoded(self, name: str, files: dict[str, bytes], split: str = "train") -> None:
        """Queue one sample already encoded by :func:`encode_sample` (e.g. in a worker process)."""
        if f"masks/{name}.png" not in files or not any(k.startswith(f"images/{name}.") for k in files):
            raise ValueError(f"{name}: files must hold images/{name}.* and masks/{name}.png, got {sorted(files)}")
        self._register(name, split)
        self._submit(self._write, files)

    def close(self) -> dict[str, int]:
        """Wait for all files, then write ``<split>.txt`` for each split. Returns {split: count}."""
        if self._closed:
            return {s: len(n) for s, n in self.splits.items()}
        try:
            for f in self._pending:
                f.result()
            self._pending = []
            for split, names in self.splits.items():
                io.write_text(io.join(self.root, f"{split}.txt"), "".join(f"{n}\n" for n in names))
        finally:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)
        return {s: len(n) for s, n in self.splits.items()}

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # do not publish split files for a failed run
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)
