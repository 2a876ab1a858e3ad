"""The Ray Serve matting service and its web UI.

- :mod:`serve_app.app`: the application builder (``serve_app.app:build_app``, named by ``config.yaml``).
- :mod:`serve_app.ingress`: the ingress deployment (Serve's side: builds the app, hot swap, health).
- :mod:`serve_app.api`: the HTTP API and web UI routes (HTTP only), and the app built from the config.
- :mod:`serve_app.auth`: the API-key check, a FastAPI dependency built from the config.
- :mod:`serve_app.service`: what an ingress replica holds behind the routes (pipeline, history, models).
- :mod:`serve_app.pipeline`: cache -> decode -> route -> model -> post-process, a plain class (no Serve).
- :mod:`serve_app.model_client`: how the ingress reaches its models (Serve handles or in-process).
- :mod:`serve_app.model`: the model deployment (batched inference, hot swap, health check).
- :mod:`serve_app.config`: the app's configuration (the ``args`` of ``config.yaml``).
- :mod:`serve_app.run`: ``python -m serve_app``, a local cluster with the app (``make serve``).
- ``static/``: the web UI. ``README.md``: the HTTP API with curl examples.
"""
