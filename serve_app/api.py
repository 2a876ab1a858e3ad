"""The HTTP API and web UI: FastAPI routes, and the app built from the config. HTTP only.

Every route talks to the replica's :class:`serve_app.service.IngressService` (pipeline, history,
models), which :func:`build_api` puts in ``app.state.service``; authentication is the
app-wide dependency of :mod:`serve_app.auth`, built from the same config. Every response of
``/v1/matte`` names the model and the brightness it measured (``X-Matting-Model``,
``X-Matting-Brightness``) and whether the cache answered (``X-Matting-Cache``). The Serve
deployment that serves this app is :class:`serve_app.ingress.MattingIngress`.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import posixpath
import re
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from matting_lib.routing import MEASURE_SIDE
from matting_lib.data.corrections import tenant_of
from serve_app.auth import api_key_dependency, bearer_token
from serve_app.batch import build_zip
from serve_app.errors import ApiError, install_handlers
from serve_app.params import EXTENSIONS, MAX_SIDE, MatteParams
from serve_app.replica import TRIM_AFTER_PIXELS, checkpoint_label, release_memory
from serve_app.service import EMPTY_NOTICE, IngressService
from serve_app.uploads import MULTIPART_OVERHEAD, expand_batch, parse_upload, read_body

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).resolve().with_name("static")
HINTS_FIELD = "hints"
"""The multipart file field of /v1/matte that carries a hints image (strokes)."""

IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "hints": {"type": "string", "format": "binary", "description": "optional strokes: white keep, "
                              "black remove, grey or transparent no hint; the image's size"},
                },
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


_DOCS_ASSETS = _docs_assets()


def service(request: Request) -> IngressService:
    """The replica's service, as :func:`build_api` stored it on the app."""
    return request.app.state.service


Service = Annotated[IngressService, Depends(service)]

router = APIRouter()
"""The app's routes: pages, probes and the /v1 API."""
docs_router = APIRouter(include_in_schema=False)
"""/docs and /redoc, served from local files (no CDN)."""


def _local_assets(request: Request, **names: str) -> dict[str, str]:
    """``{argument: URL of the local copy}`` for FastAPI's docs page helpers; empty without the
    package (the helpers then keep their CDN defaults)."""
    if _DOCS_ASSETS is None:
        return {}
    root = request.scope.get("root_path", "")
    return {arg: f"{root}{DOCS_ASSETS_URL}/{name}" for arg, name in names.items()}


@docs_router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API docs",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        **_local_assets(request, swagger_js_url="swagger-ui-bundle.js", swagger_css_url="swagger-ui.css",
                        swagger_favicon_url="favicon.png"),
    )


@docs_router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@docs_router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - ReDoc", with_google_fonts=False,
        **_local_assets(request, redoc_js_url="redoc.standalone.js", redoc_favicon_url="favicon.png"),
    )


# --------------------------------------------------------------------------- pages and probes


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/healthz", summary="Liveness: the ingress answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: every model answers and the history database is readable")
async def readyz(svc: Service) -> JSONResponse:
    infos = await svc.models.infos()
    problems = {n: i for n, i in infos.items() if not isinstance(i, dict)}
    try:
        await asyncio.to_thread(svc.history.ping)
    except Exception as e:  # noqa: BLE001
        problems["history"] = f"{type(e).__name__}: {e}"
    body = {"status": "ready" if not problems else "not ready", "models": sorted(infos), "problems": problems}
    return JSONResponse(body, status_code=200 if not problems else 503)


@router.get("/v1/models", summary="Served models: names, checkpoints, metrics, and the routing rule", dependencies=[_only_query()])
async def list_models(svc: Service) -> dict[str, Any]:
    infos = await svc.models.infos()
    r = svc.config.routing
    models = []
    for spec in svc.config.models:
        info = infos.get(spec.name)
        role = "bright" if spec.name == r.bright_model else ("dark" if spec.name == r.dark_model else "forced only")
        if isinstance(info, dict):
            models.append({**info, "checkpoint": checkpoint_label(info["checkpoint"]), "role": role})
        else:
            models.append({"name": spec.name, "role": role, "error": info})
    routing = {
        "threshold": r.threshold,
        "bright_model": r.bright_model,
        "dark_model": r.dark_model,
        "measure": f"mean Rec.601 luma in [0, 1] of a copy downscaled to {MEASURE_SIDE} px on its long side",
    }
    limits = {"max_side": MAX_SIDE, "default_max_side": svc.config.model_deployment.max_side}
    return {"models": models, "routing": routing, "limits": limits}


