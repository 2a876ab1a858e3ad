"""URI-addressed I/O through fsspec: local paths, ``file://`` and ``s3://``.

Every function takes a URI string. S3 settings come from the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``) or from
:func:`configure_s3`. S3 calls get connect/read timeouts and a bounded number of
retries, so an unreachable endpoint raises :class:`StorageError` instead of hanging.

Two retry layers, both bounded, both set from the environment:

- botocore's, per request: ``MATTING_S3_CONNECT_TIMEOUT`` (s, default 5),
  ``MATTING_S3_READ_TIMEOUT`` (s, default 30), ``MATTING_S3_MAX_ATTEMPTS`` (default 3);
- this module's, per call on object storage (reads, listings and whole-object writes, all
  idempotent): a call that fails with :class:`StorageError` (endpoint unreachable, timeout,
  5xx) is tried again with exponential backoff (``MATTING_S3_RETRY_BACKOFF`` s, default 0.25,
  doubling, at most 4 s between tries, jittered) while less than ``MATTING_S3_RETRY_SECONDS``
  (s, default 10; 0 turns it off) have passed since the first try. An outage shorter than that
  window is ridden out; a longer one raises :class:`StorageError` naming the URI, the endpoint,
  the number of attempts and the time spent. Each retry logs one warning line
  (``matting_lib.io``, starting ``S3 retry``). Missing objects and refused permissions are
  never retried. Local files are never retried.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import sys
import time
import uuid
from typing import Any, Callable, TypeVar

import fsspec

STORAGE_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
    "AWS_EC2_METADATA_DISABLED", "MATTING_S3_CONNECT_TIMEOUT", "MATTING_S3_READ_TIMEOUT", "MATTING_S3_MAX_ATTEMPTS",
    "MATTING_S3_RETRY_SECONDS", "MATTING_S3_RETRY_BACKOFF",
)
"""The environment variables storage access reads (boto/s3fs credentials and endpoint, and this
module's timeouts and retry window): what Ray workers and Serve replicas must be given."""

S3_CONNECT_TIMEOUT_S = float(os.environ.get("MATTING_S3_CONNECT_TIMEOUT", "5"))
S3_READ_TIMEOUT_S = float(os.environ.get("MATTING_S3_READ_TIMEOUT", "30"))
S3_MAX_ATTEMPTS = int(os.environ.get("MATTING_S3_MAX_ATTEMPTS", "3"))

RETRY_MAX_SLEEP_S = 4.0
"""Longest pause between two tries of one call, in seconds."""

_s3_overrides: dict[str, Any] = {}
_log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(OSError):
    """Object storage is unreachable or refused the request. The message names the URI."""


def configure_s3(endpoint_url: str = "", key: str = "", secret: str = "") -> None:
    """Set process-wide S3 options (empty values keep the environment's)."""
    if endpoint_url:
        _s3_overrides["endpoint_url"] = endpoint_url
    if key:
        _s3_overrides["key"] = key
    if secret:
        _s3_overrides["secret"] = secret


def protocol(uri: str) -> str:
    """'s3', 'file', ... ('file' for plain paths)."""
    return uri.split("://", 1)[0] if "://" in uri else "file"


def s3_storage_options() -> dict[str, Any]:
    """s3fs keyword arguments: endpoint, credentials and bounded timeouts/retries."""
    opts: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": S3_CONNECT_TIMEOUT_S,
            "read_timeout": S3_READ_TIMEOUT_S,
            "retries": {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        },
    }
    endpoint = _s3_overrides.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        opts["endpoint_url"] = endpoint
    if "key" in _s3_overrides:
        opts["key"] = _s3_overrides["key"]
    if "secret" in _s3_overrides:
        opts["secret"] = _s3_overrides["secret"]
    return opts


