"""User corrections of a matte: a box around the subject, and "keep" / "remove" strokes.

    hints = Hints.parse(h, w, box="40,30,600,470", strokes=hint_image)   # or Hints(box=..., marks=...)
    alpha, info = predictor.matte_hinted(image, hints)

What each hint does (:meth:`matting_lib.inference.predictor.Predictor.matte_hinted` runs the steps):

- **Box** ``(x0, y0, x1, y1)``, pixels of the full-size image, ``x1``/``y1`` exclusive.
  Everything outside it is background (alpha 0, exactly). The box also sets the scale: the
  network sees a crop of the box plus a margin (:data:`BOX_MARGIN`) at its working size, so a
  small subject is matted from as many pixels as a large one (a box covering half the image or
  more is not cropped: :meth:`Hints.crop`).
- **Strokes**, a map of the image's size: ``+1`` keep (alpha 1 there), ``-1`` remove (alpha 0
  there), ``0`` no hint. On the wire it is a hints image (:func:`marks_from_image`): white =
  keep, black = remove, grey or transparent = no hint.

Strokes act beyond the pixels they cover (:func:`apply_strokes`): at the network's working
size, a colour segmentation (GrabCut) seeded by the network's alpha, with the strokes as sure
labels, decides which connected regions the strokes belong to. Only regions that touch a stroke
change, and only away from the subject's outline, so a "keep" stroke on a missed hand brings the
hand back without hardening every edge of the matte. The refinement stage
(:func:`matting_lib.refine.refine_alpha`) then decides every pixel at full resolution, and the
stroked pixels themselves are set last, so "keep" ends at exactly 1 and "remove" at exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from matting_lib.data.decode import MAX_PIXELS, decode_rgba
from matting_lib.refine.classical import grabcut_labels, prior_labels

BOX_MARGIN = 0.08
"""The crop the network sees is the box grown by this fraction of its size on each side (at
least :data:`MIN_MARGIN_PX`), so the subject's edge is not at the crop's border."""
MIN_MARGIN_PX = 8
CROP_MAX_AREA = 0.5
"""A box whose crop covers at least this share of the image is not cropped (only zeroed outside)."""
MIN_BOX_PX = 4
"""Boxes narrower or lower than this are refused (a click, not a drag)."""
KEEP_MIN = 192
"""Hints-image values at or above this mean keep (white)."""
REMOVE_MAX = 63
"""Hints-image values at or below this mean remove (black); values between are no hint (grey)."""


class HintError(ValueError):
    """A hint that cannot apply to this image (outside it, the wrong size, malformed)."""


@dataclass(frozen=True)
class StrokeParams:
    """Settings of :func:`apply_strokes`."""

    fg: float = 0.85
    """Network alpha at or above this is solid already: a keep stroke's region does not include it."""
    bg: float = 0.05
    """Network alpha at or below this is background already: a remove stroke's region does not include it."""
    iterations: int = 3
    reach: float = 0.2
    """A stroke changes nothing farther than this fraction of the working image's long side from it."""
    colour_radius: float = 0.06
    """RGB distance (channels in [0, 1]) within which a pixel counts as a stroke's colour."""
    band: int = 2
    """Working pixels around the segmentation's outline where a stroke's region keeps the network's
    soft edge (and gets 0.5 where the network had none), so strokes do not harden edges."""
    seed: int = 0


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` (integers, pixels) -> a tuple; :class:`HintError` naming the problem."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise HintError(f"box must be 'x0,y0,x1,y1' (four integers, pixels), got {text!r}")
    try:
        x0, y0, x1, y1 = (round(float(p)) for p in parts)  # "10.5" from a scaled canvas rounds
    except (ValueError, OverflowError):  # not a number, nan, inf
        raise HintError(f"box must be 'x0,y0,x1,y1' (four integers, pixels), got {text!r}") from None
    return x0, y0, x1, y1


def check_box(box: tuple[int, int, int, int], h: int, w: int) -> tuple[int, int, int, int]:
    """``box`` if it is a real region of an ``h`` x ``w`` image; :class:`HintError` otherwise."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise HintError(f"box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                        f"(the image is {w}x{h}; x1 and y1 are exclusive)")
    if x1 - x0 < MIN_BOX_PX or y1 - y0 < MIN_BOX_PX:
        raise HintError(f"box {x0},{y0},{x1},{y1} is {x1 - x0}x{y1 - y0} px; it must be at least {MIN_BOX_PX}x{MIN_BOX_PX}")
    return box


def marks_from_image(hints: np.ndarray) -> np.ndarray:
    """A hints image -> int8 marks (+1 keep, -1 remove, 0 none).

    ``hints``: uint8 grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4). White (>= :data:`KEEP_MIN`)
    is keep, black (<= :data:`REMOVE_MAX`) remove, anything between no hint; with an alpha
    channel, pixels under 50% opacity are no hint too (a transparent canvas with painted strokes).
    """
    arr = np.asarray(hints)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise HintError(f"hints image must be 8-bit grey, RGB or RGBA, got {arr.dtype} {arr.shape}")
    opaque = np.ones(arr.shape[:2], bool)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            opaque = arr[..., 3] >= 128
        grey = arr[..., 0] if arr.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(arr[..., :3]), cv2.COLOR_RGB2GRAY)
    else:
        grey = arr
    marks = np.zeros(arr.shape[:2], np.int8)
    marks[(grey >= KEEP_MIN) & opaque] = 1
    marks[(grey <= REMOVE_MAX) & opaque] = -1
    return marks


@dataclass(frozen=True)
class Hints:
    """A user's corrections of one image (see the module docstring)."""

    box: tuple[int, int, int, int] | None = None
    """``(x0, y0, x1, y1)`` in full-size pixels, ``x1``/``y1`` exclusive; outside is background."""
    marks: np.ndarray | None = None
    """int8 (H, W): +1 keep, -1 remove, 0 no hint."""

    @property
    def empty(self) -> bool:
        return self.box is None and (self.marks is None or not self.marks.any())

    def check(self, h: int, w: int) -> "Hints":
        """``self`` if it fits an ``h`` x ``w`` image; :class:`HintError` naming what does not."""
        if self.box is not None:
            check_box(tuple(int(v) for v in self.box), h, w)
        if self.marks is not None:
            m = np.asarray(self.marks)
            if m.shape != (h, w):
                raise HintError(f"the hints image is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]}, "
                                f"the image {w}x{h}: they must be the same size")
            if m.dtype != np.int8 or m.min(initial=0) < -1 or m.max(initial=0) > 1:
                raise HintError("hint marks must be int8 in {-1, 0, 1}")
        return self

    @classmethod
    def parse(cls, h: int, w: int, box: str | None = None, strokes: np.ndarray | None = None) -> "Hints":
        """Hints from their wire forms (a box string, a decoded hints image), checked against the image size."""
        b = parse_box(box) if box else None
        marks = marks_from_image(strokes) if strokes is not None else None
        return cls(b, marks).check(h, w)

    @classmethod
    def from_wire(cls, h: int, w: int, box: str | None = None, hints_file: bytes | None = None,
                  max_pixels: int = MAX_PIXELS) -> "Hints":
        """Hints of an ``h`` x ``w`` image from a request: a box string and an encoded hints image.

        Raises:
            HintError: a malformed box, an undecodable hints image, or hints that do not fit.
        """
        strokes = None
        if hints_file is not None:
            try:
                strokes = decode_rgba(hints_file, "hints image", max_pixels)
            except ValueError as e:
                raise HintError(str(e)) from None
        return cls.parse(h, w, box, strokes)

    @property
    def kind(self) -> str:
        """What these hints hold: ``none``, ``box``, ``strokes`` or ``box+strokes``."""
        parts = [n for n, on in (("box", self.box is not None), ("strokes", self.marks is not None and self.marks.any())) if on]
        return "+".join(parts) or "none"

    def crop(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the part of the image the network sees: the box plus a margin when
        that is under :data:`CROP_MAX_AREA` of the image, else all of it (a box around a subject
        that fills the photo changes nothing of its scale, and the crop would cut the context
        the network saw in training: on the cross-validated photos such crops cost MAD)."""
        if self.box is None:
            return 0, h, 0, w
        x0, y0, x1, y1 = self.box
        mx = max(MIN_MARGIN_PX, round(BOX_MARGIN * (x1 - x0)))
        my = max(MIN_MARGIN_PX, round(BOX_MARGIN * (y1 - y0)))
        cy0, cy1, cx0, cx1 = max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)
        if (cy1 - cy0) * (cx1 - cx0) >= CROP_MAX_AREA * h * w:
            return 0, h, 0, w
        return cy0, cy1, cx0, cx1

    def outside_box(self, h: int, w: int) -> np.ndarray:
        """bool (h, w): True outside the box (all False without one)."""
        out = np.zeros((h, w), bool)
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            out[:] = True
            out[y0:y1, x0:x1] = False
        return out


def shrink_mask(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """A bool mask resized to (h, w) so that thin strokes survive: a working pixel is marked when
    at least a quarter of its area is."""
    if mask.shape == (h, w):
        return mask.copy()
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.25


def colour_distance(rgb: np.ndarray, samples: np.ndarray, k: int = 64, seed: int = 0) -> np.ndarray:
    """Per pixel of float (h, w, 3) ``rgb``: the RGB distance to the nearest of at most ``k`` of the
    (n, 3) ``samples`` (drawn with a fixed seed)."""
    if len(samples) > k:
        samples = samples[np.random.default_rng(seed).choice(len(samples), k, replace=False)]
    flat = rgb.reshape(-1, 1, 3)
    best = np.full(flat.shape[0], np.inf, np.float32)
    for i in range(0, len(samples), 16):
        d = np.sqrt(((flat - samples[None, i:i + 16]) ** 2).sum(-1)).min(1)
        np.minimum(best, d, out=best)
    return best.reshape(rgb.shape[:2])


def within(mask: np.ndarray, radius: float) -> np.ndarray:
    """bool: pixels at most ``radius`` pixels from a True pixel of ``mask``."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3) <= radius


def apply_strokes(image: np.ndarray, coarse: np.ndarray, keep: np.ndarray, remove: np.ndarray,
                  params: StrokeParams = StrokeParams(), outside: np.ndarray | None = None) -> np.ndarray:
    """The network's alpha corrected by strokes, at the working size.

    Args:
        image: uint8 (h, w, 3) RGB as the network saw it.
        coarse: float32 (h, w) network alpha in [0, 1].
        keep, remove: bool (h, w) stroked pixels (remove wins where both are set).
        outside: bool (h, w), True outside the user's box: sure background for the segmentation,
            and 0 in the result, but not a stroke (its colours say nothing about the subject).

    Returns:
        float32 (h, w): ``coarse`` where no stroke reaches; 1 / 0 on the strokes; in each
        connected region that a GrabCut seeded by ``coarse`` and the strokes assigns differently
        from ``coarse`` and that touches a stroke (away from the segmentation's outline), the
        segmentation's label.
    """
    keep = keep & ~remove
    outside = np.zeros_like(keep) if outside is None else outside
    out = coarse.astype(np.float32).copy()
    if not (keep.any() or remove.any()):
        out[outside] = 0.0
        return out
    reach_px = params.reach * max(coarse.shape)
    # The network's confident pixels are sure labels, except near a stroke, which may contradict them.
    labels = prior_labels(coarse, params.fg, 0.5, params.bg)
    near_stroke = within(keep | remove, reach_px)
    labels[near_stroke & (labels == cv2.GC_FGD)] = cv2.GC_PR_FGD
    labels[near_stroke & (labels == cv2.GC_BGD)] = cv2.GC_PR_BGD
    # Pixels of the stroke's colours near it start on the stroke's side, or the colour models
    # GrabCut builds from the network's labels would hold them where the network put them.
    rgb = image.astype(np.float32) / 255.0
    reach = {}
    for name, stroke, side, label in (("keep", keep, coarse < 0.5, cv2.GC_PR_FGD), ("remove", remove, coarse >= 0.5, cv2.GC_PR_BGD)):
        if stroke.any():
            reach[name] = within(stroke, reach_px)
            if params.colour_radius <= 0:
                continue
            similar = side & reach[name] & (colour_distance(rgb, rgb[stroke]) < params.colour_radius)
            labels[similar] = label
    labels[outside] = cv2.GC_BGD
    labels[keep] = cv2.GC_FGD
    labels[remove] = cv2.GC_BGD
    seg = grabcut_labels(image, labels, params.iterations, params.seed)
    if seg is not None:
        fg = seg > 0.5
        if params.band:
            k = np.ones((2 * params.band + 1, 2 * params.band + 1), np.uint8)
            interior = cv2.dilate(seg, k) == cv2.erode(seg, k)
        else:
            interior = np.ones(fg.shape, bool)
        grow = fg & (coarse < params.fg)  # becomes foreground where a keep stroke reaches it
        cut = ~fg & (coarse > params.bg)  # becomes background where a remove stroke reaches it
        near = np.ones((3, 3), np.uint8)
        for name, region, stroke, value, new_edge in (("keep", grow, keep, 1.0, coarse <= params.bg),
                                                      ("remove", cut, remove, 0.0, coarse >= params.fg)):
            if not stroke.any() or not region.any():
                continue
            region = region & reach[name]
            n, comp = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
            touched = np.unique(comp[cv2.dilate(stroke.astype(np.uint8), near) > 0])
            reached = np.isin(comp, touched[touched > 0])
            out[reached & interior] = value
            # On the segmentation's outline: an edge the network never drew gets 0.5 for the
            # refinement to place; an edge it drew (soft values) is kept as it is.
            out[reached & ~interior & new_edge] = 0.5
    out[keep] = 1.0
    out[remove | outside] = 0.0
    return out


def truth_box(truth: np.ndarray, grow: float = 0.04, level: float = 0.02) -> tuple[int, int, int, int] | None:
    """The box a careful user draws: the bounding box of ``truth`` > ``level``, grown by ``grow``
    of its size on each side (clipped to the image); None for an empty truth."""
    ys, xs = np.nonzero(truth > level)
    if ys.size == 0:
        return None
    h, w = truth.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    gx, gy = round(grow * (x1 - x0)), round(grow * (y1 - y0))
    return max(0, x0 - gx), max(0, y0 - gy), min(w, x1 + gx), min(h, y1 + gy)


def simulated_stroke(alpha: np.ndarray, truth: np.ndarray, max_radius: int, level: float = 0.3) -> np.ndarray | None:
    """Where a user paints next: one disk on the worst error of ``alpha`` against ``truth``.

    Errors are split by sign (too little alpha -> a keep stroke, too much -> remove), pixels off
    by more than ``level`` form connected regions, and the region with the largest summed error
    gets a disk centred at its deepest point (the distance transform's maximum), of radius at
    most ``max_radius`` and never wider than the region there. Returns int8 marks (+1 / -1 on the
    disk, 0 elsewhere), or None when no pixel is off by more than ``level``.
    """
    best: tuple[float, np.ndarray, int] | None = None
    for diff, sign in ((truth - alpha, 1), (alpha - truth, -1)):
        wrong = (diff > level).astype(np.uint8)
        if not wrong.any():
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(wrong, connectivity=8)
        sums = np.bincount(comp.ravel(), weights=np.where(wrong > 0, diff, 0).ravel(), minlength=n)
        sums[0] = 0
        k = int(np.argmax(sums))
        if best is None or sums[k] > best[0]:
            best = (float(sums[k]), comp == k, sign)
    if best is None:
        return None
    _, region, sign = best
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
    radius = int(max(1, min(max_radius, dist[cy, cx] - 1)))
    marks = np.zeros(alpha.shape, np.int8)
    cv2.circle(marks, (int(cx), int(cy)), radius, int(sign), thickness=-1)
    return marks