@router.post(
    "/v1/matte",
    summary="Matte one image",
    description=(
        "Send the image as a multipart file (any field name, e.g. `file`) or as the raw body. "
        "Corrections: `box=x0,y0,x1,y1` (image pixels; outside it the matte is 0) and, in a multipart upload, a file "
        "field `hints`: a PNG of the image's size, white = keep, black = remove, grey or transparent = no hint. "
        "Parameters in the query string (or as multipart text fields). Returns the image; "
        "headers X-Matting-Model, X-Matting-Brightness, X-Matting-Cache (hit/miss), "
        "X-Matting-Checkpoint, X-Matting-Ms, X-Matting-Hints (none, box, strokes or box+strokes: the corrections applied), "
        "X-Matting-Refine (the refinement mode that ran), X-Matting-Prior (true when "
        "the ImageNet subject prior found the subject the network missed), X-Matting-History-Id, X-Matting-Empty (true when the model found "
        "no subject: under 0.5% of pixels have alpha >= 0.5; then X-Matting-Notice says so), and Server-Timing (ms per stage: "
        "upload (reading and parsing the request body), key, admit (waiting for room in the replica's budget of "
        "megapixels in flight; past `admission.wait_s` the answer is 503 `overloaded` with Retry-After), decode, model (the call to the model replica), "
        "forward (its forward pass), encode, and total from the cache lookup to the encoded result)."
    ),
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
    openapi_extra={"requestBody": IMAGE_BODY},
)
async def matte(svc: Service, request: Request, query: Annotated[MatteParams, Query()]) -> Response:
    limits = svc.config.limits
    t_request = time.perf_counter()
    body = await read_body(request, limits.max_upload_bytes + MULTIPART_OVERHEAD, limits.body_timeout_s, limits.body_total_timeout_s)
    upload = await parse_upload(request, body, max_files=2)
    upload_ms = (time.perf_counter() - t_request) * 1000
    params = svc.params(query, upload.fields)
    images = [u for u in upload.files if u.field != HINTS_FIELD]
    hints = next((u.data for u in upload.files if u.field == HINTS_FIELD), None)
    if not images:
        raise ApiError(400, "no image in the request: send a multipart file or the image as the body", "no_image")
    if len(images) > 1:
        raise ApiError(400, f"{len(images)} images in one request: /v1/matte takes one (and optionally a "
                            f"'{HINTS_FIELD}' file); use /v1/batch for several")
    f = images[0]
    for what, data in (("image", f.data), ("hints image", hints)):
        if data is not None and len(data) > limits.max_upload_bytes:
            raise ApiError(413, f"{what} is {len(data) / 1e6:.1f} MB, the limit is {limits.max_upload_mb:g} MB")
    del body, upload
    out = await svc.pipeline.matte(f.data, f.name, params, hints)
    res = out.result
    if res.width * res.height >= TRIM_AFTER_PIXELS:
        await asyncio.to_thread(release_memory)  # the decoded image and its matte are gone: give their memory back
    ext = EXTENSIONS[params.format]
    headers = {
        "X-Matting-Empty": "true" if res.empty else "false",
        "X-Matting-Model": res.model,
        "X-Matting-Brightness": f"{res.brightness:.4f}",
        "X-Matting-Cache": "hit" if out.cache_hit else "miss",
        "X-Matting-Checkpoint": checkpoint_label(res.checkpoint),
        "X-Matting-Ms": f"{out.ms:.1f}",
        "X-Matting-Refine": res.refine,
        "X-Matting-Prior": "true" if res.prior else "false",
        "X-Matting-Hints": res.hints,
        "Server-Timing": server_timing({"upload": upload_ms, **out.timings, "total": out.ms}),
        "Content-Disposition": _disposition("inline", _stem(f.name), f"-matte.{ext}"),
    }
    if res.empty:
        headers["X-Matting-Notice"] = EMPTY_NOTICE
    if params.history:
        entry_id = await svc.record(
            kind="image", name=f.name, model=res.model, brightness=res.brightness,
            params={**params.model_dump(), "hints": res.hints},
            width=res.width, height=res.height, media_type=res.media_type, ext=ext, body=res.body,
            thumbnail_source=res.body,
        )
        if entry_id:
            headers["X-Matting-History-Id"] = entry_id
    return Response(res.body, media_type=res.media_type, headers=headers)


