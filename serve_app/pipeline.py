"""One image through cache, decode, routing, model and post-processing: a plain class, no Serve, no HTTP.

    pipeline = MattingPipeline(models, router, cache, max_pixels=..., versions={"base": uri, ...})
    outcome = await pipeline.matte(data, "photo.png", params)

Per image: cache lookup (content hash of the bytes, the parameters and the served checkpoints)
-> decode (bounded pixels) -> measure brightness and pick a model (:class:`BrightnessRouter`, or
the model the request forces) -> the model's ``call`` -> the seeds' post-processing
(:func:`matting_lib.postprocess.apply`) -> cache. CPU work runs in worker threads so the event
loop keeps serving. ``models`` is anything with ``async call(model, rgb, max_side)`` and
``async infos()`` (:class:`serve_app.model_client.ModelClient` in the service; a stub in tests).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from matting_lib import postprocess
from matting_lib.data.decode import ImageDecodeError, decode_image
from matting_lib.refine.hints import HintError, Hints
from matting_lib.resize import KEEP, MaxSide
from matting_lib.routing import BrightnessRouter, measure_brightness
from serve_app.admission import PixelBudget
from serve_app.cache import CachedResult, ResultCache
from serve_app.errors import ApiError, decode_error_to_api
from serve_app.params import MEDIA_TYPES, MatteParams, content_key

VERSION_TTL_S = 2.0
"""How long the served checkpoints (part of every cache key) are trusted before asking the models again."""


class Models(Protocol):
    """What the pipeline needs of the models."""

    async def call(self, model: str, rgb: np.ndarray, max_side: MaxSide = KEEP, refine: str = "auto",
                   hints: Hints | None = None) -> dict[str, Any]:
        """``{"alpha": uint8 (H, W), "checkpoint": URI, "forward_ms"?: float, "refine"?: mode that ran,
        "prior"?: bool}``; raises :class:`ApiError`."""

    async def infos(self) -> dict[str, dict[str, Any] | str]:
        """Each model's ``info()`` (with its ``checkpoint``), or the error text when it does not answer."""


@dataclass(frozen=True)
class Outcome:
    """One image's result and how it was obtained."""

    result: CachedResult
    cache_hit: bool
    ms: float
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage (key, decode, model, forward, encode), as far as it got."""


def decode_and_measure(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, float]:
    """uint8 RGB and its brightness; an undecodable or oversized image is the client's 4xx."""
    try:
        rgb = decode_image(data, name=name, max_pixels=max_pixels)
    except ImageDecodeError as e:
        raise decode_error_to_api(e) from None
    return rgb, measure_brightness(rgb)


def header_pixels(data: bytes) -> int:
    """Width x height from the image's header, without decoding it (0 when unreadable: the decode then
    answers the 4xx). What a request costs in :class:`serve_app.admission.PixelBudget`."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]) * int(im.size[1])
    except Exception:  # noqa: BLE001 - anything unreadable is decode_image's to describe
        return 0


def read_hints(rgb: np.ndarray, box: str | None, hints_file: bytes | None, max_pixels: int) -> Hints | None:
    """The request's hints checked against the decoded image (None without any); 422 naming the problem."""
    if box is None and hints_file is None:
        return None
    try:
        return Hints.from_wire(rgb.shape[0], rgb.shape[1], box, hints_file, max_pixels)
    except HintError as e:
        field = "box" if box is not None and str(e).startswith("box") else "hints"
        raise ApiError(422, f"{field}: {e}") from None


class MattingPipeline:
    """Cache -> decode -> route -> model -> post-process, for one ingress replica."""

    def __init__(self, models: Models, router: BrightnessRouter, cache: ResultCache, max_pixels: int,
                 versions: Mapping[str, str], budget: PixelBudget | None = None):
        self.models = models
        self.budget = budget
        """Admission by decoded megapixels (None: unbounded); held from decode to the encoded result."""
        self.router = router
        self.cache = cache
        self.max_pixels = max_pixels
        self.versions: dict[str, str] = dict(versions)
        """model name -> the checkpoint it serves (as last seen), part of every cache key."""
        self.versions_checked = 0.0

    async def refresh_versions(self) -> None:
        """Ask the models which checkpoints they serve, at most every :data:`VERSION_TTL_S` seconds."""
        if time.monotonic() - self.versions_checked < VERSION_TTL_S:
            return
        self.versions_checked = time.monotonic()
        for name, info in (await self.models.infos()).items():
            if isinstance(info, dict):
                self.versions[name] = info["checkpoint"]

    async def matte(self, data: bytes, name: str, params: MatteParams, hints: bytes | None = None) -> Outcome:
        """One image through cache, decode, routing, model and post-processing; ``hints``: an encoded
        hints image (strokes, :mod:`matting_lib.refine.hints`), applied with ``params.box``."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = (now - since) * 1000
            return now

        await self.refresh_versions()
        key = await asyncio.to_thread(content_key, data, params, dict(self.versions), hints)
        t = lap("key", t0)
        hit = self.cache.get(key)
        if hit is not None:
            return Outcome(hit, True, (time.perf_counter() - t0) * 1000, timings)
        if self.budget is None:
            return await self._compute(data, name, params, hints, key, t0, t, timings)
        pixels = await asyncio.to_thread(header_pixels, data) if len(data) > 4096 else header_pixels(data)
        async with self.budget.hold(pixels):
            t = lap("admit", t)
            return await self._compute(data, name, params, hints, key, t0, t, timings)

    async def _compute(self, data: bytes, name: str, params: MatteParams, hints: bytes | None, key: str,
                       t0: float, t: float, timings: dict[str, float]) -> Outcome:
        """A cache miss: decode, route, model, post-process, cache."""

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = (now - since) * 1000
            return now

        rgb, brightness = await asyncio.to_thread(decode_and_measure, data, name, self.max_pixels)
        user_hints = await asyncio.to_thread(read_hints, rgb, params.box, hints, self.max_pixels)
        t = lap("decode", t)
        model = self.router.pick(brightness) if params.model == "auto" else params.model
        side = KEEP if params.max_side is None else params.max_side  # HTTP: absent = the server's
        if user_hints is None:  # the plain call, batched with others on the model's side
            answer = await self.models.call(model, rgb, side, params.refine)
        else:
            answer = await self.models.call(model, rgb, side, params.refine, user_hints)
        t = lap("model", t)
        if "forward_ms" in answer:
            timings["forward"] = answer["forward_ms"]
        alpha, empty = await asyncio.to_thread(postprocess.clear_empty_haze, answer["alpha"])
        try:
            body = await asyncio.to_thread(postprocess.apply, rgb, alpha, params.postprocess())
        except ValueError as e:
            raise ApiError(422, str(e)) from None
        lap("encode", t)
        result = CachedResult(
            body=body, media_type=MEDIA_TYPES[params.format], model=model, brightness=brightness,
            checkpoint=answer["checkpoint"], width=rgb.shape[1], height=rgb.shape[0],
            empty=empty,
            refine=answer.get("refine", ""), prior=bool(answer.get("prior", False)),
            hints=user_hints.kind if user_hints is not None else "none",
        )
        if answer["checkpoint"] != self.versions.get(model):  # swapped since the key was made
            self.versions[model] = answer["checkpoint"]
            key = await asyncio.to_thread(content_key, data, params, dict(self.versions), hints)
        self.cache.put(key, result)
        return Outcome(result, False, (time.perf_counter() - t0) * 1000, timings)
