"""The Ray Serve matting service and its web UI.

- :mod:`serve_app.app`: the application builder (``serve_app.app:build_app``, named by ``config.yaml``).
- :mod:`serve_app.ingress`: the FastAPI ingress (HTTP API, routing, post-processing, cache, history).
- :mod:`serve_app.model`: the model deployment (batched inference, hot swap, health check).
- :mod:`serve_app.config`: the app's configuration (the ``args`` of ``config.yaml``).
- :mod:`serve_app.run`: ``python -m serve_app``, a local cluster with the app (``make serve``).
- ``static/``: the web UI. ``README.md``: the HTTP API with curl examples.
"""