@router.post(
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
async def batch(svc: Service, request: Request, query: Annotated[MatteParams, Query()]) -> Response:
    limits = svc.config.limits
    body = await read_body(request, limits.max_batch_upload_bytes + MULTIPART_OVERHEAD, limits.body_timeout_s, limits.body_total_timeout_s)
    upload = await parse_upload(request, body, max_files=limits.max_batch_files)
    params = svc.params(query, upload.fields)
    files = expand_batch(upload.files, limits.max_batch_files, limits.max_upload_bytes, limits.max_zip_total_bytes)
    t0 = time.perf_counter()
    rows = await svc.batch_rows(files, params)
    if rows and all(r.http_status == 503 for r in rows):  # the budget refused every file: say so as a whole
        adm = svc.config.admission
        raise ApiError(503, f"the server is busy: none of the {len(rows)} files was admitted within {adm.wait_s:g} s "
                            f"(retry after {adm.retry_after_s} s)", "overloaded",
                       headers={"Retry-After": str(adm.retry_after_s)})
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
        entry_id = await svc.record(
            kind="batch", name=f"{len(rows)} files", model=",".join(models), brightness=None,
            params=params.model_dump(), width=None, height=None, media_type="application/zip", ext="zip",
            body=archive, thumbnail_source=ok[0].body if ok else None,
            summary={"files": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "empty": empty},
        )
        if entry_id:
            headers["X-Matting-History-Id"] = entry_id
    return Response(archive, media_type="application/zip", headers=headers)


@router.get("/v1/history", summary="History, newest first (paginated)", dependencies=[_only_query("limit", "offset")])
async def history_list(
    svc: Service,
    limit: Annotated[int, Query(ge=1, le=100, description="Entries per page.")] = 20,
    offset: Annotated[int, Query(ge=0, description="Entries to skip.")] = 0,
) -> dict[str, Any]:
    entries, total = await asyncio.to_thread(svc.history.list, limit, offset)
    nxt = offset + len(entries)
    return {
        "items": [e.to_json() for e in entries],
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": nxt if nxt < total else None,
    }


@router.get("/v1/history/{entry_id}", summary="One history entry", dependencies=[_only_query()])
async def history_get(svc: Service, entry_id: str) -> dict[str, Any]:
    return (await svc.entry(entry_id)).to_json()


@router.get("/v1/history/{entry_id}/result", summary="Download a history entry's result again", response_class=Response, dependencies=[_only_query()])
async def history_result(svc: Service, entry_id: str) -> Response:
    entry = await svc.entry(entry_id)
    try:
        data = await asyncio.to_thread(svc.history.read_result, entry)
    except FileNotFoundError:
        raise ApiError(404, f"the result file of {entry_id} is gone from the store") from None
    if entry.kind == "image":
        disposition = _disposition("attachment", _stem(entry.name), f"-matte.{entry.ext}")
    else:
        disposition = _disposition("attachment", f"mattes-{entry.id[:8]}", ".zip")
    return Response(data, media_type=entry.media_type, headers={"Content-Disposition": disposition})


@router.get("/v1/history/{entry_id}/thumbnail", summary="A history entry's thumbnail (PNG)", response_class=Response, dependencies=[_only_query()])
async def history_thumbnail(svc: Service, entry_id: str) -> Response:
    entry = await svc.entry(entry_id)
    data = await asyncio.to_thread(svc.history.read_thumbnail, entry)
    if data is None:
        raise ApiError(404, f"history entry {entry_id} has no thumbnail")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@router.delete("/v1/history/{entry_id}", summary="Delete a history entry and its files", dependencies=[_only_query()])
async def history_delete(svc: Service, entry_id: str) -> dict[str, Any]:
    entry = await svc.entry(entry_id)
    await asyncio.to_thread(svc.history.delete, entry.id)
    return {"deleted": entry.id}


CORRECTIONS_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "the image, as sent to /v1/matte"},
                    "alpha": {"type": "string", "format": "binary", "description": "the corrected matte, the image's "
                              "size: its alpha channel when it has one (a cut-out), else its grey values"},
                    "history_id": {"type": "string", "description": "X-Matting-History-Id of the corrected result"},
                    "model": {"type": "string"},
                    "box": {"type": "string"},
                },
                "required": ["file", "alpha"],
            }
        }
    },
}
CORRECTION_FIELDS = ("history_id", "model", "box")


