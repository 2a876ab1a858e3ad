"""From manifest rows to training/validation arrays. Pure numpy; used by Ray Data and torch.

A manifest row (see :mod:`matting_lib.data.manifest`) names an image and a mask URI. The
:class:`SampleLoader` fetches both, decodes, optionally darkens with the physical low-light
simulation, augments, and returns network-ready arrays:

    image (N, 3, S, S) float32 in [0, 1]
    alpha (N, 1, S, S) float32 in [0, 1]
    valid (N, 1, S, S) float32, 1 where a pixel is real and 0 where it is padding (eval only)

Training samples are randomly cropped/augmented to ``S x S``. Validation samples keep the
whole photo: the long side is resized to ``S`` and the rest padded, so metrics see the
entire matte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from matting_lib import io
from matting_lib.config import DataConfig
from matting_lib.data.decode import decode_image, decode_mask
from matting_lib.resize import resize_long_side


def fetch_pair(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Read and decode one row's image (HxWx3 uint8) and mask (HxW uint8)."""
    image = decode_image(io.read_bytes(str(row["image_uri"])), name=str(row["image_uri"]))
    alpha = decode_mask(io.read_bytes(str(row["mask_uri"])), name=str(row["mask_uri"]))
    if image.shape[:2] != alpha.shape[:2]:
        raise ValueError(f"{row['mask_uri']}: mask size {alpha.shape[:2]} != image size {image.shape[:2]} ({row['image_uri']})")
    return image, alpha


def letterbox(image: np.ndarray, alpha: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize so the long side is ``size``, pad bottom/right to ``size x size``.

    Returns (image, alpha, valid) with valid = 1 on real pixels.
    """
    im, al = resize_long_side(image, size), resize_long_side(alpha, size)
    nh, nw = al.shape[:2]
    out_im = np.zeros((size, size, 3), np.uint8)
    out_al = np.zeros((size, size), np.uint8)
    valid = np.zeros((size, size), np.uint8)
    out_im[:nh, :nw] = im
    out_al[:nh, :nw] = al
    valid[:nh, :nw] = 1
    return out_im, out_al, valid


def to_chw(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 / HxW -> float32 (3,H,W) / (1,H,W) in [0, 1]."""
    im = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
    al = alpha[None].astype(np.float32) / 255.0
    return im, al


@dataclass
class SampleLoader:
    """Callable over a batch of manifest rows (a dict of column arrays, Ray Data's numpy format).

    ``augment``: "none" | "standard" | "lowlight" (training); ``train=False`` letterboxes
    for validation. ``lowlight_sim_prob`` applies the physical low-light simulation to
    that fraction of training samples. ``s3_endpoint_url`` is set in the process that runs
    the loader (Ray Data tasks run in other processes).
    """

    size: int
    augment: str = "standard"
    train: bool = True
    lowlight_sim_prob: float = 0.0
    seed: int | None = None
    s3_endpoint_url: str = ""

    def __post_init__(self) -> None:
        self._transform = None
        self._rng = np.random.default_rng(self.seed)

    def _transform_fn(self):
        if self._transform is None:
            from matting_lib.data.augment import build_augmentation

            self._transform = build_augmentation(self.augment, self.size, seed=self.seed)
        return self._transform

    def one(self, image: np.ndarray, alpha: np.ndarray) -> dict[str, np.ndarray]:
        """Prepare one decoded pair."""
        if not self.train:
            im, al, valid = letterbox(image, alpha, self.size)
            im_f, al_f = to_chw(im, al)
            return {"image": im_f, "alpha": al_f, "valid": valid[None].astype(np.float32)}
        if self.lowlight_sim_prob > 0 and self._rng.random() < self.lowlight_sim_prob:
            from matting_lib.data.darken import simulate_lowlight

            image = simulate_lowlight(image, self._rng)
        from matting_lib.data.augment import apply

        im, al = apply(self._transform_fn(), image, alpha)
        im_f, al_f = to_chw(im, al)
        return {"image": im_f, "alpha": al_f}

    def rows(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Prepare a list of manifest rows into stacked arrays."""
        if self.s3_endpoint_url:
            io.configure_s3(endpoint_url=self.s3_endpoint_url)
        outs = [self.one(*fetch_pair(r)) for r in rows]
        if not outs:
            raise ValueError("SampleLoader: empty batch")
        return {k: np.stack([o[k] for o in outs]) for k in outs[0]}

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        n = len(batch["image_uri"])
        rows = [{k: batch[k][i] for k in ("image_uri", "mask_uri")} for i in range(n)]
        return self.rows(rows)


def split_loaders(data: DataConfig, seed: int | None = None) -> tuple[SampleLoader, SampleLoader]:
    """(train, val) loaders of a training config's ``data`` section: both trainers (Ray Data's
    tasks and ``ray_jobs.train_local``'s DataLoader) prepare samples with these.

    ``seed`` seeds the training loader's augmentation and low-light draws; None (Ray Data, where
    every task gets its own copy of the loader) draws a fresh stream in each process.
    """
    train = SampleLoader(size=data.image_size, augment=data.augment, train=True, lowlight_sim_prob=data.lowlight_sim_prob,
                         seed=seed, s3_endpoint_url=data.s3_endpoint_url)
    val = SampleLoader(size=data.image_size, augment="none", train=False, s3_endpoint_url=data.s3_endpoint_url)
    return train, val
