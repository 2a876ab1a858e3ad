"""What one ingress replica holds and does, apart from HTTP: the pipeline, the history, the models.

:class:`IngressService` is built from the config (and the models' client) and is all the
routes of :mod:`serve_app.api` talk to. No Serve here: with a stub model client it runs in a
test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from matting_lib.data.corrections import Correction, CorrectionError, CorrectionStore
from matting_lib.data.decode import ImageDecodeError, decode_image, decode_matte
from serve_app.admission import PixelBudget
from serve_app.batch import BatchRow
from serve_app.cache import ResultCache
from serve_app.config import ServeConfig
from serve_app.errors import ApiError, decode_error_to_api
from serve_app.history import Entry, History
from serve_app.params import EXTENSIONS, MatteParams, check_against_limits, merge_params
from serve_app.pipeline import MattingPipeline, Models
from serve_app.uploads import output_name

logger = logging.getLogger("ray.serve")

EMPTY_NOTICE = "No subject found: the matte is empty (under 0.5% of pixels are foreground)"
"""``X-Matting-Notice`` of an empty result (:func:`matting_lib.postprocess.is_empty_matte`)."""


class IngressService:
    """The ingress's state and the work behind its routes."""

    def __init__(self, config: ServeConfig, models: Models):
        self.config = config
        self.models = models
        self.cache = ResultCache(int(config.cache.max_mb * 1_000_000))
        self.history = History(config.history)
        self.corrections = CorrectionStore(config.corrections.store_uri)
        adm = config.admission
        self.budget = PixelBudget(adm.max_megapixels, adm.wait_s, adm.retry_after_s)
        self.pipeline = MattingPipeline(
            models, config.routing, self.cache, max_pixels=config.limits.max_pixels,
            versions={m.name: m.checkpoint for m in config.models}, budget=self.budget,
        )

    def params(self, query: MatteParams, fields: dict[str, str]) -> MatteParams:
        """The request's parameters (query string, then multipart fields), checked against the limits and models."""
        return check_against_limits(merge_params(query, fields), self.config.model_names)

    async def record(self, **kwargs: Any) -> str | None:
        """Add a history entry; a storage failure is logged and does not fail the request."""
        try:
            entry = await asyncio.to_thread(self.history.add, **kwargs)
        except Exception:  # noqa: BLE001 - history is best effort for the response
            logger.exception("could not record history")
            return None
        return entry.id

    async def save_correction(self, tenant: str, image: bytes, image_name: str, matte: bytes,
                              history_id: str = "", model: str = "", box: str = "") -> tuple[Correction, int]:
        """Store a corrected matte with its image as training data; returns the record and the
        tenant's count. 4xx for an undecodable file, sizes that differ, or an unknown history entry."""
        if not self.config.corrections.enabled:
            raise ApiError(403, "saving corrections is disabled in this service's config (corrections.enabled)")
        if history_id and await asyncio.to_thread(self.history.get, history_id) is None:
            raise ApiError(422, f"history_id: no history entry {history_id!r}")
        if model and model not in self.config.model_names:
            raise ApiError(422, f"model: unknown model {model!r}; one of {', '.join(self.config.model_names)}")

        def work() -> tuple[Correction, int]:
            try:
                rgb = decode_image(image, name=image_name, max_pixels=self.config.limits.max_pixels)
                alpha = decode_matte(matte, name="alpha", max_pixels=self.config.limits.max_pixels)
            except ImageDecodeError as e:
                raise decode_error_to_api(e) from None
            try:
                rec = self.corrections.add(tenant, rgb, alpha, name=image_name, history_id=history_id, model=model, box=box)
            except CorrectionError as e:
                raise ApiError(422, f"alpha: {e}") from None
            return rec, len(self.corrections.list(tenant))

        return await asyncio.to_thread(work)

    async def entry(self, entry_id: str) -> Entry:
        entry = await asyncio.to_thread(self.history.get, entry_id)
        if entry is None:
            raise ApiError(404, f"no history entry {entry_id!r}")
        return entry

    async def batch_rows(self, files: list, params: MatteParams) -> list[BatchRow]:
        """Every file through the pipeline (``ingress.batch_concurrency`` at a time); a bad file is a logged row."""
        sem = asyncio.Semaphore(self.config.ingress.batch_concurrency)
        used: set[str] = set()
        names = [output_name(f.name, EXTENSIONS[params.format], used) for f in files]

        async def one(f: Any, out_name: str) -> BatchRow:
            async with sem:
                t0 = time.perf_counter()
                try:
                    out = await self.pipeline.matte(f.data, f.name, params)
                except ApiError as e:
                    ms = (time.perf_counter() - t0) * 1000
                    return BatchRow(f.name, "", "error", e.status, "", None, "", round(ms, 1), e.detail)
                except Exception as e:  # noqa: BLE001 - one bad file must not fail the batch
                    logger.exception("batch file %s failed", f.name)
                    ms = (time.perf_counter() - t0) * 1000
                    return BatchRow(f.name, "", "error", 500, "", None, "", round(ms, 1), f"internal error ({type(e).__name__})")
                r = out.result
                return BatchRow(
                    f.name, f"results/{out_name}", "ok", 200, r.model, round(r.brightness, 4),
                    "hit" if out.cache_hit else "miss", round(out.ms, 1), "", r.empty,
                    EMPTY_NOTICE if r.empty else "", r.body,
                )

        return list(await asyncio.gather(*(one(f, n) for f, n in zip(files, names))))