def tenant(request: Request) -> str:
    """Whose corrections these are: a hash of the request's API key (``public`` without one)."""
    return tenant_of(bearer_token(request) if service(request).config.resolve_api_key() else "")


@router.post(
    "/v1/corrections",
    summary="Save a corrected matte with its image as training data",
    description=(
        "Multipart: the image as file field `file`, the corrected matte as file field `alpha` (same size; its alpha "
        "channel when it has one, else its grey values), optional text fields `history_id`, `model`, `box`. Stored in "
        "the seed format under the service's corrections store, in the folder of the request's API key (its tenant), "
        "for `python -m ray_jobs.learn_corrections`. Answers 201 {id, tenant, count}."
    ),
    status_code=201,
    openapi_extra={"requestBody": CORRECTIONS_BODY},
    dependencies=[_only_query()],
)
async def save_correction(svc: Service, request: Request) -> dict[str, Any]:
    limits = svc.config.limits
    body = await read_body(request, 2 * limits.max_upload_bytes + MULTIPART_OVERHEAD, limits.body_timeout_s, limits.body_total_timeout_s)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(400, "send multipart/form-data with file fields 'file' (the image) and 'alpha' (the matte)")
    upload = await parse_upload(request, body, max_files=2)
    files = {f.field: f for f in upload.files}
    missing = [k for k in ("file", "alpha") if k not in files]
    if missing:
        raise ApiError(400, f"missing file field(s) {', '.join(missing)}: send 'file' (the image) and 'alpha' (the matte)")
    unknown = sorted(set(upload.fields) - set(CORRECTION_FIELDS))
    if unknown:
        raise ApiError(422, f"{unknown[0]}: unknown field (accepted: {', '.join(CORRECTION_FIELDS)})")
    for f in files.values():
        if len(f.data) > limits.max_upload_bytes:
            raise ApiError(413, f"{f.field} is {len(f.data) / 1e6:.1f} MB, the limit is {limits.max_upload_mb:g} MB")
    who = tenant(request)
    rec, count = await svc.save_correction(
        who, files["file"].data, files["file"].name, files["alpha"].data,
        history_id=upload.fields.get("history_id", ""), model=upload.fields.get("model", ""), box=upload.fields.get("box", ""),
    )
    return {"id": rec.id, "tenant": who, "count": count}


@router.get("/v1/corrections", summary="This API key's saved corrections, newest first", dependencies=[_only_query("limit")])
async def list_corrections(
    svc: Service, request: Request,
    limit: Annotated[int, Query(ge=1, le=1000, description="Entries listed (the count is of all).")] = 100,
) -> dict[str, Any]:
    who = tenant(request)
    items = await asyncio.to_thread(svc.corrections.list, who)
    return {"tenant": who, "count": len(items), "items": [c.to_json() for c in items[:limit]]}


@router.get("/v1/stats", summary="This ingress replica's counters: cache, model calls, admission budget; the history's size", dependencies=[_only_query()])
async def stats(svc: Service) -> dict[str, Any]:
    history = await asyncio.to_thread(svc.history.usage)
    return {"cache": svc.cache.stats(), "model_calls": svc.models.calls, "model_retries": svc.models.retries,
            "admission": svc.budget.stats(), "history": history}


def build_api(svc: IngressService) -> FastAPI:
    """The FastAPI app of one ingress replica: the routes, the API-key dependency of ``svc.config``,
    JSON errors, the web UI's static files and the offline docs."""
    app = FastAPI(
        dependencies=[api_key_dependency(svc.config)],
        docs_url=None,  # served by docs_router from local files, not a CDN
        redoc_url=None,
        title="Universal matting",
        version="1.0",
        description=(
            "Alpha mattes for photos, routed by brightness to the base or the low-light model. "
            "Errors are JSON: {error, detail, status}. When an API key is configured, every /v1 route "
            "needs `Authorization: Bearer <key>`."
        ),
    )
    app.state.service = svc
    install_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if _DOCS_ASSETS is not None:
        app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_DOCS_ASSETS), name="static-docs")
    app.include_router(docs_router)
    app.include_router(router)
    return app
