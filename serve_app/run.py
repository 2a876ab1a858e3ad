"""``python -m serve_app``: serve the matting app on a local Ray cluster (what ``make serve`` runs).

    python -m serve_app [--config serve_app/config.yaml] [--host 127.0.0.1] [--port 8000]
                        [--address RAY_ADDRESS] [key=value ...]

1. Reads the Serve config file (checked against Ray's ``ServeDeploySchema``) and the app's
   ``args`` with ``key=value`` overrides (``models.0.checkpoint=s3://bucket/base.pt``).
2. Checks that every checkpoint exists and is a readable matting checkpoint; if not, prints
   which one and how to get it, and exits 2 (no traceback).
3. Starts a fresh local Ray cluster on 127.0.0.1 (fractional resources, small object store),
   or connects to ``--address`` / ``$RAY_ADDRESS``. It never attaches silently to another
   cluster on the machine, since Ctrl-C would then stop someone else's Serve.
4. Deploys the app, prints ``http://HOST:PORT``, and serves until Ctrl-C or SIGTERM, then
   deletes the app, stops a cluster it started (Serve with it) and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Sequence

from matting_lib import io
from matting_lib.config import ConfigError
from serve_app.config import DEFAULT_CONFIG_PATH, ServeConfig, app_entry, load_serve_yaml, serve_config_from_args, with_resolved_paths

FORWARDED_ENV = io.STORAGE_ENV
"""Environment variables the replicas need (S3 access); the API key variable is added from the config."""

OBJECT_STORE_BYTES = 256 * 1024 * 1024

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Environment that keeps a single-node Ray cluster on loopback.

Ray replaces ``--node-ip-address=127.0.0.1`` with the machine's address (``resolve_ip_for_localhost``),
and its GCS, raylet and core-worker gRPC servers then listen on every interface (``*``). With this
variable at 0, Ray keeps 127.0.0.1 as the node's address, as on a laptop, and every one of its
servers listens on loopback only; the cost is that no other node can join the cluster, which a
local cluster never wants. It is read when ``ray`` is imported, so set it before that."""

SERVING_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024)}
"""glibc's allocator for every process of a cluster that only serves (the local cluster started here;
``infra/kuberay/rayservice.yaml`` sets the same on its pods). glibc reads them when a process starts,
and the raylet hands its environment to the workers it starts.

By default glibc keeps up to 8 arenas per core and, after each large free, raises the size below
which it serves buffers from those arenas, so an image service's decoded images and encoded
results end up in arenas it rarely returns. In two 15-minute soaks, one after the other, these
settings took the ingress's own (anonymous) memory from 840-960 MB to about 445 MB, and the proxy's
growth from +13% to +1%; the 60-minute soak with them is in ``bench/RELIABILITY.md`` ("Soak"). Buffers of 1 MiB or more, every
decoded image, are then mapped for each use and returned when freed. Not for training clusters:
torch's CPU tensors of that size would be mapped and zeroed at every step."""


