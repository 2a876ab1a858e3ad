"""The ingress deployment: the Serve side of the HTTP API (:mod:`serve_app.api`).

One replica holds an :class:`serve_app.service.IngressService` (cache -> decode -> route ->
model -> post-process in :class:`serve_app.pipeline.MattingPipeline`, history), reaching its
models through :class:`serve_app.model_client.ModelClient`: Serve handles, or the models in
this replica (``model_deployment.placement: ingress``). Serve builds the replica's FastAPI app
from the config after the constructor (``__serve_build_asgi_app__``), so the API-key dependency
(:mod:`serve_app.auth`) comes from the config too. This class adds only what Serve calls:
``reconfigure`` (hot swap of in-process models) and ``check_health``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api import build_api, parse_server_timing, server_timing  # noqa: F401 - re-exported for the benchmarks and tests
from serve_app.config import ServeConfig
from serve_app.replica import parse_ingress_user_config
from serve_app.model_client import ModelClient
from serve_app.service import IngressService


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class MattingIngress:
    """The ingress deployment; ``models`` maps each model name to its deployment's handle, or is
    None when the models run in this replica (``model_deployment.placement: ingress``)."""

    def __init__(self, config: ServeConfig, models: dict[str, DeploymentHandle] | None):
        self.config = config
        self.client = ModelClient(config, models)
        self.service = IngressService(config, self.client)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve's hook for an app built at replica start: the routes with this replica's service and auth."""
        return build_api(self.service)

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Hot swap of in-process models: ``{"checkpoints": {name: URI}}`` (``placement: ingress``).

        Each named model swaps as a model deployment does (:meth:`MattingModel.reconfigure`): a
        checkpoint that does not load leaves the old one serving and shows as ``swap_error``.
        """
        placement = self.config.model_deployment.placement
        checkpoints = parse_ingress_user_config(user_config, self.config.model_names, placement)
        await self.client.reconfigure(checkpoints)

    def check_health(self) -> None:
        self.service.history.ping()
        self.client.check_health()
