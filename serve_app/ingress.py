"""The HTTP ingress: FastAPI routes, brightness routing, post-processing, cache, history, web UI.

Per image: read the body (bounded) -> cache lookup (content hash) -> decode (bounded pixels)
-> measure brightness and pick a model (:class:`matting_lib.routing.BrightnessRouter`, or the
model the request forces) -> the model deployment's batched ``predict`` -> the seeds'
post-processing (:func:`matting_lib.postprocess.apply`) -> cache, history, response.
CPU work (hashing, decoding, post-processing, zips, SQLite) runs in worker threads so the
event loop keeps serving. Every response names the model and the brightness it measured
(``X-Matting-Model``, ``X-Matting-Brightness``) and whether the cache answered (``X-Matting-Cache``).
"""


import asyncio
import hmac
import importlib.resources
import logging
import posixpath
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Awaitable

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from matting_lib import postprocess
from matting_lib.data.decode import ImageDecodeError, decode_image
from matting_lib.routing import MEASURE_SIDE, BrightnessRouter, measure_brightness
from serve_app.batch import BatchRow, build_zip
from serve_app.cache import CachedResult, ResultCache
from serve_app.config import ServeConfig
from serve_app.errors import ApiError, decode_error_to_api, install_handlers
from serve_app.history import Entry, History
from serve_app.model import TRIM_AFTER_PIXELS, MattingModel, parse_ingress_user_config, release_memory
from serve_app.params import EXTENSIONS, MAX_SIDE, MEDIA_TYPES, MatteParams, check_against_limits, content_key, merge_params
from serve_app.uploads import MULTIPART_OVERHEAD, expand_batch, output_name, parse_upload, read_body

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).resolve().with_name("static")
VERSION_TTL_S = 2.0
"""How often the ingress re-reads which checkpoint each model serves (for cache keys)."""
INFO_TIMEOUT_S = 5.0

IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
BATCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
    },
}

DOCS_ASSETS_URL = "/static-docs"
"""Where Swagger UI's and ReDoc's scripts are served from: the files of the ``fastapi-offline``
package, so ``/docs`` and ``/redoc`` work on a machine without internet (FastAPI's defaults load them from a CDN)."""
EMPTY_NOTICE = "No subject found: the matte is empty (under 0.5% of pixels are foreground)"
"""``X-Matting-Notice`` of an empty result (:func:`matting_lib.postprocess.is_empty_matte`)."""


