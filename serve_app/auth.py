"""API-key authentication of the /v1 routes, as a FastAPI dependency built from the app's config.

    app = FastAPI(dependencies=[api_key_dependency(config)])

It is the app-wide first dependency: a /v1 request without the key gets 401 before any of its
parameters is parsed or validated (route parameters would otherwise answer 422 first), and
every /v1 route, including any added later, goes through it. Pages, probes and the docs stay
open. No Serve here: the key comes from :meth:`serve_app.config.ServeConfig.resolve_api_key`.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam

from serve_app.config import ServeConfig
from serve_app.errors import ApiError

PROTECTED_PREFIX = "/v1"
"""Paths under this prefix need the key (when one is configured)."""


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ('' without one)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class ApiKeyAuth:
    """401 unless a /v1 request carries ``Authorization: Bearer <key>``; open when ``api_key`` is empty."""

    def __init__(self, api_key: str = "") -> None:
        self.api_key = api_key

    @classmethod
    def from_config(cls, config: ServeConfig) -> "ApiKeyAuth":
        """The key in force for ``config``: its ``api_key``, else the ``api_key_env`` variable of this process."""
        return cls(config.resolve_api_key())

    def check(self, request: Request) -> None:
        """Raise :class:`ApiError` 401 when ``request`` needs the key and lacks it."""
        if not self.api_key or not request.url.path.startswith(PROTECTED_PREFIX):
            return
        token = bearer_token(request)
        if not token or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )

    async def __call__(self, request: Request) -> None:
        self.check(request)


def api_key_dependency(config: ServeConfig) -> DependsParam:
    """``Depends(...)`` for a FastAPI app's ``dependencies``: the API-key check of ``config``."""
    return Depends(ApiKeyAuth.from_config(config))
