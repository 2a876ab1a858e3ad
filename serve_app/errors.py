"""HTTP errors as JSON: one exception type, the decode-error mapping, and FastAPI handlers.

Every error a client sees has the shape ``{"error": <code>, "detail": <message>, "status": <int>}``
and a 4xx/5xx status. Unexpected exceptions answer 500 with a reference id; the traceback
goes to the replica's log, never to the client.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from matting_lib.data.decode import (
    EmptyImageError, ImageDecodeError, ImageTooLargeError, UnsupportedImageError,
)

logger = logging.getLogger("ray.serve")

CLIENT_CLOSED = 499
"""Status logged (nginx's convention) for a request whose client hung up before it was read: not a
server error, so one INFO line and no traceback."""

CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error answered to the client as JSON with ``status``."""

    def __init__(self, status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or CODES.get(status, "error")
        self.headers = headers or {}

    def to_json(self) -> dict:
        return {"error": self.code, "detail": self.detail, "status": self.status}


def decode_error_to_api(e: ImageDecodeError) -> ApiError:
    """Map :func:`matting_lib.data.decode.decode_image`'s error classes to statuses.

    too many pixels / decompression bomb -> 413; not an allowed image format or an
    unconvertible mode -> 415; empty -> 400; truncated, corrupt (or any other decode error) -> 400.
    """
    msg = str(e)
    if isinstance(e, ImageTooLargeError):
        return ApiError(413, msg, "too_many_pixels")
    if isinstance(e, UnsupportedImageError):
        return ApiError(415, msg, "not_an_image")
    if isinstance(e, EmptyImageError):
        return ApiError(400, msg, "empty_file")
    return ApiError(400, msg, "corrupt_image")


def error_response(status: int, detail: str, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, detail, code).to_json(), status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """JSON for ApiError, validation errors (422), HTTP errors (404, 405...) and anything unexpected (500);
    a client that hung up mid-request is logged at INFO as 499, not as an error."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        logger.info("%s %s %d: the client disconnected before the request body was read",
                    request.method, request.url.path, CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it; keeps the access log honest

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        logger.exception("unhandled error %s on %s %s", ref, request.method, request.url.path)
        return error_response(500, f"internal error (reference {ref}); see the server log", "internal_error")
