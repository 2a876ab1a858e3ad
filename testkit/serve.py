"""Shared code of the Serve tests and benchmarks: tiny checkpoints, synthetic photos, test configs, deploy and wait."""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from matting_lib.checkpoint import save_checkpoint
from matting_lib.config import ModelConfig
from matting_lib.nets import build_model
from serve_app.config import DEFAULT_CONFIG_PATH, app_entry, load_serve_yaml

TINY = ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8))


def make_checkpoint(path: Path | str, seed: int, metrics: dict[str, float] | None = None, head_bias: float | None = None) -> str:
    """A tiny random-weight checkpoint; different seeds give different mattes (alpha near 0.4 everywhere).

    ``head_bias``: the output layer's bias, e.g. -8 for a model that finds no subject in any image
    (alpha near 0: an empty matte) or +8 for one that keeps everything (alpha near 1).
    """
    import torch

    torch.manual_seed(seed)
    model = build_model(TINY)
    if head_bias is not None:
        with torch.no_grad():
            model.head.bias.fill_(head_bias)
    return save_checkpoint(str(path), model, metrics=metrics or {"val_sad": float(seed)})


def photo(h: int, w: int, light: str, seed: int = 0) -> np.ndarray:
    """A uint8 RGB photo-like image: a textured blob on a textured background.

    ``light='bright'`` has a mean luma around 0.55, ``'dark'`` around 0.05 (the seed's low light).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(yy - h * 0.5, xx - w * 0.5) / (0.3 * min(h, w))
    alpha = np.clip(1.5 - d, 0, 1)[..., None]
    fg = np.array([200, 150, 120], np.float32) + rng.normal(0, 10, (h, w, 3))
    bg = np.array([60, 120, 170], np.float32) + rng.normal(0, 20, (h, w, 3))
    img = alpha * fg + (1 - alpha) * bg
    img = img * (1.2 if light == "bright" else 0.12)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


SHORT_WINDOWS = {
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "metrics_interval_s": 0.25,
    "look_back_period_s": 1.0, "upscale_delay_s": 0.5, "downscale_delay_s": 600,
}
"""Autoscaling that reacts within a test."""


def serve_yaml_for_test(
    tmp: Path, checkpoints: dict[str, str], port: int, args: dict[str, Any] | None = None, fast_scaling: str = ""
) -> dict[str, Any]:
    """serve_app/config.yaml with test checkpoints, a free port, history and corrections under ``tmp``, small limits,
    and ``args`` merged over the application's args (one level deep).

    Models do not scale up during tests (upscale delay 600 s), except ``fast_scaling`` (a model
    name), whose deployment gets :data:`SHORT_WINDOWS` through the config's ``deployments:``.
    """
    cfg = copy.deepcopy(load_serve_yaml(DEFAULT_CONFIG_PATH))
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = app_entry(cfg)
    a = app["args"]
    a["models"] = [{"name": n, "checkpoint": c} for n, c in checkpoints.items()]
    a["history"] = {**a["history"], "db_path": str(tmp / "history.sqlite"), "store_uri": str(tmp / "results")}
    a["corrections"] = {**a.get("corrections", {}), "store_uri": str(tmp / "corrections")}
    a["model_deployment"] = {
        **a["model_deployment"],
        "max_side": 256,
        # The tiny random models' alpha (near 0.4) counts as empty: the ImageNet prior would
        # stand in on every request. Its own tests turn it on (tests/test_serve_edges.py).
        "subject_prior": False,
        "autoscaling": {**a["model_deployment"]["autoscaling"], "upscale_delay_s": 600},
    }
    a["limits"] = {**a["limits"], "max_upload_mb": 2, "max_batch_upload_mb": 4, "max_batch_files": 8,
                   "max_zip_total_mb": 3, "max_pixels": 4_000_000}
    for k, v in (args or {}).items():
        a[k] = {**a.get(k, {}), **v} if isinstance(v, dict) else v
    if fast_scaling:
        app["deployments"] = [{"name": f"model_{fast_scaling}", "autoscaling_config": dict(SHORT_WINDOWS)}]
    return cfg


def wait_until(cond, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``cond()`` until it returns a truthy value; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - the condition may fail while the service starts
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def upload_head(path: str, length: int, boundary: str = "") -> bytes:
    """The request line and headers of a raw upload to ``path`` declaring ``length`` body bytes:
    multipart with ``boundary``, else an image/png body. For clients that hang up or stall."""
    ctype = f"multipart/form-data; boundary={boundary}" if boundary else "image/png"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def deploy(dashboard: str, config: dict[str, Any]) -> None:
    """``serve deploy`` through the dashboard's REST API (what the CLI does), with token auth."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    ServeSubmissionClient(dashboard).deploy_applications(config)


def remove_app(config: dict[str, Any]) -> None:
    """Delete the config's applications and wait until they are gone; Serve itself (controller,
    proxy, its port) stays up for the next module of the session."""
    from ray import serve

    for app in config["applications"]:
        serve.delete(app["name"], _blocking=True)


def deploy_and_wait(dashboard: str, config: dict[str, Any], app_timeout: float = 180, ready_timeout: float = 60) -> str:
    """Deploy ``config``, wait until the app runs and ``/readyz`` answers 200; returns the base URL."""
    deploy(dashboard, config)
    wait_until(app_running, app_timeout, "the matting app to run")
    url = f"http://127.0.0.1:{config['http_options']['port']}"
    wait_until(lambda: get(f"{url}/readyz").status_code == 200, ready_timeout, "/readyz")
    return url


def app_running(name: str = "matting") -> bool:
    from ray import serve

    st = serve.status().applications.get(name)
    if st is not None and st.status == "DEPLOY_FAILED":
        raise AssertionError(f"application {name} failed to deploy: {st.message}")
    return st is not None and st.status == "RUNNING"


def running_replicas(deployment: str, app: str = "matting") -> int:
    from ray import serve

    st = serve.status().applications[app].deployments[deployment]
    return int(st.replica_states.get("RUNNING", 0))


def get(url: str, **kw: Any) -> requests.Response:
    return requests.get(url, timeout=kw.pop("timeout", 60), **kw)


def post(url: str, **kw: Any) -> requests.Response:
    return requests.post(url, timeout=kw.pop("timeout", 60), **kw)
