"""A corpus of malformed, hostile and legitimately odd uploads for the Serve app, built in code.

:func:`corpus` returns :class:`Case` objects: what to send (raw body, or multipart files and
fields, and query parameters) to which endpoint (``/v1/matte`` or ``/v1/batch``), and what the
app must answer: a documented 4xx status with its JSON error code (``serve_app/README.md``,
"Limits and errors"), or 200 with a check on the result. Everything is generated with
Pillow, numpy, zlib and zipfile from fixed seeds; nothing is downloaded.

The cases are sized against the app's :class:`serve_app.config.LimitSettings` (the tests run
with small limits, so "too large" cases stay small). :func:`send` sends a case with
``requests`` and :func:`problem` says what is wrong with a reply (None when it is right), so
the test and ``bench/hostile.py`` judge replies the same way. No Ray here.
"""

from __future__ import annotations

import io
import json
import re
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import requests
from PIL import Image

from serve_app.config import LimitSettings
from serve_app.params import MAX_SIDE
from testkit.data import luma

MATTE, BATCH = "/v1/matte", "/v1/batch"

Reply = requests.Response
Check = Callable[[Reply], None]
"""Raises AssertionError naming what is wrong with a 200 reply."""


@dataclass(frozen=True)
class Case:
    """One request and the answer it must get.

    ``body`` is sent raw with ``content_type`` when set; otherwise ``files`` (field, filename,
    bytes) and ``fields`` go as multipart/form-data. ``expect`` is the HTTP status, ``error``
    the JSON error code of a 4xx, ``check`` what a 200 reply must satisfy.
    """

    name: str
    endpoint: str
    expect: int
    error: str | None = None
    body: bytes | None = None
    content_type: str = "application/octet-stream"
    files: tuple[tuple[str, str, bytes], ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    check: Check | None = None
    note: str = ""

    @property
    def expected(self) -> str:
        """The expected outcome in words, e.g. ``413 too_many_pixels`` or ``200 (result is 40x64)``."""
        if self.expect == 200:
            return f"200 ({self.note})" if self.note else "200"
        return f"{self.expect} {self.error}" if self.error else str(self.expect)


# --------------------------------------------------------------------------- building blocks


def photo(h: int, w: int, seed: int = 0, gain: float = 1.0) -> np.ndarray:
    """uint8 RGB: a warm blob on a textured blue background (mean luma ~0.5 times ``gain``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(yy - h / 2, xx - w / 2) / (0.3 * max(1, min(h, w)))
    a = np.clip(1.5 - d, 0, 1)[..., None]
    img = a * np.array([210, 160, 130], np.float32) + (1 - a) * np.array([70, 130, 180], np.float32)
    img = (img + rng.normal(0, 12, (h, w, 3))) * gain
    return np.clip(img, 0, 255).astype(np.uint8)


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(w: int, h: int, depth: int, colour: int, rows: bytes = b"", extra: tuple[bytes, ...] = ()) -> bytes:
    """A PNG written chunk by chunk: IHDR as given (any size), ``extra`` chunks, ``rows`` deflated as IDAT.

    ``rows`` are the filtered scanlines (filter byte 0 + pixels); a bomb passes a few bytes only.
    """
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(extra)
        + _chunk(b"IDAT", zlib.compress(rows or b"\0" * 16)) + _chunk(b"IEND", b"")
    )


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG of a uint16 HxW (grey) or HxWx3 (RGB) array, big-endian as the format says."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    data = arr.astype(">u2").reshape(h, -1).view(np.uint8).reshape(h, -1)
    rows = b"".join(b"\0" + data[y].tobytes() for y in range(h))
    return png_raw(w, h, 16, colour, rows)


def jpeg_declaring(w: int, h: int) -> bytes:
    """A small valid JPEG whose SOF0 segment is patched to claim ``w`` x ``h`` (at most 65535)."""
    data = bytearray(pil_bytes(Image.fromarray(photo(16, 16)), "JPEG"))
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def gif_declaring(w: int, h: int) -> bytes:
    """A 1x1-pixel GIF whose logical screen claims ``w`` x ``h``."""
    data = bytearray(pil_bytes(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def bmp_declaring(w: int, h: int) -> bytes:
    """A 1x1 BMP whose info header claims ``w`` x ``h``."""
    data = bytearray(pil_bytes(Image.new("RGB", (1, 1)), "BMP"))
    data[18:26] = struct.pack("<ii", w, h)
    return bytes(data)


def gif_many_frames(max_bytes: int) -> bytes:
    """A 2x2 GIF with as many frames as fit in ``max_bytes`` (a few dozen bytes each): frame 0 white, the others black.

    Written by Pillow with two frames, then the second frame's bytes are repeated.
    """
    white, black = Image.new("P", (2, 2), 0), Image.new("P", (2, 2), 1)
    for im in (white, black):
        im.putpalette([255, 255, 255, 0, 0, 0])
    data = pil_bytes(white, "GIF", save_all=True, append_images=[black], duration=10, loop=0, optimize=False)
    second = data.find(b"\x21\xf9\x04", data.find(b"\x21\xf9\x04") + 1)
    assert second > 0 and data.endswith(b"\x3b")
    n = (max_bytes - len(data)) // (len(data) - 1 - second)
    return data[:second] + data[second:-1] * (n + 1) + b"\x3b"


def animated_gif(frames: list[np.ndarray]) -> bytes:
    ims = [Image.fromarray(f) for f in frames]
    return pil_bytes(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=50, loop=0)


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pil_bytes(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)


def make_zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``(name, data)`` entries, names written exactly as given (duplicates allowed)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            zf.writestr(info, data)
    return buf.getvalue()


def _patch_headers(data: bytes, local: dict[int, bytes], central: dict[int, bytes]) -> bytes:
    """Overwrite fields of the first local (PK\\x03\\x04) and central (PK\\x01\\x02) header at byte offsets."""
    out = bytearray(data)
    for sig, fields in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        i = out.find(sig)
        for off, value in fields.items():
            out[i + off:i + off + len(value)] = value
    return bytes(out)


def zip_declaring_size(data: bytes, name: str, size: int) -> bytes:
    """A one-entry zip whose headers claim ``size`` uncompressed bytes, whatever it really holds."""
    s = struct.pack("<I", size)
    return _patch_headers(make_zip([(name, data)]), {22: s}, {24: s})


def zip_flagged(name: str, data: bytes, flags: int = 0, method: int | None = None) -> bytes:
    """A one-entry zip with general-purpose ``flags`` (bit 0 = encrypted) and/or a compression ``method`` id."""
    local, central = {6: struct.pack("<H", flags)}, {8: struct.pack("<H", flags)}
    if method is not None:
        local[8], central[10] = struct.pack("<H", method), struct.pack("<H", method)
    return _patch_headers(make_zip([(name, data)], zipfile.ZIP_STORED), local, central)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostileBoundary7") -> tuple[bytes, str]:
    """A multipart/form-data body written by hand (names kept byte for byte); returns (body, content type)."""
    out = b""
    for field, filename, data in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- checks of 200 replies


def _image(reply: Reply) -> Image.Image:
    im = Image.open(io.BytesIO(reply.content))
    im.load()
    return im


def result_size(w: int, h: int, mode: str = "RGBA") -> Check:
    """The result decodes as a ``w`` x ``h`` image of ``mode`` (the input's displayed size)."""

    def check(reply: Reply) -> None:
        im = _image(reply)
        assert im.size == (w, h), f"result is {im.size[0]}x{im.size[1]}, expected {w}x{h}"
        assert im.mode == mode, f"result mode {im.mode}, expected {mode}"

    return check


def brightness_near(value: float, w: int, h: int, tol: float = 0.02) -> Check:
    """Measured brightness (X-Matting-Brightness) within ``tol`` of ``value``, and the result ``w`` x ``h``."""
    size = result_size(w, h)

    def check(reply: Reply) -> None:
        got = float(reply.headers["X-Matting-Brightness"])
        assert abs(got - value) <= tol, f"brightness {got:.4f}, expected {value:.4f} +- {tol}"
        size(reply)

    return check


def safe_download_name(expected: str | None = None) -> Check:
    """Content-Disposition is one well-formed ASCII header: ``inline; filename="<[A-Za-z0-9._-]>"``,
    optionally ``; filename*=UTF-8''<percent-encoded>``; the fallback name is ``expected`` when given."""
    pattern = re.compile(r'inline; filename="([A-Za-z0-9._-]+)"(; filename\*=UTF-8\'\'[A-Za-z0-9%._~-]+)?')

    def check(reply: Reply) -> None:
        cd = reply.headers["Content-Disposition"]
        m = pattern.fullmatch(cd)
        assert m, f"malformed Content-Disposition {cd!r}"
        assert expected is None or m.group(1) == expected, f"download name {m.group(1)!r}, expected {expected!r}"
        assert not m.group(1).startswith("."), cd
        _image(reply)

    return check


def content_type(media: str) -> Check:
    def check(reply: Reply) -> None:
        assert reply.headers["Content-Type"] == media, reply.headers["Content-Type"]
        _image(reply)

    return check


def batch_log(expected: list[tuple[str, int]]) -> Check:
    """The batch zip's log has one row per input file, in order, with these ``(file, http_status)``;
    every output path is under ``results/`` with no '..' or absolute component."""

    def check(reply: Reply) -> None:
        zf = zipfile.ZipFile(io.BytesIO(reply.content))
        log = json.loads(zf.read("log.json"))
        got = [(row["file"], row["http_status"]) for row in log]
        assert got == expected, f"log {got}, expected {expected}"
        for name in zf.namelist():
            assert name in ("log.csv", "log.json") or name.startswith("results/"), name
            assert not name.startswith("/") and ".." not in name.split("/"), name
        outputs = [row["output"] for row in log if row["status"] == "ok"]
        assert len(set(outputs)) == len(outputs) and set(outputs) <= set(zf.namelist()), outputs

    return check


# --------------------------------------------------------------------------- the corpus


def _matte(name: str, body: bytes, expect: int, error: str | None = None, **kw) -> Case:
    return Case(name, MATTE, expect, error, body=body, content_type=kw.pop("content_type", "image/png"), **kw)


def _param(name: str, params: dict[str, str] | list[tuple[str, str]], good: bytes, expect: int = 422, **kw) -> Case:
    error = "invalid_parameter" if expect == 422 else None
    query = tuple(params.items()) if isinstance(params, dict) else tuple(params)
    return Case(name, MATTE, expect, error, body=good, content_type="image/png", params=query, **kw)


def _batch_zip(name: str, data: bytes, expect: int, error: str | None = None, **kw) -> Case:
    return Case(name, BATCH, expect, error, files=(("files", "upload.zip", data),), **kw)


def image_cases(limits: LimitSettings) -> list[Case]:
    """Broken, foreign, oversized and odd images for /v1/matte."""
    rgb = photo(40, 64, seed=1)
    png, jpg = pil_bytes(Image.fromarray(rgb), "PNG"), pil_bytes(Image.fromarray(rgb), "JPEG", quality=90)
    over = limits.max_pixels + 1
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # IHDR's CRC
    bad_idat = bytearray(png)
    bad_idat[png.find(b"IDAT") + 8:png.find(b"IDAT") + 40] = b"\xa5" * 32
    text_bomb = _chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * 4_000_000, 9))
    grey = photo(30, 50, seed=2)[..., 0]
    la = np.dstack([grey, np.linspace(0, 255, 50, dtype=np.uint8)[None].repeat(30, 0)])
    pal = Image.fromarray(photo(30, 40, seed=3)).quantize(16)
    pal.info["transparency"] = 0
    first, dark = photo(36, 48, seed=4, gain=1.2), np.zeros((36, 48, 3), np.uint8)
    transparent = np.zeros((20, 30, 4), np.uint8)
    wide = photo(3, 1500, seed=5)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    return [
        _matte("empty raw body", b"", 400, "no_image"),
        Case("empty multipart file", MATTE, 400, "empty_file", files=(("file", "empty.png", b""),)),
        _matte("png signature only", png[:8], 400, "corrupt_image"),
        _matte("png cut inside IHDR", png[:20], 400, "corrupt_image"),
        _matte("png cut after IHDR", png[:33], 400, "corrupt_image"),
        _matte("png cut in half", png[: len(png) // 2], 400, "corrupt_image"),
        _matte("png without IEND", png[:-12], 200, check=result_size(64, 40), note="IDAT complete: decodes"),
        _matte("png with a bad IHDR CRC", bytes(bad_crc), 400, "corrupt_image"),
        _matte("png with corrupt deflate data", bytes(bad_idat), 400, "corrupt_image"),
        _matte("png declaring 0 x 4", png_raw(0, 4, 8, 0), 400, "corrupt_image"),
        _matte("jpeg SOI only", jpg[:3], 400, "corrupt_image", content_type="image/jpeg"),
        _matte("jpeg cut after 300 bytes", jpg[:300], 400, "corrupt_image", content_type="image/jpeg"),
        _matte("jpeg cut at 90%", jpg[: len(jpg) * 9 // 10], 400, "corrupt_image", content_type="image/jpeg"),
        _matte("jpeg without EOI", jpg[:-2], 400, "corrupt_image", content_type="image/jpeg"),
        _matte("png with a zeroed first byte", b"\0" + png[1:], 415, "not_an_image"),
        _matte("plain text", b"hello, this is not an image\n" * 10, 415, "not_an_image", content_type="text/plain"),
        _matte("html", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", 415, "not_an_image"),
        _matte("svg", b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", 415, "not_an_image"),
        _matte("postscript (never handed to Ghostscript)", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
               415, "not_an_image"),
        _matte("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", 415, "not_an_image"),
        _matte("zip sent to /v1/matte", make_zip([("a.png", png)]), 415, "not_an_image"),
        _matte("png bomb 30000 x 30000 (header only)", png_raw(30000, 30000, 8, 2), 413, "too_many_pixels"),
        _matte("png one pixel over max_pixels", png_raw(1, over, 8, 0), 413, "too_many_pixels"),
        _matte("png declaring 2^31-1 x 2^31-1", png_raw(2**31 - 1, 2**31 - 1, 8, 6), 413, "too_many_pixels"),
        _matte("jpeg SOF declaring 65000 x 65000", jpeg_declaring(65000, 65000), 413, "too_many_pixels",
               content_type="image/jpeg"),
        _matte("gif screen declaring 65535 x 65535", gif_declaring(65535, 65535), 413, "too_many_pixels",
               content_type="image/gif"),
        _matte("bmp declaring 40000 x 40000", bmp_declaring(40000, 40000), 413, "too_many_pixels"),
        _matte("png zTXt chunk inflating to 4 MB", png_raw(4, 4, 8, 0, extra=(text_bomb,)), 413, "too_many_pixels"),
        _matte("gif with ~50000 frames (first frame only)", gif_many_frames(limits.max_upload_bytes - 1000), 200,
               check=brightness_near(1.0, 2, 2), content_type="image/gif", note="2x2, white first frame"),
        _matte("16-bit RGB png", png16((photo(30, 40, seed=6).astype(np.uint16) * 257)), 200,
               check=result_size(40, 30), note="40x30"),
        _matte("16-bit grey png", png16(np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)), 200,
               check=result_size(40, 30), note="40x30"),
        _matte("CMYK jpeg", pil_bytes(cmyk, "JPEG"), 200, check=result_size(64, 40), content_type="image/jpeg",
               note="64x40"),
        _matte("palette png with a transparent index", pil_bytes(pal, "PNG"), 200, check=result_size(40, 30),
               note="40x30"),
        _matte("grey + alpha png", pil_bytes(Image.fromarray(la, "LA"), "PNG"), 200, check=result_size(50, 30),
               note="50x30"),
        _matte("fully transparent png (composited on white)", pil_bytes(Image.fromarray(transparent, "RGBA"), "PNG"),
               200, check=brightness_near(1.0, 30, 20), note="brightness 1.0"),
        _matte("1-bit png", pil_bytes(Image.fromarray(grey > 128), "PNG"), 200, check=result_size(50, 30), note="50x30"),
        _matte("interlaced (Adam7) png", _interlaced_png(photo(33, 47, seed=7)), 200, check=result_size(47, 33),
               note="47x33"),
        _matte("progressive jpeg", pil_bytes(Image.fromarray(rgb), "JPEG", progressive=True), 200,
               check=result_size(64, 40), content_type="image/jpeg", note="64x40"),
        _matte("animated gif: the first frame is used", animated_gif([first, dark, dark]), 200,
               check=brightness_near(luma(np.asarray(Image.open(io.BytesIO(animated_gif([first]))).convert("RGB"))), 48, 36),
               content_type="image/gif", note="first frame's brightness"),
        _matte("EXIF orientation 6 (rotated 90)", exif_jpeg(rgb, 6), 200, check=result_size(40, 64),
               content_type="image/jpeg", note="displayed 40x64, stored 64x40"),
        Case("EXIF orientation 8, alpha output", MATTE, 200, body=exif_jpeg(rgb, 8), content_type="image/jpeg",
             params=(("output", "alpha"),), check=result_size(40, 64, "L"), note="displayed 40x64 alpha"),
        _matte("EXIF orientation 3 (rotated 180)", exif_jpeg(rgb, 3), 200, check=result_size(64, 40),
               content_type="image/jpeg", note="64x40"),
        _matte("EXIF orientation 99 (invalid, ignored)", exif_jpeg(rgb, 99), 200, check=result_size(64, 40),
               content_type="image/jpeg", note="64x40"),
        _matte("garbage EXIF block", pil_bytes(Image.fromarray(rgb), "JPEG", exif=b"Exif\0\0" + b"\xff" * 64), 200,
               check=result_size(64, 40), content_type="image/jpeg", note="64x40"),
        _matte("1 x 1 image", pil_bytes(Image.fromarray(photo(1, 1)), "PNG"), 200, check=result_size(1, 1), note="1x1"),
        _matte("3 x 1500 sliver", pil_bytes(Image.fromarray(wide), "PNG"), 200, check=result_size(1500, 3),
               note="1500x3"),
        _matte("bmp", pil_bytes(Image.fromarray(rgb), "BMP"), 200, check=result_size(64, 40), note="64x40"),
        _matte("tiff", pil_bytes(Image.fromarray(rgb), "TIFF"), 200, check=result_size(64, 40), note="64x40"),
        _matte("webp", pil_bytes(Image.fromarray(rgb), "WEBP"), 200, check=result_size(64, 40), note="64x40"),
        _matte("png sent as image/jpeg named .jpg", png, 200, check=result_size(64, 40), content_type="image/jpeg",
               headers=(("X-Filename", "photo.jpg"),), note="sniffed, not trusted"),
        _matte("X-Filename with path traversal", png, 200, headers=(("X-Filename", "../../etc/passwd.png"),),
               check=safe_download_name("passwd-matte.png"), note="download name passwd-matte.png"),
        Case("non-ASCII multipart filename", MATTE, 200, files=(("file", "写真.png", png),),
             check=safe_download_name("image-matte.png"), note="ASCII fallback name, UTF-8 filename*"),
        Case("quotes and semicolons in the filename", MATTE, 200,
             **_raw_multipart([("file", 'a";b=c".png', png)]), check=safe_download_name(),
             note="one well-formed header"),
    ]


def _interlaced_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced PNG (Pillow cannot write one): the seven passes filtered with type 0."""
    h, w = rgb.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    rows = b""
    for x0, y0, dx, dy in passes:
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            rows += b"".join(b"\0" + sub[y].tobytes() for y in range(sub.shape[0]))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def _raw_multipart(parts: list[tuple[str, str | None, bytes]]) -> dict:
    body, ctype = multipart(parts)
    return {"body": body, "content_type": ctype}


def param_cases(good: bytes) -> list[Case]:
    """Absurd parameter values on a good image: 422 naming the parameter, or 200 where the value is fine."""
    long_colour = "#" + "f" * 10_000
    return [
        _param("threshold negative", {"threshold": "-0.1"}, good),
        _param("threshold NaN", {"threshold": "nan"}, good),
        _param("threshold infinite", {"threshold": "inf"}, good),
        _param("threshold not a number", {"threshold": "abc"}, good),
        _param("threshold repeated, the last one counts", [("threshold", "0.1"), ("threshold", "7")], good),
        _param("erosion huge", {"erosion": "1000000000"}, good),
        _param("erosion fractional", {"erosion": "2.5"}, good),
        _param("feather negative", {"feather": "-3"}, good),
        _param("quality 0", {"quality": "0"}, good),
        _param("max_side below 32", {"max_side": "31"}, good),
        _param("max_side 10^30", {"max_side": "1" + "0" * 30}, good),
        _param("max_side just over MAX_SIDE", {"max_side": str(MAX_SIDE + 1)}, good),
        _param("model path traversal", {"model": "../../etc/passwd"}, good),
        _param("model empty", {"model": ""}, good),
        _param("model unknown", {"model": "MODNet"}, good),
        _param("format gif", {"format": "gif"}, good),
        _param("format empty", {"format": ""}, good),
        _param("format 'JPG' (accepted, any case)", {"format": "JPG"}, good, 200, check=content_type("image/jpeg"),
               note="image/jpeg"),
        _param("output unknown", {"output": "mask"}, good),
        _param("background not hex", {"background": "#12345g"}, good),
        _param("background 10 kB", {"background": long_colour}, good),
        _param("decontaminate not a boolean", {"decontaminate": "maybe"}, good),
        _param("unknown parameter", {"colour": "red"}, good),
        Case("bad value in a multipart field", MATTE, 422, "invalid_parameter", files=(("file", "a.png", good),),
             fields=(("threshold", "NaN"),)),
        Case("unknown multipart field", MATTE, 422, "invalid_parameter", files=(("file", "a.png", good),),
             fields=(("__class__", "x"),)),
    ]


def multipart_cases(good: bytes, limits: LimitSettings) -> list[Case]:
    """Malformed or oversized multipart bodies."""
    body, _ = multipart([("file", "a.png", good)])
    return [
        Case("two files to /v1/matte", MATTE, 400, "bad_request", files=(("file", "a.png", good), ("file", "b.png", good))),
        Case("40 text fields", MATTE, 400, "bad_request", files=(("file", "a.png", good),),
             fields=tuple((f"f{i}", "1") for i in range(40))),
        Case("text field over 64 kB", MATTE, 400, "bad_request", files=(("file", "a.png", good),),
             fields=(("model", "x" * 70_000),)),
        _matte("multipart without a boundary", body, 400, "bad_request", content_type="multipart/form-data"),
        _matte("multipart with the wrong boundary", body, 400, "bad_request",
               content_type="multipart/form-data; boundary=somethingElse"),
        _matte("multipart cut before its end", body[: len(body) // 2], 400, "bad_request",
               content_type="multipart/form-data; boundary=hostileBoundary7"),
        Case(f"{limits.max_batch_files + 1} multipart files to /v1/batch", BATCH, 400, "bad_request",
             files=tuple(("files", f"{i}.png", good) for i in range(limits.max_batch_files + 1))),
        _matte("body over the upload limit", b"\0" * (limits.max_upload_bytes + 70_000), 413, "payload_too_large"),
    ]


def zip_cases(good: bytes, limits: LimitSettings) -> list[Case]:
    """Hostile archives for /v1/batch."""
    n_over = limits.max_batch_files + 1
    entry_over = b"\0" * (limits.max_upload_bytes + 1000)
    half_total = b"\0" * (limits.max_zip_total_bytes // 2 + 1000)
    nested = make_zip([("inner.zip", make_zip([("deeper.zip", make_zip([("a.png", good)]))]))])
    bomb_png = png_raw(30000, 30000, 8, 2)
    return [
        _batch_zip("zip entry ../evil.png", make_zip([("../evil.png", good)]), 400, "unsafe_zip_path"),
        _batch_zip("zip entry a/../../evil.png", make_zip([("ok.png", good), ("a/../../evil.png", good)]), 400,
                   "unsafe_zip_path"),
        _batch_zip("zip entry ..\\evil.png (backslash)", make_zip([("..\\evil.png", good)]), 400, "unsafe_zip_path"),
        _batch_zip("zip entry /etc/evil.png", make_zip([("/etc/evil.png", good)]), 400, "unsafe_zip_path"),
        _batch_zip("zip entry C:/evil.png", make_zip([("C:/evil.png", good)]), 400, "unsafe_zip_path"),
        _batch_zip("zip entry with a newline", make_zip([("a\nb.png", good)]), 400, "unsafe_zip_path"),
        _batch_zip("zip entry %2e%2e/x.png (literal, harmless)", make_zip([("%2e%2e/x.png", good)]), 200,
                   check=batch_log([("%2e%2e/x.png", 200)]), note="kept inside results/"),
        _batch_zip(f"zip with {n_over} entries", make_zip([(f"{i}.png", good) for i in range(n_over)]), 413,
                   "too_many_files"),
        _batch_zip("zip with 5000 empty entries", make_zip([(f"{i}.png", b"") for i in range(5000)]), 413,
                   "too_many_files"),
        _batch_zip("zip entry over max_upload_mb (deflated zeros)", make_zip([("big.png", entry_over)]), 413,
                   "payload_too_large"),
        _batch_zip("zip over max_zip_total_mb", make_zip([("a.png", half_total), ("b.png", half_total)]), 413,
                   "payload_too_large"),
        _batch_zip("zip bomb declaring 4 GB", zip_declaring_size(b"x", "a.png", 0xFFFFFFF0), 413, "payload_too_large"),
        _batch_zip("zip entry declaring 10 bytes, holding 1 MB", zip_declaring_size(b"\0" * 1_000_000, "a.png", 10),
                   400, "bad_zip"),
        _batch_zip("encrypted zip entry", zip_flagged("a.png", good, flags=1), 400, "bad_zip"),
        _batch_zip("unknown compression method 97", zip_flagged("a.png", good, method=97), 400, "bad_zip"),
        _batch_zip("zip magic then garbage", b"PK\x03\x04" + b"\x17" * 200, 400, "bad_zip"),
        _batch_zip("zip cut in half", make_zip([("a.png", good), ("b.png", good)])[: len(good)], 400, "bad_zip"),
        _batch_zip("empty zip", make_zip([]), 400, "no_files"),
        _batch_zip("zip of folders and OS metadata only",
                   make_zip([("dir/", b""), ("__MACOSX/._a.png", b"x"), (".DS_Store", b"x")]), 400, "no_files"),
        _batch_zip("nested zips are not expanded", nested, 200, check=batch_log([("inner.zip", 415)]),
                   note="inner.zip logged 415"),
        _batch_zip("non-image entries next to an image",
                   make_zip([("a.png", good), ("notes.txt", b"hi"), ("run.exe", b"MZ\x90\0")]), 200,
                   check=batch_log([("a.png", 200), ("notes.txt", 415), ("run.exe", 415)]), note="2 entries logged 415"),
        _batch_zip("png bomb inside a zip", make_zip([("bomb.png", bomb_png), ("a.png", good)]), 200,
                   check=batch_log([("bomb.png", 413), ("a.png", 200)]), note="bomb.png logged 413"),
        _batch_zip("duplicate entry names", make_zip([("a.png", good), ("a.png", good)]), 200,
                   check=batch_log([("a.png", 200), ("a.png", 200)]), note="distinct outputs"),
        Case("raw body to /v1/batch that is not a zip", BATCH, 200, body=b"just text", content_type="application/zip",
             check=batch_log([("upload", 415)]), note="one file logged 415"),
        Case("bad parameter on /v1/batch", BATCH, 422, "invalid_parameter", files=(("files", "a.png", good),),
             params=(("quality", "101"),)),
    ]


def corpus(limits: LimitSettings | None = None) -> list[Case]:
    """Every case, sized for ``limits`` (the app's ``limits`` config). Names are unique."""
    limits = limits or LimitSettings()
    good = pil_bytes(Image.fromarray(photo(32, 40, seed=9)), "PNG")
    cases = image_cases(limits) + param_cases(good) + multipart_cases(good, limits) + zip_cases(good, limits)
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


# --------------------------------------------------------------------------- sending and judging


def send(url: str, case: Case, headers: Mapping[str, str] | None = None, timeout: float = 60) -> Reply:
    """POST ``case`` to the app at ``url`` (history off unless the case sets it)."""
    hdrs = {**dict(case.headers), **(headers or {})}
    params = list(case.params)
    if not any(k == "history" for k, _ in params):
        params.append(("history", "false"))
    if case.body is not None or not case.files:
        hdrs["Content-Type"] = case.content_type
        return requests.post(url + case.endpoint, params=params, data=case.body or b"", headers=hdrs, timeout=timeout)
    files = [(field, (fname, data, "application/octet-stream")) for field, fname, data in case.files]
    files += [(k, (None, v)) for k, v in case.fields]
    return requests.post(url + case.endpoint, params=params, files=files, headers=hdrs, timeout=timeout)


def outcome(reply: Reply) -> str:
    """What the app answered, in the form of :attr:`Case.expected` (status and error code)."""
    if reply.status_code == 200:
        return "200"
    try:
        return f"{reply.status_code} {reply.json().get('error')}"
    except ValueError:
        return f"{reply.status_code} (not JSON)"


def problem(case: Case, reply: Reply) -> str | None:
    """None if ``reply`` is what ``case`` expects, else what is wrong.

    Errors must be JSON ``{error, detail, status}`` with the expected status and code and no
    traceback; a 200 must pass the case's check.
    """
    if reply.status_code != 200 and "Traceback" in reply.text:
        return "traceback in the reply"
    if reply.status_code != case.expect:
        return f"status {reply.status_code}, expected {case.expect}: {reply.text[:200]!r}"
    if case.expect != 200:
        try:
            body = reply.json()
        except ValueError:
            return f"error body is not JSON: {reply.text[:200]!r}"
        if body.get("status") != case.expect or not body.get("detail"):
            return f"error body lacks status/detail: {body}"
        if case.error and body.get("error") != case.error:
            return f"error code {body.get('error')!r}, expected {case.error!r}: {body.get('detail')}"
        return None
    if case.check is not None:
        try:
            case.check(reply)
        except Exception as e:  # noqa: BLE001 - any failure of the check is the problem to report
            return f"check failed: {type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------- running the corpus


@dataclass(frozen=True)
class Result:
    """One case's reply: what it got, what is wrong (None if right), and how long it took (s)."""

    case: Case
    got: str
    problem: str | None
    seconds: float


def replica_identities(dashboard: str, app: str = "matting") -> dict[str, tuple[str, int, str]]:
    """``replica_id -> (actor_id, pid, state)`` of every replica of ``app``, from Serve's REST API."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(dashboard).get_serve_details()
    deployments = details["applications"][app]["deployments"]
    return {
        r["replica_id"]: (r["actor_id"], int(r["pid"]), r["state"])
        for d in deployments.values()
        for r in d["replicas"]
    }


def run_cases(url: str, cases: list[Case], headers: Mapping[str, str] | None = None, log: bool = False) -> list[Result]:
    """Send every case in order and judge its reply."""
    results = []
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        reply = send(url, case, headers)
        dt = time.perf_counter() - t0
        results.append(Result(case, outcome(reply), problem(case, reply), dt))
        if log:
            print(f"[{i}/{len(cases)}] {case.name}: {results[-1].got} ({dt * 1000:.0f} ms)", flush=True)
    return results