def _import_s3fs() -> None:
    """Import s3fs (and aiohttp beneath it), repairing what a half-finished import left behind.

    A Ray task cancelled while its worker was importing aiohttp (Ray Data cancels a dataset's
    in-flight map tasks when one of its consumers dies) leaves aiohttp's submodules in
    ``sys.modules`` but not aiohttp itself. Importing it again then fails for the life of that
    pooled worker with "module aiohttp has no attribute http_exceptions", so every later task
    reading S3 there fails. Drop the stale entries and import once more; a real ImportError stays.
    """
    try:
        import s3fs  # noqa: F401
    except (AttributeError, ImportError):
        for name in [m for m in sys.modules if m.split(".")[0] in ("aiohttp", "s3fs", "aiobotocore")]:
            del sys.modules[name]
        import s3fs  # noqa: F401


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path within it."""
    proto = protocol(uri)
    if proto == "s3":
        _import_s3fs()
        fs = fsspec.filesystem("s3", **s3_storage_options())
        return fs, uri.split("://", 1)[1]
    if proto == "file":
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _wrap(uri: str, exc: Exception) -> Exception:
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError, StorageError)):
        return exc
    name = type(exc).__name__
    if isinstance(exc, (OSError, TimeoutError)) or "Endpoint" in name or "Timeout" in name or "Connect" in name:
        return StorageError(f"{uri}: storage unreachable or refused the request ({name}: {exc})")
    return exc


def retry_window_s() -> float:
    """``MATTING_S3_RETRY_SECONDS``: how long (s) a failing storage call keeps being retried."""
    return max(0.0, float(os.environ.get("MATTING_S3_RETRY_SECONDS", "10")))


def _endpoint() -> str:
    return s3_storage_options().get("endpoint_url") or "the default AWS endpoint"


def _with_retries(uri: str, call: Callable[[], T]) -> T:
    """``call()``, retried on :class:`StorageError` with backoff for object-storage URIs.

    Other exceptions (missing object, permissions, bad arguments) pass through at once.
    """
    if protocol(uri) == "file":
        return call()
    window = retry_window_s()
    delay = float(os.environ.get("MATTING_S3_RETRY_BACKOFF", "0.25"))
    start = time.monotonic()
    attempt = 1
    while True:
        try:
            return call()
        except StorageError as e:
            elapsed = time.monotonic() - start
            if elapsed >= window:
                raise StorageError(
                    f"{e} [gave up after {attempt} attempt(s) over {elapsed:.1f} s; endpoint {_endpoint()}]"
                ) from e.__cause__
            # A pause that would run past the window is cut to its end: the last attempt comes
            # when the window closes, rather than giving up early when the next backoff is long.
            pause = min(min(delay, RETRY_MAX_SLEEP_S) * random.uniform(0.8, 1.2), window - elapsed)
            _log.warning("S3 retry %d for %s in %.2f s: %s", attempt, uri, pause, e)
            time.sleep(pause)
            delay *= 2
            attempt += 1


def read_bytes(uri: str) -> bytes:
    """Whole object as bytes. Raises FileNotFoundError or StorageError naming ``uri``."""

    def call() -> bytes:
        fs, path = filesystem(uri)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {uri}") from None
        except Exception as e:  # noqa: BLE001 - re-raised with the URI
            raise _wrap(uri, e) from e

    return _with_retries(uri, call)


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers never see a half-written object.

    Local files are written to a temporary sibling, synced and renamed (the temporary file is
    removed if anything fails); S3 PUTs are atomic, and retried as a whole.
    """
    if protocol(uri) == "file":
        _write_local(uri, data)
        return

    def call() -> None:
        fs, path = filesystem(uri)
        try:
            fs.pipe_file(path, data)
        except Exception as e:  # noqa: BLE001
            raise _wrap(uri, e) from e

    _with_retries(uri, call)


def _write_local(uri: str, data: bytes) -> None:
    _, path = filesystem(uri)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001
        if os.path.exists(tmp):
            os.remove(tmp)
        raise _wrap(uri, e) from e


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def _query(uri: str, op: Callable[[fsspec.AbstractFileSystem, str], T]) -> T:
    """``op(fs, path)`` with errors named by ``uri`` and storage failures retried."""

    def call() -> T:
        fs, path = filesystem(uri)
        try:
            return op(fs, path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file or directory: {uri}") from None
        except Exception as e:  # noqa: BLE001
            raise _wrap(uri, e) from e

    return _with_retries(uri, call)


def exists(uri: str) -> bool:
    return _query(uri, lambda fs, path: fs.exists(path))


def isdir(uri: str) -> bool:
    return _query(uri, lambda fs, path: fs.isdir(path))


def listdir(uri: str) -> list[str]:
    """Names (not full paths) of the entries directly under ``uri``, sorted."""
    entries = _query(uri, lambda fs, path: fs.ls(path, detail=False))
    return sorted(posixpath.basename(str(p).rstrip("/")) for p in entries)


def join(base: str, *parts: str) -> str:
    """Join URI components with '/', keeping the scheme."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def makedirs(uri: str) -> None:
    """Create a local directory (no-op for object stores, which have no directories)."""
    if protocol(uri) == "file":
        fs, path = filesystem(uri)
        os.makedirs(path, exist_ok=True)


def run_uri(storage_path: str, name: str) -> str:
    """URI of a run's folder under ``storage_path`` (local folders made absolute)."""
    base = storage_path if "://" in storage_path else os.path.abspath(storage_path)
    return f"{base.rstrip('/')}/{name}"
