"""Small synthetic data: an image/alpha pair, and a tiny dataset in the seed format."""

from __future__ import annotations

import numpy as np


def luma(rgb: np.ndarray) -> float:
    """Mean Rec.601 luma of uint8 RGB, in [0, 1]: the tests' brightness reference, written
    independently of :mod:`matting_lib.routing` (full size, float64)."""
    x = rgb.astype(np.float64)
    return float((0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).mean() / 255.0)


def synthetic_pair(rng: np.random.Generator, h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A random textured image (uint8 HxWx3) and a soft-edged blob alpha (uint8 HxW)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = rng.uniform(0.2, 0.35) * min(h, w)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    alpha = np.clip((r - d) / 3.0 + 0.5, 0, 1)
    fg = np.array(rng.integers(120, 255, size=3), dtype=np.float32)
    bg = rng.uniform(0, 90, size=(h, w, 3)).astype(np.float32)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return image.round().astype(np.uint8), (alpha * 255).round().astype(np.uint8)


def write_dataset(root: str, n_train: int, n_val: int, size: int = 64, seed: int = 0) -> str:
    """A tiny synthetic dataset in the seed format at ``root`` (local path or s3://); no ``val.txt`` when ``n_val`` is 0."""
    from matting_lib import io
    from matting_lib.data.encode import encode_png

    rng = np.random.default_rng(seed)
    splits = {"train": [f"tr{i:03d}" for i in range(n_train)], "val": [f"va{i:03d}" for i in range(n_val)]}
    for names in splits.values():
        for name in names:
            image, alpha = synthetic_pair(rng, size, size)
            io.write_bytes(io.join(root, "images", f"{name}.png"), encode_png(image))
            io.write_bytes(io.join(root, "masks", f"{name}.png"), encode_png(alpha))
    for split, names in splits.items():
        if names:  # n_val=0: the seeds' layout, images/ masks/ and train.txt only
            io.write_text(io.join(root, f"{split}.txt"), "\n".join(names) + "\n")
    return root
