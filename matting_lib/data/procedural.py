"""Procedural foregrounds: many kinds of mattes beyond the few real photos.

Each generator maps ``(rng, size, textures)`` to ``(fg uint8 (H, W, 3), alpha float32 (H, W) in
[0, 1])`` and is a pure function of the generator's state:

- :func:`textured_object`: a blob, polygon or superellipse filled with a photo texture crop;
  edges anti-aliased (4x supersampling) and sometimes feathered (defocus-like soft edges).
- :func:`hair_strands`: hundreds of thin strands (cubic Béziers growing out of an object, or
  free random-walk wisps), 0.3-3 px wide, rendered at 4x and area-downsampled, so most strand
  pixels have partial alpha; several opacity layers combined with the "over" operator.
- :func:`semi_transparent`: glass/veil-like regions, alpha 0.2-0.7 with smooth variation, an
  optional denser rim and bright highlights.
- :func:`motion_blurred`: an object or strands blurred along a random direction with a line
  kernel, applied to the premultiplied colour and the alpha (the physics of a moving object).

``textures`` are uint8 RGB photos (e.g. the background library); with none, smooth random
colour fields are used. :func:`random_foreground` picks a generator (:data:`GENERATORS`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from matting_lib.data.synthesis import random_resized_crop

SS = 4
"""Supersampling factor for rasterising shapes and strands (anti-aliasing)."""
HAIR_COLOURS = np.array([[20, 16, 14], [60, 40, 28], [110, 75, 45], [200, 170, 120], [170, 165, 160], [140, 60, 30]])
"""RGB bases for strands: black, dark/mid brown, blond, grey, red."""

Size = int | tuple[int, int]
Generator = Callable[[np.random.Generator, Size, Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def smooth_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int = 4) -> np.ndarray:
    """float32 (h, w) in [0, 1]: a ``cells`` x ``cells`` random grid upsampled bicubically, rescaled."""
    grid = rng.random((cells, cells)).astype(np.float32)
    field = cv2.resize(grid, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo) if hi > lo else np.zeros(hw, np.float32)


def texture(rng: np.random.Generator, hw: tuple[int, int], textures: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 (h, w, 3): a random crop of a random texture with a colour jitter, or a smooth colour field."""
    if len(textures):
        tex = textures[int(rng.integers(len(textures)))]
        out = random_resized_crop(tex, rng, hw, area_range=(0.05, 0.5)).astype(np.float32)
        out *= rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    else:
        cols = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        t = smooth_noise(rng, hw, int(rng.integers(2, 6)))[..., None]
        out = t * cols[0] + (1 - t) * cols[1]
    return np.clip(out, 0, 255).astype(np.uint8)


def _downsample(big: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Supersampled uint8 mask -> float32 coverage in [0, 1] (area average)."""
    return cv2.resize(big, (hw[1], hw[0]), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _outline(rng: np.random.Generator, hw: tuple[int, int], radius: float) -> np.ndarray:
    """(N, 2) float x, y points of a random blob, polygon or superellipse around the canvas centre."""
    h, w = hw
    c = np.array([w, h]) * (0.5 + rng.uniform(-0.08, 0.08, size=2))
    r = radius * min(h, w)
    kind = int(rng.integers(3))
    if kind == 0:  # blob: radius with a few random harmonics
        t = np.linspace(0, 2 * np.pi, 256, endpoint=False)
        rad = np.ones_like(t)
        for k in range(2, 7):
            rad += rng.uniform(0, 0.3) / k * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        pts = np.stack([np.cos(t), np.sin(t)], 1) * (r * rad / rad.max())[:, None]
    elif kind == 1:  # polygon
        n = int(rng.integers(3, 10))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = np.stack([np.cos(t), np.sin(t)], 1) * (r * rng.uniform(0.5, 1.0, n))[:, None]
    else:  # superellipse |x/a|^n + |y/b|^n = 1, rotated
        t = np.linspace(0, 2 * np.pi, 256, endpoint=False)
        n, ab = rng.uniform(0.7, 5.0), np.array([1.0, rng.uniform(0.4, 1.0)]) * r
        ct, st = np.cos(t), np.sin(t)
        pts = np.stack([np.sign(ct) * np.abs(ct) ** (2 / n), np.sign(st) * np.abs(st) ** (2 / n)], 1) * ab
        th = rng.uniform(0, np.pi)
        pts = pts @ np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    return pts + c


def shape_alpha(rng: np.random.Generator, hw: tuple[int, int], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage float32 (h, w) of a random outline, and the outline points (x, y)."""
    pts = _outline(rng, hw, radius)
    big = np.zeros((hw[0] * SS, hw[1] * SS), np.uint8)
    cv2.fillPoly(big, [np.round(pts * SS).astype(np.int32)], 255)
    return _downsample(big, hw), pts


def _finish(fg: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 fg and float32 alpha in [0, 1]; blur tails below half an 8-bit level become exactly 0 (1 above)."""
    a = np.clip(alpha, 0, 1).astype(np.float32)
    a[a < 0.5 / 255] = 0.0
    a[a > 1 - 0.5 / 255] = 1.0
    return np.clip(np.round(fg), 0, 255).astype(np.uint8), a


def _over(fg_top, a_top, fg_bot, a_bot) -> tuple[np.ndarray, np.ndarray]:
    """Porter-Duff "over" of (fg, alpha) layers; fg float (h, w, 3), alpha float (h, w)."""
    a = a_top + a_bot * (1 - a_top)
    num = a_top[..., None] * fg_top + (a_bot * (1 - a_top))[..., None] * fg_bot
    fg = np.where(a[..., None] > 1e-6, num / np.maximum(a, 1e-6)[..., None], fg_bot)
    return fg, a


def textured_object(rng: np.random.Generator, size: Size, textures: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A textured blob/polygon/superellipse; feathered edges (sigma 0.5-4 px) half of the time."""
    hw = _hw(size)
    alpha, _ = shape_alpha(rng, hw, rng.uniform(0.2, 0.4))
    if rng.random() < 0.5:
        alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.5, 4.0))
    return _finish(texture(rng, hw, textures), alpha)