def use_loopback() -> None:
    """Set :data:`LOOPBACK_ENV` in this process, for a local cluster it starts or joins; also after ``ray`` was imported."""
    os.environ.update(LOOPBACK_ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


HOW_TO_GET_MODELS = (
    "The shipped models are models/base.pt and models/lowlight.pt in the repository (see models/README.md for\n"
    "the commands that train them with `python -m ray_jobs.train`). To serve other checkpoints, point the config\n"
    "at them, e.g.  python -m serve_app models.0.checkpoint=s3://bucket/base.pt models.1.checkpoint=/path/lowlight.pt"
)


def fail(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serve_app", description="Serve the matting app on a local Ray cluster.")
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="Serve config file (default: serve_app/config.yaml)")
    p.add_argument("--host", default=None, help="HTTP host (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="connect to this Ray cluster instead of starting one")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a started cluster (default: all)")
    p.add_argument("--temp-dir", default=None, help="Ray's temp/session folder for a started cluster")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the app's args, e.g. routing.threshold=0.25")
    # Intermixed: `make serve` puts its own overrides first and the user's ARGS (options included) after them.
    return p.parse_intermixed_args(argv)


def load(args: argparse.Namespace) -> tuple[ServeConfig, ServeConfig, str, int, str]:
    """(config as written, config with absolute paths, host, port, app name); exit 2 on a config error."""
    try:
        serve_yaml = load_serve_yaml(args.config)
        entry = app_entry(serve_yaml)
        cfg = serve_config_from_args(entry.get("args"), args.overrides)
    except ConfigError as e:
        fail(f"config: {e}")
    http = serve_yaml.get("http_options") or {}
    host = args.host or http.get("host") or "127.0.0.1"
    port = args.port or int(http.get("port") or 8000)
    return cfg, with_resolved_paths(cfg), host, port, entry.get("name", "matting")


def check_checkpoints(cfg: ServeConfig) -> None:
    """Exit 2 naming the first model whose checkpoint is missing or unreadable."""
    from matting_lib.checkpoint import CheckpointError, load_checkpoint

    for spec in cfg.models:
        try:
            load_checkpoint(spec.checkpoint)
        except CheckpointError as e:
            if "not found" in str(e):
                fail(f"the checkpoint of model '{spec.name}' does not exist: {spec.checkpoint}\n{HOW_TO_GET_MODELS}")
            fail(f"the checkpoint of model '{spec.name}' is not usable: {e}")
        except io.StorageError as e:
            fail(f"the checkpoint of model '{spec.name}' cannot be read: {e}")


def free_port() -> int:
    """A free loopback port (Ray's agent would otherwise take the well-known 8265)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            fail(f"cannot listen on {host}:{port} ({e.strerror}); is another server running? Use --port.")


def start_ray(args: argparse.Namespace, cfg: ServeConfig) -> bool:
    """Connect to ``--address`` or start a local cluster; True if this process started it."""
    import ray

    env = {k: os.environ[k] for k in (*FORWARDED_ENV, cfg.api_key_env) if k and k in os.environ}
    runtime_env = {"env_vars": env}
    if args.address:
        print(f"connecting to the Ray cluster at {args.address} ...", flush=True)
        try:
            ray.init(address=args.address, runtime_env=runtime_env, logging_level=logging.WARNING)
        except Exception as e:  # noqa: BLE001 - ConnectionError, timeouts, auth: one clear line
            fail(f"cannot connect to the Ray cluster at {args.address}: {type(e).__name__}: {e}")
        return False
    cpus = args.num_cpus or float(os.cpu_count() or 2)
    print(f"starting a local Ray cluster ({cpus:g} CPUs, 127.0.0.1) ...", flush=True)
    for k, v in SERVING_MALLOC_ENV.items():  # the raylet and every worker inherit them; the caller's values win
        os.environ.setdefault(k, v)
    try:
        ray.init(
            num_cpus=cpus, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False, dashboard_port=free_port(),
            _node_ip_address="127.0.0.1",
            _temp_dir=args.temp_dir, runtime_env=runtime_env, logging_level=logging.WARNING,
        )
    except Exception as e:  # noqa: BLE001 - e.g. the node timed out during startup on an overloaded machine
        fail(f"could not start a local Ray cluster: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
             "(is the machine overloaded or out of memory? try again, or pass --address of a running cluster)")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.address:  # a cluster of our own: every Ray server on loopback (before Ray is imported)
        use_loopback()
    raw_cfg, cfg, host, port, name = load(args)
    check_checkpoints(cfg)
    check_port_free(host, port)

    from ray import serve

    from serve_app.app import build_from_config

    started = start_ray(args, cfg)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C and SIGTERM alike; explicit, since a shell may start us ignoring SIGINT

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("deploying " + ", ".join(f"{m.name} ({m.checkpoint})" for m in cfg.models) + " ...", flush=True)
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        serve.run(build_from_config(raw_cfg), name=name, route_prefix="/", logging_config={"log_level": "WARNING"})
        print(f"\nThe matting service is ready: http://{host}:{port}", flush=True)
        print(f"  web UI http://{host}:{port}/   API docs http://{host}:{port}/docs   Ctrl-C stops it\n", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - a deploy failure is reported in one line; details are in Ray's log above
        print(f"error: the app failed to start: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}",
              file=sys.stderr, flush=True)
        shutdown(started, name)
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("stopping ...", flush=True)
    shutdown(started, name)
    print("stopped.", flush=True)
    return 0


def shutdown(started: bool, name: str) -> None:
    """Stop what this process started: its app, then its connection, and with it a cluster it started.

    Deleting the app stops every replica gracefully (in-flight requests finish), on a cluster of
    our own as on one we joined with ``--address``; on our own, ``ray.shutdown()`` then stops
    Serve's controller and proxy with the rest of the cluster. Not ``serve.shutdown()``: Serve's
    controller ends the ``graceful_shutdown`` call it is sent by killing itself, and since the
    controller's tasks retry forever, Ray then prints "Task ServeController.graceful_shutdown
    failed. There are infinite retries remaining ..." on the terminal although nothing failed
    (issue 27).
    """
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.delete(name)
    except RayServeException:
        if not started:  # nothing of ours runs on someone else's cluster: say so
            raise
        # Serve never started on our own cluster (a failed deploy): it all goes with ray.shutdown().
    finally:
        ray.shutdown()

if __name__ == "__main__":
    sys.exit(main())
