"""URI-addressed I/O through fsspec: local paths, ``file://`` and ``s3://``.

Every function takes a URI string. S3 settings come from the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``) or from
:func:`configure_s3`. S3 calls get connect/read timeouts and a bounded number of
retries, so an unreachable endpoint raises :class:`StorageError` instead of hanging.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec

S3_CONNECT_TIMEOUT_S = float(os.environ.get("MATTING_S3_CONNECT_TIMEOUT", "5"))
S3_READ_TIMEOUT_S = float(os.environ.get("MATTING_S3_READ_TIMEOUT", "30"))
S3_MAX_ATTEMPTS = int(os.environ.get("MATTING_S3_MAX_ATTEMPTS", "3"))

_s3_overrides: dict[str, Any] = {}


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


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path within it."""
    proto = protocol(uri)
    if proto == "s3":
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


def read_bytes(uri: str) -> bytes:
    """Whole object as bytes. Raises FileNotFoundError or StorageError naming ``uri``."""
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the URI
        raise _wrap(uri, e) from e


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers never see a half-written object.

    Local files are written to a temporary sibling and renamed; S3 PUTs are atomic.
    """
    fs, path = filesystem(uri)
    try:
        if protocol(uri) == "file":
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from e


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.exists(path)
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from e


def isdir(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.isdir(path)
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from e


def listdir(uri: str) -> list[str]:
    """Names (not full paths) of the entries directly under ``uri``, sorted."""
    fs, path = filesystem(uri)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such directory: {uri}") from None
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from e
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
