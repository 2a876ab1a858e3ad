"""The application builder: config in, a Serve application (ingress + one deployment per model) out.

With ``model_deployment.placement: ingress`` the application is the ingress alone, holding the
models in its own replicas (see :class:`serve_app.config.ModelDeploymentSettings`).

``serve run serve_app/config.yaml`` and ``serve deploy`` call :func:`build_app` with the
application's ``args``; ``python -m serve_app`` calls it directly. Deployment names:
``ingress`` and ``model_<name>`` (use them in a config's ``deployments:`` overrides, e.g. to hot
swap a checkpoint with ``user_config: {checkpoint: s3://...}``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ray.serve import Application

from serve_app.config import ServeConfig, serve_config_from_args, with_resolved_paths
from serve_app.ingress import MattingIngress
from serve_app.model import MattingModel


def deployment_name(model: str) -> str:
    """The Serve deployment that serves ``model``."""
    return f"model_{model}"


def build_from_config(cfg: ServeConfig) -> Application:
    """The application for a validated config (relative paths resolved against the repository root)."""
    cfg = with_resolved_paths(cfg)
    md = cfg.model_deployment
    ing = cfg.ingress
    if md.placement == "ingress":  # the models live in the ingress replicas, which scale like models
        return MattingIngress.options(
            ray_actor_options={"num_cpus": ing.num_cpus + md.num_cpus, "num_gpus": md.num_gpus},
            autoscaling_config=md.autoscaling.to_serve(),
            max_ongoing_requests=ing.max_ongoing_requests,
            health_check_period_s=md.health_check_period_s,
            user_config={"checkpoints": {spec.name: spec.checkpoint for spec in cfg.models}},
        ).bind(cfg, None)
    actor = {"num_cpus": md.num_cpus, "num_gpus": md.num_gpus}
    models = {
        spec.name: MattingModel.options(
            name=deployment_name(spec.name),
            ray_actor_options=actor,
            autoscaling_config=md.autoscaling.to_serve(),
            max_ongoing_requests=md.max_ongoing_requests,
            health_check_period_s=md.health_check_period_s,
            user_config={"checkpoint": spec.checkpoint},
        ).bind(spec.name, spec.checkpoint, md, spec.backend)
        for spec in cfg.models
    }
    return MattingIngress.options(
        num_replicas=ing.num_replicas,
        ray_actor_options={"num_cpus": ing.num_cpus},
        max_ongoing_requests=ing.max_ongoing_requests,
    ).bind(cfg, models)


def build_app(args: Mapping[str, Any] | None = None) -> Application:
    """Serve's application builder: validates ``args`` as a :class:`ServeConfig` (errors name the key)."""
    return build_from_config(serve_config_from_args(args or {}))
