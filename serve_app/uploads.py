"""Reading uploads safely: bounded bodies, multipart or raw images, and zip archives.

Nothing here trusts the client: the body is read up to a byte limit (413 past it, checked
against Content-Length first so a large upload is refused before it is read), multipart
parts are counted, and zip archives are checked entry by entry (count, declared and real
uncompressed size, names) before any entry is used. Errors are :class:`ApiError` (JSON 4xx).
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import re
import zipfile
from dataclasses import dataclass, field
from typing import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from ray.exceptions import TaskCancelledError
from starlette.requests import ClientDisconnect, Request

from serve_app.errors import ApiError

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes allowed on top of the file limit for multipart boundaries and text fields."""
MAX_FORM_FIELDS = 32
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file: its client-side name (a basename, or a path inside a zip) and bytes."""

    name: str
    data: bytes
    field: str = ""
    """The multipart field it came in (empty for a raw body or a zip entry)."""


@dataclass
class Upload:
    """What a request carried: files and text form fields."""

    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def read_body(request: Request, limit: int, timeout_s: float | None = None, total_s: float | None = None) -> bytes:
    """The whole request body, or 413 once it exceeds ``limit`` bytes.

    ``timeout_s``: the longest wait for the next piece of the body; a client that stalls longer
    (a ``Content-Length`` larger than what it sends, a stalled upload) gets 408
    ``request_timeout`` instead of holding the connection. ``total_s``: the longest the whole body
    may take, however it trickles in (one byte every few seconds resets no clock here): past it, 408
    ``request_timeout`` with ``Connection: close``. A client that hangs up mid-upload
    raises starlette's ``ClientDisconnect`` (answered 499 and logged as such, see
    :func:`serve_app.errors.install_handlers`), also when Ray Serve's proxy noticed first and
    cancelled the task that streams the body to this replica (``TaskCancelledError``).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {_mb(int(declared))}, the limit is {_mb(limit)}")
    buf = bytearray()
    chunks = request.stream().__aiter__()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_s if total_s is not None else None
    while True:
        wait = timeout_s
        if deadline is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise _too_slow(buf, declared, total_s)
            wait = left if wait is None else min(wait, left)
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), wait)
        except StopAsyncIteration:
            break
        except TaskCancelledError:
            # Serve's proxy cancels the call that fetches the body for us when its client hangs up.
            raise ClientDisconnect() from None
        except asyncio.TimeoutError:
            if deadline is not None and loop.time() >= deadline - 1e-3:
                raise _too_slow(buf, declared, total_s) from None
            raise ApiError(408, f"the request body stalled: no data for {timeout_s:g} s after {_got(buf, declared)}",
                           headers={"Connection": "close"}) from None
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, f"request body is over the {_mb(limit)} limit")
    return bytes(buf)


def _got(buf: bytearray, declared: str) -> str:
    return f"{len(buf)} of {declared} bytes" if declared.isdigit() else f"{len(buf)} bytes"


def _too_slow(buf: bytearray, declared: str, total_s: float | None) -> ApiError:
    return ApiError(408, f"the request body took too long: not complete within {total_s:g} s "
                         f"(got {_got(buf, declared)})", headers={"Connection": "close"})


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _basename(name: str | None) -> str:
    """A client file name reduced to its last path component ('' if none)."""
    return posixpath.basename((name or "").replace("\\", "/")).strip()


def _boundary(content_type: str) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type (b'' if none)."""
    from starlette.formparsers import parse_options_header

    _, params = parse_options_header(content_type)
    return params.get(b"boundary", b"")


async def parse_upload(request: Request, body: bytes, max_files: int) -> Upload:
    """Files and fields of a multipart body, or the raw body as one file named by ``X-Filename``."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        name = _basename(request.headers.get("x-filename")) or "upload"
        return Upload(files=[UploadedFile(name, body)] if body else [])
    parser = MultiPartParser(
        request.headers, _once(body), max_files=max_files, max_fields=MAX_FORM_FIELDS, max_part_size=MULTIPART_OVERHEAD
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart upload: {e.message}") from None
    boundary = _boundary(ctype)
    if boundary and b"--" + boundary + b"--" not in body:
        # The parser returns the parts it completed, possibly none, for a body cut short.
        await form.close()
        raise ApiError(400, "malformed multipart upload: the body ends before its closing boundary (cut short?)")
    upload = Upload()
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                upload.files.append(UploadedFile(_basename(value.filename) or key, data, key))
            else:
                upload.fields[key] = value
    finally:
        await form.close()
    return upload


def is_zip(f: UploadedFile) -> bool:
    return f.data[:4] in ZIP_MAGIC


_UNSAFE = re.compile(r"(^|/)\.\.(/|$)")


def safe_member_name(name: str) -> str:
    """A zip entry name, or 400 for an absolute path, a drive letter, '..', or control characters."""
    n = name.replace("\\", "/")
    if (
        n.startswith("/")
        or re.match(r"^[A-Za-z]:", n)
        or _UNSAFE.search(n)
        or any(ord(c) < 32 for c in n)
    ):
        raise ApiError(400, f"zip entry {name!r} has an unsafe path (absolute, drive letter or '..')", "unsafe_zip_path")
    while n.startswith("./"):
        n = n[2:]
    return n


def _skipped(name: str) -> bool:
    """Directories and OS metadata that are not user files (__MACOSX, .DS_Store, dotfiles)."""
    parts = name.split("/")
    return name.endswith("/") or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts if p)


