"""How the ingress reaches its models: Serve deployment handles, or the models in its own replica.

:class:`ModelClient` gives both placements one interface (``call``, ``infos``) with the same
errors: a replica that died is retried (matting is idempotent), a timeout is 504, an overloaded
or unavailable model 503, a failed forward pass 500. This is the one Ray-aware piece between the
HTTP routes and the plain :class:`serve_app.pipeline.MattingPipeline`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

import numpy as np
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from matting_lib.resize import KEEP, MaxSide
from serve_app.config import ServeConfig
from serve_app.errors import ApiError

logger = logging.getLogger("ray.serve")

INFO_TIMEOUT_S = 5.0
"""How long /readyz and /v1/models wait for a model's ``info()``."""


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> Any:
    """Await a Serve response with a time limit."""

    async def wait() -> Any:
        return await awaitable

    return await asyncio.wait_for(wait(), timeout)


def refused(answer: dict[str, Any]) -> dict[str, Any]:
    """A model's answer, or the 422 it asks for (``{"error": "<parameter>: ..."}``: a ``refine`` mode it
    cannot run, hints that do not fit the image)."""
    if "error" in answer:
        raise ApiError(422, answer["error"])
    return answer


class ModelClient:
    """The models of one ingress replica: ``handles`` maps each model name to its deployment's
    handle, or is None when the models run in this replica (``model_deployment.placement: ingress``)."""

    def __init__(self, config: ServeConfig, handles: dict[str, DeploymentHandle] | None):
        self.config = config
        self.handles = handles or {}
        self.local: dict[str, Any] = {}
        """In-process models (``placement: ingress``): the model deployment's class, instantiated here."""
        if handles is None:
            from serve_app.model import MattingModel  # here only: with model deployments the ingress never loads torch

            md = config.model_deployment
            self.local = {
                spec.name: MattingModel.func_or_class(spec.name, spec.checkpoint, md, spec.backend) for spec in config.models
            }
        self.calls = 0
        self.retries = 0

    async def reconfigure(self, checkpoints: dict[str, str]) -> None:
        """Hot swap of in-process models, each as a model deployment does (:meth:`MattingModel.reconfigure`)."""
        for name, uri in checkpoints.items():
            await self.local[name].reconfigure({"checkpoint": uri})

    def check_health(self) -> None:
        for m in self.local.values():
            m.check_health()

    async def infos(self) -> dict[str, dict[str, Any] | str]:
        """Each model's ``info()`` (a dict), or the error text when it does not answer."""
        if self.local:
            return {name: m.info() for name, m in self.local.items()}

        async def one(name: str, handle: DeploymentHandle) -> tuple[str, dict[str, Any] | str]:
            try:
                return name, await _bounded(handle.info.remote(), INFO_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - reported per model
                return name, f"{type(e).__name__}: {e}".splitlines()[0]

        return dict(await asyncio.gather(*(one(n, h) for n, h in self.handles.items())))

    async def call(self, model: str, rgb: np.ndarray, max_side: MaxSide = KEEP, refine: str = "auto",
                   hints: Any = None) -> dict[str, Any]:
        """The model's answer; a replica that died is retried (matting is idempotent). ``max_side``:
        pixels or :data:`~matting_lib.resize.KEEP` (the model's configured one). ``hints``: a
        :class:`matting_lib.refine.hints.Hints`, or None."""
        timeout = self.config.ingress.model_timeout_s
        request = (rgb, max_side, refine) if hints is None else (rgb, max_side, refine, hints)
        if self.local:
            return await self._call_local(model, request, timeout)
        handle = self.handles[model]
        retries = self.config.ingress.model_retries
        for attempt in range(retries + 1):
            self.calls += 1
            try:
                return refused(await _bounded(handle.predict.remote(request), timeout))
            except asyncio.TimeoutError:
                raise ApiError(504, f"model {model!r} did not answer within {timeout:g} s") from None
            except BackPressureError:
                raise ApiError(503, f"model {model!r} is overloaded; retry later") from None
            except (RayActorError, ActorUnavailableError, DeploymentUnavailableError) as e:
                if attempt == retries:
                    raise ApiError(503, f"model {model!r} is unavailable ({type(e).__name__}); retry later") from None
                self.retries += 1
                logger.warning("model %s call failed (%s); retrying", model, type(e).__name__)
            except RayTaskError as e:
                logger.error("model %s failed: %s", model, e)
                raise ApiError(500, f"model {model!r} failed ({type(e.cause).__name__}); see the server log") from None
        raise AssertionError("unreachable")

    async def _call_local(self, model: str, request: tuple, timeout: float) -> dict[str, Any]:
        """An in-process model's answer (``placement: ingress``), with the same errors as a remote one."""
        self.calls += 1
        try:
            answer = await asyncio.wait_for(self.local[model].predict(request), timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"model {model!r} did not answer within {timeout:g} s") from None
        except Exception as e:  # noqa: BLE001 - a failed forward pass is this request's 500, logged
            logger.exception("model %s failed", model)
            raise ApiError(500, f"model {model!r} failed ({type(e).__name__}); see the server log") from None
        return refused(answer)
