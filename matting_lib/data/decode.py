"""Decode untrusted image bytes into fixed-format numpy arrays, with clear errors.

Two entry points (encoding is :mod:`matting_lib.data.encode`):

- :func:`decode_image` -> ``uint8 (H, W, 3)`` RGB, whatever the stored mode was.
- :func:`decode_mask`  -> ``uint8 (H, W)`` alpha in ``[0, 255]`` (0 = background).

Safety: only the formats in :data:`ALLOWED_FORMATS` are opened (Pillow's other plugins,
e.g. EPS, which runs Ghostscript, are never tried on untrusted bytes). The header's dimensions
are checked against ``max_pixels`` *before* the pixels are decoded (``PIL.Image.open`` only
reads the header), so a small file declaring a huge size (a decompression bomb) is rejected
cheaply. PIL's own hard limit (``2 * Image.MAX_IMAGE_PIXELS``) still applies on top of
``max_pixels`` (its error still quotes ``max_pixels``, the limit callers set and clients can act on,
unless ``max_pixels`` is above it). Truncated files raise instead of decoding partially: this module sets PIL's
process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` to False at import and always calls ``.load()``.

Errors: every failure is an :class:`ImageDecodeError`; its subclass says what kind
(:class:`EmptyImageError`, :class:`UnsupportedImageError`, :class:`ImageTooLargeError`,
:class:`CorruptImageError`), so callers (the Serve app's HTTP statuses) never parse messages.

Mode handling of :func:`decode_image`:

- EXIF orientation is applied (``ImageOps.exif_transpose``), so the array is upright.
- Animated images (GIF, APNG, WebP): the first frame (the other frames are never read, so
  a file with a huge number of frames costs no more than its first).
- ``L``/``1``/``I;16``/``I`` grayscale -> replicated to 3 channels; 16-bit values are
  scaled to 8 bits with ``round(v / 257)`` (65535 -> 255). 16-bit *RGB* PNGs are reduced to
  8 bits by PIL itself (high byte).
- ``CMYK``/``YCbCr``/``LAB``/``HSV`` -> converted to RGB by PIL.
- Transparency (``RGBA``, ``LA``, ``P`` with a transparent index): **composited over white**
  (:data:`RGBA_BACKGROUND`), i.e. the image as a viewer shows it. Fully opaque pixels are
  unchanged, so an RGBA file with an all-255 alpha decodes exactly like dropping alpha;
  colours hidden under alpha = 0 (often garbage left by editors) never reach the network.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, never decode partially

MAX_PIXELS = 50_000_000
"""Default largest accepted ``height * width`` (about 7070 x 7070)."""

RGBA_BACKGROUND = (255, 255, 255)
"""Colour that transparent images are composited over in :func:`decode_image`."""


ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
"""Pillow format names that :func:`decode_image` / :func:`decode_mask` open (the JPEG plugin also opens MPO camera files)."""

SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}
"""Leading bytes of the allowed formats: a file that starts with one but has no readable header is corrupt, not foreign."""


class ImageDecodeError(ValueError):
    """Bytes could not be decoded into an image or mask. The message names the file."""


class EmptyImageError(ImageDecodeError):
    """The data is empty (0 bytes)."""


class UnsupportedImageError(ImageDecodeError):
    """Not an image in one of :data:`ALLOWED_FORMATS`, or a pixel mode that cannot be converted."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than ``max_pixels``, or a decompression bomb, detected before the pixels are decoded."""


class CorruptImageError(ImageDecodeError):
    """A recognised format whose header or pixel data is truncated or corrupt."""


def _signature(data: bytes) -> str | None:
    """The allowed format whose magic bytes ``data`` starts with, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in SIGNATURES.items() if data.startswith(magic)), None)


PREVIEW_BYTES = 8
"""How many leading bytes an unrecognised file's error shows."""

_PLAIN = frozenset(range(0x20, 0x7F)) - set(b'"\\<>&`')
"""Bytes an error may show as text: printable ASCII without quotes, backslashes or markup characters."""