def read_zip(data: bytes, max_entries: int, max_entry_bytes: int, max_total_bytes: int) -> list[UploadedFile]:
    """The files of a zip archive after every check; 400 for a bad archive, 413 for a too large one.

    Entry sizes are checked as declared in the central directory, and again while reading
    (a forged header cannot smuggle a larger entry).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - forged headers raise anything from BadZipFile to struct.error
        raise ApiError(400, f"not a readable zip archive ({type(e).__name__}: {e})", "bad_zip") from None
    with zf:
        infos = [i for i in zf.infolist()]
        names = [safe_member_name(i.filename) for i in infos]  # any unsafe name rejects the whole archive
        entries = [(i, n) for i, n in zip(infos, names) if not _skipped(n)]
        if len(entries) > max_entries:
            raise ApiError(413, f"zip has {len(entries)} files, the limit is {max_entries}", "too_many_files")
        total = 0
        for info, name in entries:
            if info.file_size > max_entry_bytes:
                raise ApiError(413, f"zip entry {name!r} is {_mb(info.file_size)} uncompressed, the limit is {_mb(max_entry_bytes)}")
            total += info.file_size
        if total > max_total_bytes:
            raise ApiError(413, f"zip holds {_mb(total)} uncompressed, the limit is {_mb(max_total_bytes)}")
        files = []
        for info, name in entries:
            try:
                with zf.open(info) as f:
                    content = f.read(max_entry_bytes + 1)
            except Exception as e:  # noqa: BLE001 - BadZipFile, encrypted, unknown method, zlib.error, negative offsets...
                raise ApiError(400, f"zip entry {name!r} cannot be read ({type(e).__name__}: {e})", "bad_zip") from None
            if len(content) > max_entry_bytes:
                raise ApiError(413, f"zip entry {name!r} is larger than declared and over {_mb(max_entry_bytes)}")
            files.append(UploadedFile(name, content))
    return files


def expand_batch(files: list[UploadedFile], max_files: int, max_entry_bytes: int, max_total_bytes: int) -> list[UploadedFile]:
    """Uploaded files with every zip replaced by its entries; 400 if empty, 413 if too many or too large."""
    out: list[UploadedFile] = []
    for f in files:
        if is_zip(f):
            out.extend(read_zip(f.data, max_files, max_entry_bytes, max_total_bytes))
        else:
            if len(f.data) > max_entry_bytes:
                raise ApiError(413, f"file {f.name!r} is {_mb(len(f.data))}, the limit is {_mb(max_entry_bytes)}")
            out.append(f)
        if len(out) > max_files:
            raise ApiError(413, f"batch has more than {max_files} files", "too_many_files")
    if not out:
        raise ApiError(400, "no files in the request: send multipart 'files' fields or a zip", "no_files")
    return out


def output_name(name: str, ext: str, used: set[str]) -> str:
    """``dir/stem.<ext>`` for an input name, made unique within ``used`` (which it updates).

    Only letters, digits, '.', '_', '-' and '/' survive, and empty, '.' and '..' components are
    dropped, so the result is always a relative path inside the archive's ``results/``.
    """
    parts = re.sub(r"[^A-Za-z0-9._/-]+", "_", name).split("/")
    clean = "/".join(p for p in parts if p not in ("", ".", "..")) or "image"
    stem = posixpath.splitext(clean)[0] or "image"
    candidate, k = f"{stem}.{ext}", 1
    while candidate in used:
        k += 1
        candidate = f"{stem}-{k}.{ext}"
    used.add(candidate)
    return candidate
