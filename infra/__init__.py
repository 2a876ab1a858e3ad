"""Cluster definitions (KubeRay, AWS cluster launcher, container image) and their offline checks.

Not part of the installed package: run the tools from the repository root, e.g.
``python -m infra.validate`` or ``python -m infra.gen_rayservice``.
"""
