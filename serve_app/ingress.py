"""The ingress deployment: the Serve side of the HTTP API (:mod:`serve_app.api`).

One replica holds an :class:`serve_app.service.IngressService` (cache -> decode -> route ->
model -> post-process in :class:`serve_app.pipeline.MattingPipeline`, history), reaching its
models through :class:`serve_app.model_client.ModelClient`: Serve handles, or the models in
this replica (``model_deployment.placement: ingress``). The replica's FastAPI app comes from
:func:`build_replica_api`, the builder function handed to ``serve.ingress`` (Ray's documented
way to build an app on the replica): the routes and the API-key dependency (:mod:`serve_app.auth`)
both need this replica's service and config, which only exist once the constructor ran. This class
adds only what Serve calls: ``reconfigure`` (hot swap of in-process models) and ``check_health``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api import build_api
from serve_app.config import ServeConfig
from serve_app.replica import parse_ingress_user_config
from serve_app.model_client import ModelClient
from serve_app.service import IngressService

_replica_service: IngressService | None = None
"""This process's ingress service, set by :class:`MattingIngress`'s constructor for
:func:`build_replica_api`. One per process: each Serve replica is a Ray actor of its own."""


def hold_replica_service(service: IngressService) -> None:
    """Keep ``service`` for :func:`build_replica_api`. A function of this module, not a ``global``
    statement in the constructor: Serve ships the deployment class by value (cloudpickle), so its
    methods' globals on the replica are a copy, while module functions resolve to this module."""
    global _replica_service
    _replica_service = service


def build_replica_api() -> FastAPI:
    """``serve.ingress``'s builder: Serve calls it on the replica after the deployment's constructor
    (``ASGIIngressWrapper.__init__`` in Ray 2.60), so the service it serves is the replica's own."""
    if _replica_service is None:
        raise RuntimeError("build_replica_api: no ingress service in this process (MattingIngress was not constructed)")
    return build_api(_replica_service)


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(build_replica_api)
class MattingIngress:
    """The ingress deployment; ``models`` maps each model name to its deployment's handle, or is
    None when the models run in this replica (``model_deployment.placement: ingress``)."""

    def __init__(self, config: ServeConfig, models: dict[str, DeploymentHandle] | None):
        self.config = config
        self.client = ModelClient(config, models)
        self.service = IngressService(config, self.client)
        hold_replica_service(self.service)

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