def _docs_assets() -> Path | None:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png
    (None when the ``fastapi-offline`` package is missing: the pages then load them from a CDN)."""
    try:
        return Path(str(importlib.resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        logger.warning("fastapi-offline is not installed: /docs and /redoc load their scripts from a CDN")
        return None


def _only_query(*names: str):
    """A route dependency: 422 ``invalid_parameter`` for any query parameter not in ``names``
    (unknown parameters are refused everywhere, as on /v1/matte and /v1/batch)."""

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(names))
        if unknown:
            accepted = f"accepted: {', '.join(names)}" if names else "this route takes none"
            raise ApiError(422, f"{unknown[0]}: unknown parameter ({accepted})")

    return Depends(check)


async def _require_api_key(request: Request) -> None:
    """The app-wide first dependency: a /v1 request without the key gets 401 before any of its
    parameters is parsed or validated (route parameters would otherwise answer 422 first).
    Every /v1 route, including any added later, goes through it."""
    if request.url.path.startswith("/v1"):
        serve.get_replica_context().servable_object._authorize(request)


app = FastAPI(
    dependencies=[Depends(_require_api_key)],
    docs_url=None,  # served below from local files, not a CDN
    redoc_url=None,
    title="Universal matting",
    version="1.0",
    description=(
        "Alpha mattes for photos, routed by brightness to the base or the low-light model. "
        "Errors are JSON: {error, detail, status}. When an API key is configured, every /v1 route "
        "needs `Authorization: Bearer <key>`."
    ),
)
install_handlers(app)
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
_DOCS_ASSETS = _docs_assets()
if _DOCS_ASSETS is not None:
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_DOCS_ASSETS), name="static-docs")


def _local_assets(request: Request, **names: str) -> dict[str, str]:
    """``{argument: URL of the local copy}`` for FastAPI's docs page helpers; empty without the
    package (the helpers then keep their CDN defaults)."""
    if _DOCS_ASSETS is None:
        return {}
    root = request.scope.get("root_path", "")
    return {arg: f"{root}{DOCS_ASSETS_URL}/{name}" for arg, name in names.items()}


@app.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        **_local_assets(request, swagger_js_url="swagger-ui-bundle.js", swagger_css_url="swagger-ui.css",
                        swagger_favicon_url="favicon.png"),
    )


@app.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@app.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc", with_google_fonts=False,
        **_local_assets(request, redoc_js_url="redoc.standalone.js", redoc_favicon_url="favicon.png"),
    )


@dataclass(frozen=True)
class Outcome:
    """One image's result and how it was obtained."""

    result: CachedResult
    cache_hit: bool
    ms: float
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage (key, decode, model, forward, encode), as far as it got."""


def server_timing(stages: dict[str, float]) -> str:
    """A ``Server-Timing`` header value (RFC: ``name;dur=ms`` metrics, comma-separated)."""
    return ", ".join(f"{k};dur={v:.1f}" for k, v in stages.items())


def parse_server_timing(header: str) -> dict[str, float]:
    """``"decode;dur=5.1, model;dur=60.2"`` -> ``{"decode": 5.1, "model": 60.2}``; metrics
    without a numeric ``dur`` are left out."""
    out: dict[str, float] = {}
    for metric in header.split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip() == "dur":
                try:
                    out[name] = float(value.strip().strip('"'))
                except ValueError:
                    pass
    return out


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> Any:
    """Await a Serve response with a time limit."""

    async def wait() -> Any:
        return await awaitable

    return await asyncio.wait_for(wait(), timeout)


def _decode_and_measure(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, float]:
    try:
        rgb = decode_image(data, name=name, max_pixels=max_pixels)
    except ImageDecodeError as e:
        raise decode_error_to_api(e) from None
    return rgb, measure_brightness(rgb)


def _stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name))[0] or "image"


def _disposition(kind: str, stem: str, suffix: str) -> str:
    """A Content-Disposition header for a download named ``stem + suffix`` (``stem`` comes from the client).

    The quoted ``filename`` is ASCII letters, digits, '.', '_' and '-' only ('image' if nothing is left),
    so no client name can break the header or fail Latin-1 encoding; the exact name follows as RFC 6266
    ``filename*`` (UTF-8, percent-encoded) when it differs.
    """
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    header = f'{kind}; filename="{plain}{suffix}"'
    if plain != stem:
        header += f"; filename*=UTF-8''{urllib.parse.quote(stem + suffix, safe='')}"
    return header


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(app)
class MattingIngress:
    """The ingress deployment; ``models`` maps each model name to its deployment's handle, or is
    None when the models run in this replica (``model_deployment.placement: ingress``)."""

    def __init__(self, config: ServeConfig, models: dict[str, DeploymentHandle] | None):
        self.config = config
        self.models = models or {}
        self.local: dict[str, Any] = {}
        """In-process models (``placement: ingress``): the model deployment's class, instantiated here."""
        if models is None:
            md = config.model_deployment
            self.local = {
                spec.name: MattingModel.func_or_class(spec.name, spec.checkpoint, md, spec.backend) for spec in config.models
            }
        r = config.routing
        self.router = BrightnessRouter(threshold=r.threshold, bright_model=r.bright_model, dark_model=r.dark_model)
        self.cache = ResultCache(int(config.cache.max_mb * 1_000_000))
        self.history = History(config.history)
        self.api_key = config.resolve_api_key()
        self.versions: dict[str, str] = {m.name: m.checkpoint for m in config.models}
        self.versions_checked = 0.0
        self.model_calls = 0
        self.model_retries = 0

    # ------------------------------------------------------------------ helpers
    def _authorize(self, request: Request) -> None:
        """401 unless the request carries ``Authorization: Bearer <key>`` (when a key is configured)."""
        if not self.api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Hot swap of in-process models: ``{"checkpoints": {name: URI}}`` (``placement: ingress``).

        Each named model swaps as a model deployment does (:meth:`MattingModel.reconfigure`): a
        checkpoint that does not load leaves the old one serving and shows as ``swap_error``.
        """
        placement = self.config.model_deployment.placement
        checkpoints = parse_ingress_user_config(user_config, self.config.model_names, placement)
        for name, uri in checkpoints.items():
            await self.local[name].reconfigure({"checkpoint": uri})

    async def _model_infos(self) -> dict[str, dict[str, Any] | str]:
        """Each model's ``info()`` (a dict), or the error text when it does not answer."""
        if self.local:
            return {name: m.info() for name, m in self.local.items()}

        async def one(name: str, handle: DeploymentHandle) -> tuple[str, dict[str, Any] | str]:
            try:
                return name, await _bounded(handle.info.remote(), INFO_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - reported per model
                return name, f"{type(e).__name__}: {e}".splitlines()[0]

        return dict(await asyncio.gather(*(one(n, h) for n, h in self.models.items())))

    async def _refresh_versions(self) -> None:
        if time.monotonic() - self.versions_checked < VERSION_TTL_S:
            return
        self.versions_checked = time.monotonic()
        for name, info in (await self._model_infos()).items():
            if isinstance(info, dict):
                self.versions[name] = info["checkpoint"]

    async def _call_model(self, model: str, rgb: np.ndarray, max_side: int | None) -> dict[str, Any]:
        """The model's answer; a replica that died is retried (matting is idempotent)."""
        timeout = self.config.ingress.model_timeout_s
        if self.local:
            return await self._call_local(model, rgb, max_side, timeout)
        handle = self.models[model]
        retries = self.config.ingress.model_retries
        for attempt in range(retries + 1):
            self.model_calls += 1
            try:
                return await _bounded(handle.predict.remote((rgb, max_side)), timeout)
            except asyncio.TimeoutError:
                raise ApiError(504, f"model {model!r} did not answer within {timeout:g} s") from None
            except BackPressureError:
                raise ApiError(503, f"model {model!r} is overloaded; retry later") from None
            except (RayActorError, ActorUnavailableError, DeploymentUnavailableError) as e:
                if attempt == retries:
                    raise ApiError(503, f"model {model!r} is unavailable ({type(e).__name__}); retry later") from None
                self.model_retries += 1
                logger.warning("model %s call failed (%s); retrying", model, type(e).__name__)
            except RayTaskError as e:
                logger.error("model %s failed: %s", model, e)
                raise ApiError(500, f"model {model!r} failed ({type(e.cause).__name__}); see the server log") from None
        raise AssertionError("unreachable")

    async def _call_local(self, model: str, rgb: np.ndarray, max_side: int | None, timeout: float) -> dict[str, Any]:
        """An in-process model's answer (``placement: ingress``), with the same errors as a remote one."""
        self.model_calls += 1
        try:
            return await asyncio.wait_for(self.local[model].predict((rgb, max_side)), timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"model {model!r} did not answer within {timeout:g} s") from None
        except Exception as e:  # noqa: BLE001 - a failed forward pass is this request's 500, logged
            logger.exception("model %s failed", model)
            raise ApiError(500, f"model {model!r} failed ({type(e).__name__}); see the server log") from None

    async def _matte(self, data: bytes, name: str, params: MatteParams) -> Outcome:
        """One image through cache, decode, routing, model and post-processing."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = (now - since) * 1000
            return now

        await self._refresh_versions()
        key = await asyncio.to_thread(content_key, data, params, dict(self.versions))
        t = lap("key", t0)
        hit = self.cache.get(key)
        if hit is not None:
            return Outcome(hit, True, (time.perf_counter() - t0) * 1000, timings)
        rgb, brightness = await asyncio.to_thread(_decode_and_measure, data, name, self.config.limits.max_pixels)
        t = lap("decode", t)
        model = self.router.pick(brightness) if params.model == "auto" else params.model
        answer = await self._call_model(model, rgb, params.max_side)
        t = lap("model", t)
        if "forward_ms" in answer:
            timings["forward"] = answer["forward_ms"]
        try:
            body = await asyncio.to_thread(postprocess.apply, rgb, answer["alpha"], params.postprocess())
        except ValueError as e:
            raise ApiError(422, str(e)) from None
        lap("encode", t)
        result = CachedResult(
            body=body, media_type=MEDIA_TYPES[params.format], model=model, brightness=brightness,
            checkpoint=answer["checkpoint"], width=rgb.shape[1], height=rgb.shape[0],
            empty=await asyncio.to_thread(postprocess.is_empty_matte, answer["alpha"]),
        )
        if answer["checkpoint"] != self.versions.get(model):  # swapped since the key was made
            self.versions[model] = answer["checkpoint"]
            key = await asyncio.to_thread(content_key, data, params, dict(self.versions))
        self.cache.put(key, result)
        return Outcome(result, False, (time.perf_counter() - t0) * 1000, timings)

    def _params(self, query: MatteParams, fields: dict[str, str]) -> MatteParams:
        params = merge_params(query, fields)
        check_against_limits(params, self.config.model_names)
        return params

    async def _record(self, **kwargs: Any) -> str | None:
        """Add a history entry; a storage failure is logged and does not fail the request."""
        try:
            entry = await asyncio.to_thread(self.history.add, **kwargs)
        except Exception:  # noqa: BLE001 - history is best effort for the response
            logger.exception("could not record history")
            return None
        return entry.id

    # ------------------------------------------------------------------ pages and probes
    @app.get("/", include_in_schema=False)
    async def index(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz", summary="Liveness: the ingress answers")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: every model answers and the history database is readable")
    async def readyz(self) -> JSONResponse:
        infos = await self._model_infos()
        problems = {n: i for n, i in infos.items() if not isinstance(i, dict)}
        try:
            await asyncio.to_thread(self.history.ping)
        except Exception as e:  # noqa: BLE001
            problems["history"] = f"{type(e).__name__}: {e}"
        body = {"status": "ready" if not problems else "not ready", "models": sorted(infos), "problems": problems}
        return JSONResponse(body, status_code=200 if not problems else 503)

    def check_health(self) -> None:
        self.history.ping()
        for m in self.local.values():
            m.check_health()

    # ------------------------------------------------------------------ API
    @app.get("/v1/models", summary="Served models: names, checkpoints, metrics, and the routing rule", dependencies=[_only_query()])
    async def list_models(self) -> dict[str, Any]:
        infos = await self._model_infos()
        r = self.config.routing
        models = []
        for spec in self.config.models:
            info = infos.get(spec.name)
            role = "bright" if spec.name == r.bright_model else ("dark" if spec.name == r.dark_model else "forced only")
            if isinstance(info, dict):
                models.append({**info, "role": role})
            else:
                models.append({"name": spec.name, "role": role, "error": info})
        routing = {
            "threshold": r.threshold,
            "bright_model": r.bright_model,
            "dark_model": r.dark_model,
            "measure": f"mean Rec.601 luma in [0, 1] of a copy downscaled to {MEASURE_SIDE} px on its long side",
        }
        limits = {"max_side": MAX_SIDE, "default_max_side": self.config.model_deployment.max_side}
        return {"models": models, "routing": routing, "limits": limits}

    @app.post(
        "/v1/matte",
        summary="Matte one image",
        description=(
            "Send the image as a multipart file (any field name, e.g. `file`) or as the raw body. "
            "Parameters in the query string (or as multipart text fields). Returns the image; "
            "headers X-Matting-Model, X-Matting-Brightness, X-Matting-Cache (hit/miss), "
            "X-Matting-Checkpoint, X-Matting-Ms, X-Matting-History-Id, X-Matting-Empty (true when the model found "
            "no subject: under 0.5% of pixels have alpha >= 0.5; then X-Matting-Notice says so), and Server-Timing (ms per stage: "
            "upload (reading and parsing the request body), key, decode, model (the call to the model replica), "
            "forward (its forward pass), encode, and total from the cache lookup to the encoded result)."
        ),
        response_class=Response,
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
        openapi_extra={"requestBody": IMAGE_BODY},
    )
    async def matte(self, request: Request, query: Annotated[MatteParams, Query()]) -> Response:
        limits = self.config.limits
        t_request = time.perf_counter()
        body = await read_body(request, limits.max_upload_bytes + MULTIPART_OVERHEAD, limits.body_timeout_s)
        upload = await parse_upload(request, body, max_files=1)
        upload_ms = (time.perf_counter() - t_request) * 1000
        params = self._params(query, upload.fields)
        if not upload.files:
            raise ApiError(400, "no image in the request: send a multipart file or the image as the body", "no_image")
        f = upload.files[0]
        if len(f.data) > limits.max_upload_bytes:
            raise ApiError(413, f"image is {len(f.data) / 1e6:.1f} MB, the limit is {limits.max_upload_mb:g} MB")
        del body, upload
        out = await self._matte(f.data, f.name, params)
        res = out.result
        if res.width * res.height >= TRIM_AFTER_PIXELS:
            await asyncio.to_thread(release_memory)  # the decoded image and its matte are gone: give their memory back
        ext = EXTENSIONS[params.format]
        headers = {
            "X-Matting-Empty": "true" if res.empty else "false",
            "X-Matting-Model": res.model,
            "X-Matting-Brightness": f"{res.brightness:.4f}",
            "X-Matting-Cache": "hit" if out.cache_hit else "miss",
            "X-Matting-Checkpoint": res.checkpoint,
            "X-Matting-Ms": f"{out.ms:.1f}",
            "Server-Timing": server_timing({"upload": upload_ms, **out.timings, "total": out.ms}),
            "Content-Disposition": _disposition("inline", _stem(f.name), f"-matte.{ext}"),
        }
        if res.empty:
            headers["X-Matting-Notice"] = EMPTY_NOTICE
        if params.history:
            entry_id = await self._record(
                kind="image", name=f.name, model=res.model, brightness=res.brightness, params=params.model_dump(),
                width=res.width, height=res.height, media_type=res.media_type, ext=ext, body=res.body,
                thumbnail_source=res.body,
            )
            if entry_id:
                headers["X-Matting-History-Id"] = entry_id
        return Response(res.body, media_type=res.media_type, headers=headers)

    @app.post(
        "/v1/batch",
        summary="Matte several images (files or a zip) into one zip with a per-file log",
        description=(
            "Send multipart files (any field names; a .zip among them is expanded) or a zip as the raw body. "
            "Returns a zip: results/<name>.<ext> per image plus log.csv and log.json (file, output, status, "
            "http_status, model, brightness, cache, ms, error, empty, notice; empty is true where the model found no "
            "subject). A bad file is logged, not fatal. Headers X-Matting-Files, X-Matting-Failed, X-Matting-Empty (counts)."
        ),
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}}},
        openapi_extra={"requestBody": BATCH_BODY},
    )
    async def batch(self, request: Request, query: Annotated[MatteParams, Query()]) -> Response:
        limits = self.config.limits
        body = await read_body(request, limits.max_batch_upload_bytes + MULTIPART_OVERHEAD, limits.body_timeout_s)
        upload = await parse_upload(request, body, max_files=limits.max_batch_files)
        params = self._params(query, upload.fields)
        files = expand_batch(upload.files, limits.max_batch_files, limits.max_upload_bytes, limits.max_zip_total_bytes)
        t0 = time.perf_counter()
        rows = await self._batch_rows(files, params)
        archive = await asyncio.to_thread(build_zip, rows)
        ok = [r for r in rows if r.status == "ok"]
        empty = sum(bool(r.empty) for r in ok)
        await asyncio.to_thread(release_memory)  # a batch decodes many images: give their memory back
        headers = {
            "X-Matting-Files": str(len(rows)),
            "X-Matting-Failed": str(len(rows) - len(ok)),
            "X-Matting-Empty": str(empty),
            "X-Matting-Ms": f"{(time.perf_counter() - t0) * 1000:.1f}",
            "Content-Disposition": 'attachment; filename="mattes.zip"',
        }
        if params.history:
            models = sorted({r.model for r in ok})
            entry_id = await self._record(
                kind="batch", name=f"{len(rows)} files", model=",".join(models), brightness=None,
                params=params.model_dump(), width=None, height=None, media_type="application/zip", ext="zip",
                body=archive, thumbnail_source=ok[0].body if ok else None,
                summary={"files": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "empty": empty},
            )
            if entry_id:
                headers["X-Matting-History-Id"] = entry_id
        return Response(archive, media_type="application/zip", headers=headers)

    async def _batch_rows(self, files: list, params: MatteParams) -> list[BatchRow]:
        sem = asyncio.Semaphore(self.config.ingress.batch_concurrency)
        used: set[str] = set()
        names = [output_name(f.name, EXTENSIONS[params.format], used) for f in files]

        async def one(f: Any, out_name: str) -> BatchRow:
            async with sem:
                t0 = time.perf_counter()
                try:
                    out = await self._matte(f.data, f.name, params)
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

    @app.get("/v1/history", summary="History, newest first (paginated)", dependencies=[_only_query("limit", "offset")])
    async def history_list(
        self,
        limit: Annotated[int, Query(ge=1, le=100, description="Entries per page.")] = 20,
        offset: Annotated[int, Query(ge=0, description="Entries to skip.")] = 0,
    ) -> dict[str, Any]:
        entries, total = await asyncio.to_thread(self.history.list, limit, offset)
        nxt = offset + len(entries)
        return {
            "items": [e.to_json() for e in entries],
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_offset": nxt if nxt < total else None,
        }

    async def _entry(self, entry_id: str) -> Entry:
        entry = await asyncio.to_thread(self.history.get, entry_id)
        if entry is None:
            raise ApiError(404, f"no history entry {entry_id!r}")
        return entry

    @app.get("/v1/history/{entry_id}", summary="One history entry", dependencies=[_only_query()])
    async def history_get(self, entry_id: str) -> dict[str, Any]:
        return (await self._entry(entry_id)).to_json()

    @app.get("/v1/history/{entry_id}/result", summary="Download a history entry's result again", response_class=Response, dependencies=[_only_query()])
    async def history_result(self, entry_id: str) -> Response:
        entry = await self._entry(entry_id)
        try:
            data = await asyncio.to_thread(self.history.read_result, entry)
        except FileNotFoundError:
            raise ApiError(404, f"the result file of {entry_id} is gone from the store") from None
        if entry.kind == "image":
            disposition = _disposition("attachment", _stem(entry.name), f"-matte.{entry.ext}")
        else:
            disposition = _disposition("attachment", f"mattes-{entry.id[:8]}", ".zip")
        return Response(data, media_type=entry.media_type, headers={"Content-Disposition": disposition})

    @app.get("/v1/history/{entry_id}/thumbnail", summary="A history entry's thumbnail (PNG)", response_class=Response, dependencies=[_only_query()])
    async def history_thumbnail(self, entry_id: str) -> Response:
        entry = await self._entry(entry_id)
        data = await asyncio.to_thread(self.history.read_thumbnail, entry)
        if data is None:
            raise ApiError(404, f"history entry {entry_id} has no thumbnail")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.delete("/v1/history/{entry_id}", summary="Delete a history entry and its files", dependencies=[_only_query()])
    async def history_delete(self, entry_id: str) -> dict[str, Any]:
        entry = await self._entry(entry_id)
        await asyncio.to_thread(self.history.delete, entry.id)
        return {"deleted": entry.id}

    @app.get("/v1/stats", summary="This ingress replica's counters: cache and model calls", dependencies=[_only_query()])
    async def stats(self) -> dict[str, Any]:
        return {"cache": self.cache.stats(), "model_calls": self.model_calls, "model_retries": self.model_retries}