def _bezier(p: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) points on the cubic Bézier with control points p (4, 2)."""
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3]


def _strand_curves(rng: np.random.Generator, hw: tuple[int, int], n: int, outline: np.ndarray | None) -> list[np.ndarray]:
    """Curves (x, y) of ``n`` strands: Béziers growing out of ``outline``, or random-walk wisps."""
    h, w = hw
    m = min(h, w)
    curves = []
    flow = rng.uniform(0, 2 * np.pi)  # a common direction: gravity / combing / wind
    pull = rng.uniform(0, 1.5)  # how strongly strands follow it
    g = np.array([np.cos(flow), np.sin(flow)])
    for _ in range(n):
        length = rng.uniform(0.05, 0.25) * m
        if outline is not None:
            p0 = outline[int(rng.integers(len(outline)))]
            centre = outline.mean(0)
            out = (p0 - centre) / max(np.linalg.norm(p0 - centre), 1e-6)
            p0 = centre + (p0 - centre) * rng.uniform(0.75, 1.0)  # roots inside the object
            u = out + pull * g + rng.normal(0, 0.3, 2)
            u = u / max(np.linalg.norm(u), 1e-6)
            side = np.array([-u[1], u[0]])
            b1, b2 = rng.normal(0, 0.3, 2) * length
            ctrl = np.stack([p0, p0 + u * length / 3 + side * b1, p0 + u * 2 * length / 3 + side * b2,
                             p0 + u * length + side * (b1 + b2) / 2])
            curves.append(_bezier(ctrl, 40))
        else:
            steps = 40
            ang = flow + rng.normal(0, 0.4) + np.cumsum(rng.normal(0, 0.08, steps))
            seg = length / steps * np.stack([np.cos(ang), np.sin(ang)], 1)
            start = np.array([w, h]) * rng.uniform(0.25, 0.75, 2)
            curves.append(start + np.cumsum(seg, 0))
    return curves


def hair_strands(rng: np.random.Generator, size: Size, textures: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Many 0.3-3 px anti-aliased strands around an object (70 %) or as free wisps (30 %)."""
    hw = _hw(size)
    base = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))].astype(np.float32) * rng.uniform(0.8, 1.2, 3)
    shade = 0.6 + 0.8 * smooth_noise(rng, hw, int(rng.integers(3, 9)))
    strand_fg = np.clip(base * shade[..., None], 0, 255)
    if rng.random() < 0.7:
        core_a, outline = shape_alpha(rng, hw, rng.uniform(0.12, 0.25))
        core_tex = texture(rng, hw, textures).astype(np.float32)
        fg, alpha = 0.5 * core_tex + 0.5 * strand_fg, core_a
    else:
        outline = None
        fg, alpha = strand_fg, np.zeros(hw, np.float32)
    n = int(rng.integers(100, 500))
    curves = _strand_curves(rng, hw, n, outline)
    for layer in np.array_split(np.arange(n), 4):  # opacity layers, combined with "over"
        big = np.zeros((hw[0] * SS, hw[1] * SS), np.uint8)
        for i in layer:
            width = int(np.clip(round(np.exp(rng.uniform(np.log(0.3), np.log(2.5))) * SS), 1, 3 * SS))
            cv2.polylines(big, [np.round(curves[i] * SS).astype(np.int32)], False, 255, width, cv2.LINE_8)
        a_layer = _downsample(big, hw) * rng.uniform(0.4, 1.0)
        fg, alpha = _over(strand_fg, a_layer, fg, alpha)
    return _finish(fg, alpha)