def _preview(data: bytes) -> str:
    """The first bytes of an unrecognised file for an error message people read (the web UI shows it):
    ``the text "this is " (74 68 69 73 20 69 73 20)`` when every one is plain printable ASCII, else
    ``the bytes 00 01 ff 61``; never a Python ``b'...'`` repr, and nothing a client sent that is not hex
    or plain ASCII."""
    head = data[:PREVIEW_BYTES]
    hexed = " ".join(f"{b:02x}" for b in head)
    return f'the text "{head.decode("ascii")}" ({hexed})' if all(b in _PLAIN for b in head) else f"the bytes {hexed}"


def _bomb_message(name: str, pil_message: str, max_pixels: int) -> str:
    """The error of a header over PIL's hard limit, in terms of the caller's ``max_pixels`` (the limit a
    client can act on; PIL's own number, ``2 * Image.MAX_IMAGE_PIXELS``, means nothing to them).
    PIL's only says so when ``max_pixels`` is set above it, as then PIL's is the limit in force."""
    found = re.search(r"\((\d+) pixels\)", pil_message)  # "Image size (400000000 pixels) exceeds limit of ..."
    pixels = int(found.group(1)) if found else None
    hard = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    size = f"{pixels} pixels" if pixels is not None else "too many pixels"
    if hard is not None and max_pixels > hard:
        return f"{name}: image is {size}, more than the decoder's hard limit of {hard} pixels; rejected before decoding"
    return f"{name}: image is {size}, more than max_pixels={max_pixels}; rejected before decoding"


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open the header, check the size, load the pixels (first frame) and apply EXIF orientation."""
    if not data:
        raise EmptyImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(_bomb_message(name, str(e), max_pixels)) from None
    except UnidentifiedImageError:
        fmt = _signature(data)
        if fmt is not None:
            raise CorruptImageError(f"{name}: {fmt} signature but the header is truncated or corrupt") from None
        raise UnsupportedImageError(
            f"{name}: not a recognised image format (it starts with {_preview(data)}; accepted: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except ValueError as e:  # Pillow's limit on compressed metadata (PNG text chunks) is a ValueError
        if "too large" in str(e).lower():
            raise ImageTooLargeError(f"{name}: metadata too large, rejected before decoding ({e})") from None
        raise CorruptImageError(f"{name}: cannot read image header (ValueError: {e})") from None
    except Exception as e:  # noqa: BLE001 - corrupt headers raise anything from SyntaxError to struct.error
        raise CorruptImageError(f"{name}: cannot read image header ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise CorruptImageError(f"{name}: invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image is {w}x{h} = {w * h} pixels, more than max_pixels={max_pixels}; rejected before decoding"
        )
    try:
        im.load()  # Image.open is positioned on the first frame; the others are never read
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data: OSError, SyntaxError, ValueError, zlib.error...
        raise CorruptImageError(f"{name}: corrupt or truncated image data ({type(e).__name__}: {e})") from None
    return im


def _to_uint8_gray(im: Image.Image, name: str) -> np.ndarray:
    """A single-channel PIL image as uint8 HxW; 16-bit and 32-bit integer modes scaled by 1/257."""
    if im.mode in ("L", "1"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if im.mode.startswith("I"):  # I;16, I;16B, I;16L, I (PNG 16-bit grey may open as I)
        arr = np.asarray(im).astype(np.float64)
        return np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
    raise UnsupportedImageError(f"{name}: unsupported single-channel mode {im.mode!r}")


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """uint8 HxWx4 over a solid colour -> uint8 HxWx3."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    if a.min() >= 1.0:
        return np.ascontiguousarray(rgba[..., :3])
    bg = np.asarray(background, dtype=np.float32)
    out = rgba[..., :3].astype(np.float32) * a + bg * (1.0 - a)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes (JPEG, PNG, GIF, WebP, BMP, TIFF...) to RGB.

    Args:
        data: the encoded file.
        name: file name or URI used in error messages.
        max_pixels: largest accepted ``height * width``, checked from the header before decoding.

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``, RGB, upright (EXIF orientation applied).

    Raises:
        ImageDecodeError: empty, unrecognised, truncated, corrupt or too-large data (the subclass says which).
    """
    im = _open(data, name, max_pixels)
    if im.mode in ("P", "PA", "LA", "La", "RGBa"):  # palettes may carry transparency
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        return _composite(np.asarray(im, dtype=np.uint8), RGBA_BACKGROUND)
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode in ("L", "1") or im.mode.startswith("I"):
        gray = _to_uint8_gray(im, name)
        return np.repeat(gray[..., None], 3, axis=2)
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()  # CMYK, YCbCr, LAB, HSV, RGBX
    except Exception as e:  # noqa: BLE001
        raise UnsupportedImageError(f"{name}: cannot convert mode {im.mode!r} to RGB ({e})") from None


def decode_rgba(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to RGBA, keeping transparency (opaque files get alpha 255).

    Returns:
        ``uint8`` array of shape ``(H, W, 4)``, upright.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    im = _open(data, name, max_pixels)
    if im.mode in ("L", "1") or im.mode.startswith("I"):
        grey = _to_uint8_gray(im, name)
        return np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    try:
        return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()
    except Exception as e:  # noqa: BLE001
        raise UnsupportedImageError(f"{name}: cannot convert mode {im.mode!r} to RGBA ({e})") from None


def decode_matte(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A matte as a client sends it: the alpha channel of a file that has one (a cut-out, RGBA or
    grey+alpha PNG), else its grey values (an alpha matte). Returns ``uint8`` (H, W), 255 = opaque.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    im = _open(data, name, max_pixels)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"), dtype=np.uint8)[..., 3].copy()
    if im.mode in ("L", "1") or im.mode.startswith("I"):
        return _to_uint8_gray(im, name)
    try:
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except Exception as e:  # noqa: BLE001
        raise UnsupportedImageError(f"{name}: cannot read a matte of mode {im.mode!r} ({e})") from None


def decode_mask(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an alpha mask to single-channel 8-bit.

    Accepted: 8-bit grey (``L``, ``1``), 16-bit grey (scaled by 1/257), and RGB(A)/LA/palette
    files whose colour channels are identical (grey stored as colour). When the file has
    an alpha channel that is not fully opaque, it is used as the mask only if the grey
    channel is constant (a cut-out stored as transparency); if both vary, the file is
    ambiguous and rejected.

    Returns:
        ``uint8`` array of shape ``(H, W)``, 0 = background, 255 = foreground.

    Raises:
        ImageDecodeError: undecodable data, RGB with differing channels, or an ambiguous alpha.
    """
    im = _open(data, name, max_pixels)
    if im.mode in ("L", "1") or im.mode.startswith("I"):
        return _to_uint8_gray(im, name)
    if im.mode not in ("RGB", "RGBA", "LA"):
        try:
            im = im.convert("RGBA" if im.mode in ("P", "PA", "La", "RGBa") else "RGB")
        except Exception as e:  # noqa: BLE001
            raise UnsupportedImageError(f"{name}: cannot read mask of mode {im.mode!r} ({e})") from None
    arr = np.asarray(im, dtype=np.uint8)
    n_colour = 1 if im.mode == "LA" else 3
    colour, alpha = arr[..., :n_colour], (arr[..., n_colour] if arr.shape[2] > n_colour else None)
    gray = colour[..., 0]
    if n_colour == 3 and not (np.array_equal(gray, colour[..., 1]) and np.array_equal(gray, colour[..., 2])):
        raise ImageDecodeError(
            f"{name}: mask must be single-channel grey, but it is {im.mode} with differing colour channels"
        )
    if alpha is not None and alpha.min() < 255:
        if gray.min() == gray.max():
            return np.ascontiguousarray(alpha)
        raise ImageDecodeError(
            f"{name}: ambiguous mask: both the grey and the alpha channel vary; store the mask as 8-bit grey"
        )
    return np.ascontiguousarray(gray)