def semi_transparent(rng: np.random.Generator, size: Size, textures: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Glass/veil: alpha 0.2-0.7 varying smoothly inside a shape, optional opaque rim and highlights."""
    hw = _hw(size)
    shape, _ = shape_alpha(rng, hw, rng.uniform(0.25, 0.42))
    if rng.random() < 0.3:  # veil/smoke: a very soft outline
        shape = cv2.GaussianBlur(shape, (0, 0), rng.uniform(4, 12))
    lo = rng.uniform(0.2, 0.5)
    hi = rng.uniform(lo + 0.05, 0.7)
    opacity = lo + (hi - lo) * smooth_noise(rng, hw, int(rng.integers(2, 7)))
    alpha = shape * opacity
    tint = rng.uniform(60, 255, 3).astype(np.float32)
    fg = 0.7 * tint + 0.3 * texture(rng, hw, textures).astype(np.float32)
    if rng.random() < 0.6:  # denser rim, like the edge of a glass
        k = int(rng.integers(2, 6))
        rim = shape - cv2.erode(shape, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
        alpha = np.maximum(alpha, cv2.GaussianBlur(rim, (0, 0), 1.0) * rng.uniform(0.7, 1.0))
    for _ in range(int(rng.integers(0, 3))):  # specular highlights: brighter and more opaque
        spot = np.zeros(hw, np.float32)
        c = tuple(int(v) for v in np.array(hw[::-1]) * rng.uniform(0.3, 0.7, 2))
        ax = tuple(int(v) for v in np.array([min(hw) * rng.uniform(0.05, 0.15), min(hw) * rng.uniform(0.01, 0.04)]))
        cv2.ellipse(spot, c, ax, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_8)
        spot = cv2.GaussianBlur(spot, (0, 0), 2.0) * shape * rng.uniform(0.3, 0.8)
        fg = fg * (1 - spot[..., None]) + 255 * spot[..., None]
        alpha = alpha + spot * (1 - alpha)
    return _finish(fg, alpha)


def line_kernel(length: int, angle: float) -> np.ndarray:
    """float32 (L, L) normalised anti-aliased line through the centre at ``angle`` radians."""
    k = np.zeros((length * SS, length * SS), np.uint8)
    c = (length * SS - 1) / 2
    d = np.array([np.cos(angle), np.sin(angle)]) * (length * SS - 1) / 2
    cv2.line(k, tuple(np.round([c - d[0], c - d[1]]).astype(int)), tuple(np.round([c + d[0], c + d[1]]).astype(int)), 255, SS)
    k = _downsample(k, (length, length))
    return k / k.sum()


def motion_blurred(rng: np.random.Generator, size: Size, textures: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """An object (or strands) blurred along a random direction: ``fg' = K*(alpha fg) / K*alpha``, ``alpha' = K*alpha``."""
    hw = _hw(size)
    fg, alpha = (hair_strands if rng.random() < 0.25 else textured_object)(rng, hw, textures)
    length = int(rng.integers(2, 13)) * 2 + 1  # 5..25 px
    k = line_kernel(length, rng.uniform(0, np.pi))
    a = cv2.filter2D(alpha, -1, k, borderType=cv2.BORDER_CONSTANT)
    pre = cv2.filter2D(fg.astype(np.float32) * alpha[..., None], -1, k, borderType=cv2.BORDER_CONSTANT)
    out = np.where(a[..., None] > 1e-4, pre / np.maximum(a, 1e-4)[..., None], fg.astype(np.float32))
    return _finish(out, a)


GENERATORS: dict[str, Generator] = {
    "object": textured_object,
    "strands": hair_strands,
    "glass": semi_transparent,
    "motion": motion_blurred,
}
"""Name -> generator. Weights in :data:`GENERATOR_WEIGHTS`."""
GENERATOR_WEIGHTS = {"object": 0.25, "strands": 0.35, "glass": 0.2, "motion": 0.2}


def pick_generator(rng: np.random.Generator) -> str:
    """A generator name drawn with :data:`GENERATOR_WEIGHTS`."""
    names = list(GENERATOR_WEIGHTS)
    p = np.array([GENERATOR_WEIGHTS[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def random_foreground(
    rng: np.random.Generator, size: Size, textures: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """``(fg uint8 (H, W, 3), alpha float32 (H, W) in [0, 1])`` from a randomly picked generator."""
    return GENERATORS[pick_generator(rng)](rng, size, textures)
