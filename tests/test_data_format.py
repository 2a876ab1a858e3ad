"""The seed dataset format, manifests and image decoding, on local paths, file:// and S3 (moto)."""

from __future__ import annotations

import contextlib
import io as pyio
import json
import os
import socket
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from testkit.data import luma, synthetic_pair
from matting_lib import io
from matting_lib.data.dataset import (
    DatasetError,
    clear_cache,
    find_image,
    load_sample,
    read_split,
    validate_dataset,
)
from matting_lib.data.decode import MAX_PIXELS, ImageDecodeError, ImageTooLargeError, decode_image, decode_mask
from matting_lib.data.encode import encode_png
from matting_lib.data.manifest import VAL_HOLDOUT_FRACTION, build_manifest, ensure_manifest, hold_out, read_manifest


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = pyio.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def write_dataset(root: str, rng: np.random.Generator, splits: dict[str, list[str]], jpg: tuple[str, ...] = (),
                  trimaps: tuple[str, ...] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write PNG (or lossless-checked JPEG) pairs of varied sizes; returns {name: (decoded image, alpha)}."""
    pairs = {}
    for i, name in enumerate(n for names in splits.values() for n in names):
        image, alpha = synthetic_pair(rng, 40 + 8 * i, 56 - 4 * i)
        if name in jpg:
            data = pil_bytes(Image.fromarray(image), "JPEG", quality=95)
            io.write_bytes(io.join(root, "images", f"{name}.jpg"), data)
            image = decode_image(data)
        else:
            io.write_bytes(io.join(root, "images", f"{name}.png"), encode_png(image))
        io.write_bytes(io.join(root, "masks", f"{name}.png"), encode_png(alpha))
        if name in trimaps:
            trimap = np.where(alpha > 0, 128, 0).astype(np.uint8)
            io.write_bytes(io.join(root, "trimaps", f"{name}.png"), encode_png(trimap))
        pairs[name] = (image, alpha)
    for split, names in splits.items():
        io.write_text(io.join(root, f"{split}.txt"), "\n  ".join(names) + "\n\n")
    return pairs


@pytest.fixture(params=["local", "file", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ds")
    if request.param == "file":
        return f"file://{tmp_path}/ds"
    return f"{request.getfixturevalue('s3_bucket')}/ds"


# --------------------------------------------------------------------------- round trip


def test_round_trip(root, rng):
    pairs = write_dataset(root, rng, {"train": ["a", "b", "c"], "val": ["d"]}, jpg=("b",), trimaps=("a",))
    assert read_split(root, "train") == ["a", "b", "c"]
    assert find_image(root, "b").endswith("images/b.jpg")
    for name, (image, alpha) in pairs.items():
        s = load_sample(root, name)
        assert s.image.dtype == np.uint8 and s.image.shape == image.shape
        np.testing.assert_array_equal(s.image, image)
        np.testing.assert_array_equal(s.alpha, alpha)
        assert (s.trimap is not None) == (name == "a")

    rows = build_manifest(root, progress=False)
    assert [(r["split"], r["name"]) for r in rows] == [("train", "a"), ("train", "b"), ("train", "c"), ("val", "d")]
    for r in rows:
        image, alpha = pairs[r["name"]]
        assert (r["height"], r["width"]) == alpha.shape
        assert abs(r["brightness"] - luma(image)) < 1e-6
        assert (r["trimap_uri"] is not None) == (r["name"] == "a")
        assert io.exists(r["image_uri"]) and io.exists(r["mask_uri"])
    uri = ensure_manifest(root)
    assert uri.endswith("manifest.jsonl") and io.exists(uri)
    assert read_manifest(uri) == rows
    assert [r["name"] for r in read_manifest(uri, "val")] == ["d"]
    assert validate_dataset(root, ("train", "val")).ok
    # A pair written after the images/ listing was cached is still found (one re-listing on a miss).
    image, alpha = synthetic_pair(rng, 20, 24)
    io.write_bytes(io.join(root, "images", "late.jpeg"), pil_bytes(Image.fromarray(image), "JPEG"))
    io.write_bytes(io.join(root, "masks", "late.png"), encode_png(alpha))
    assert load_sample(root, "late").image.shape == (20, 24, 3)


def test_ensure_manifest_builds_when_missing(tmp_path, rng):
    root = str(tmp_path / "ds")
    write_dataset(root, rng, {"train": ["a"]})
    uri = ensure_manifest(root, progress=False)
    assert [r["name"] for r in read_manifest(uri, "train")] == ["a"]


def _tree(root: str) -> dict[str, int]:
    """Every file under a local ``root`` with its modification time (ns)."""
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files}


def test_ensure_manifest_never_writes_into_the_dataset(tmp_path, rng):
    """Built in ``out_dir`` (a job's run folder) or the cache; the dataset's own manifest is only read."""
    root = str(tmp_path / "ds")
    write_dataset(root, rng, {"train": ["a", "b"]})
    before = _tree(root)
    in_run = ensure_manifest(root, progress=False, out_dir=str(tmp_path / "run"))
    assert in_run == str(tmp_path / "run" / "manifest.jsonl")
    cached = ensure_manifest(root, progress=False)
    assert cached.startswith(os.environ["MATTING_CACHE_DIR"]) and os.path.exists(cached)
    assert ensure_manifest(root, progress=False) == cached  # reused while the split files are unchanged
    assert _tree(root) == before
    assert [r["name"] for r in read_manifest(cached, "train")] == ["a", "b"]
    io.write_text(io.join(root, "train.txt"), "a\n")  # an edited split file: a new cache entry, not a stale one
    assert ensure_manifest(root, progress=False) != cached
    build_manifest(root, progress=False)  # the dataset's own manifest, asked for explicitly
    own = io.join(root, "manifest.jsonl")
    stamp = os.stat(own).st_mtime_ns
    assert ensure_manifest(root, progress=False, out_dir=str(tmp_path / "run2")) == own
    assert os.stat(own).st_mtime_ns == stamp and not os.path.exists(tmp_path / "run2")


def test_hold_out_is_seeded_by_name_and_documented_fraction():
    rows = [{"name": f"s{i:02d}", "split": "train"} for i in range(30)]
    train, val = hold_out(rows)
    assert len(val) == round(VAL_HOLDOUT_FRACTION * 30) == 3
    assert {r["split"] for r in val} == {"val"} and {r["split"] for r in train} == {"train"}
    assert sorted(r["name"] for r in train + val) == [r["name"] for r in rows]
    again_train, again_val = hold_out(list(reversed(rows)))  # order does not matter, the names do
    assert sorted(r["name"] for r in again_val) == sorted(r["name"] for r in val)
    assert [r["name"] for r in val] != [f"s{i:02d}" for i in range(3)]  # not simply the first ones
    assert len(hold_out(rows[:3])[1]) == 1 and len(hold_out(rows[:2])[0]) == 1  # at least one each
    with pytest.raises(DatasetError, match="val.txt"):
        hold_out(rows[:1])


def test_one_listing_per_dataset(tmp_path, rng, monkeypatch):
    root = str(tmp_path / "ds")
    write_dataset(root, rng, {"train": [f"s{i}" for i in range(8)]})
    calls = []
    real = io.listdir
    monkeypatch.setattr(io, "listdir", lambda uri: calls.append(uri) or real(uri))
    build_manifest(root, progress=False, max_workers=8)
    assert sorted(calls) == [f"{root}/images", f"{root}/trimaps"]


# --------------------------------------------------------------------------- dataset errors


@contextlib.contextmanager
def expect(exc: type[Exception], *fragments: str):
    """Like pytest.raises, and the message must contain every fragment."""
    with pytest.raises(exc) as info:
        yield info
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {info.value}"


@pytest.fixture
def local_ds(tmp_path, rng):
    root = str(tmp_path / "ds")
    write_dataset(root, rng, {"train": ["a", "b"]})
    clear_cache()
    return root


def test_missing_mask(local_ds):
    os.remove(f"{local_ds}/masks/b.png")
    with expect(DatasetError, "masks/b.png"):
        load_sample(local_ds, "b")
    with expect(DatasetError, "masks/b.png", "1 invalid"):
        build_manifest(local_ds, progress=False)
    report = validate_dataset(local_ds, raise_on_error=False)
    assert len(report.errors) == 1 and "masks/b.png" in report.errors[0]


def test_missing_image(local_ds):
    with expect(DatasetError, "'zz'", "zz.jpg", "zz.jpeg", "zz.png"):
        find_image(local_ds, "zz")


def test_size_mismatch(local_ds):
    io.write_bytes(f"{local_ds}/masks/a.png", encode_png(np.zeros((10, 12), np.uint8)))
    with expect(DatasetError, "images/a.png", "masks/a.png", "12x10"):
        load_sample(local_ds, "a")


def test_rgb_masks(local_ds):
    alpha = load_sample(local_ds, "a").alpha
    io.write_bytes(f"{local_ds}/masks/a.png", encode_png(np.repeat(alpha[..., None], 3, axis=2)))
    np.testing.assert_array_equal(load_sample(local_ds, "a").alpha, alpha)
    rgb = np.repeat(alpha[..., None], 3, axis=2)
    rgb[0, 0, 1] ^= 1
    io.write_bytes(f"{local_ds}/masks/a.png", encode_png(rgb))
    with expect(DatasetError, "masks/a.png", "differing colour channels"):
        load_sample(local_ds, "a")
    with expect(ImageDecodeError, "m.png"):
        decode_mask(encode_png(rgb), "m.png")


def test_unreadable_image(local_ds):
    io.write_bytes(f"{local_ds}/images/a.png", b"this is not an image at all")
    with expect(DatasetError, "images/a.png"):
        load_sample(local_ds, "a")


def test_split_errors(local_ds):
    io.write_text(f"{local_ds}/val.txt", "\n   \n")
    with expect(DatasetError, "split 'val' in", "is empty"):
        read_split(local_ds, "val")
    with expect(DatasetError, "test.txt"):
        read_split(local_ds, "test")
    with expect(DatasetError, "test.txt"):
        validate_dataset(local_ds, ("train", "test"))


def test_manifest_errors(local_ds, tmp_path):
    with expect(DatasetError, "nope.jsonl", "not found"):
        read_manifest(str(tmp_path / "nope.jsonl"))
    uri = str(tmp_path / "m.jsonl")
    build_manifest(local_ds, out_uri=uri, progress=False)
    good = io.read_text(uri).splitlines()
    io.write_text(uri, good[0] + "\n\n{not json\n")
    with expect(DatasetError, "m.jsonl:3", "malformed"):
        read_manifest(uri)
    row = json.loads(good[0])
    del row["height"]
    io.write_text(uri, good[0] + "\n" + json.dumps(row) + "\n")
    with expect(DatasetError, "m.jsonl:2", "height"):
        read_manifest(uri)
    io.write_text(uri, "\n".join(good) + "\n")
    with expect(DatasetError, "split 'val'", "empty"):
        read_manifest(uri, "val")


def test_s3_reads_survive_an_interrupted_aiohttp_import(s3_bucket):
    """A Ray task cancelled mid-import (Ray Data cancels in-flight map tasks when a consumer dies)
    leaves aiohttp's submodules in sys.modules without aiohttp; seen in a pooled worker after a
    training worker was SIGKILLed, every later S3 read there failed with "module aiohttp has no
    attribute http_exceptions". The same state, in a fresh interpreter, must still read from the
    moto bucket."""
    import subprocess
    import sys

    from matting_lib import io as mio
    from testkit import ROOT

    mio.write_bytes(f"{s3_bucket}/probe.bin", b"probe")
    code = (
        "import sys, aiohttp.http_exceptions; del sys.modules['aiohttp']; "  # what the cancelled import left
        "from matting_lib import io; "
        f"sys.stdout.write(io.read_bytes('{s3_bucket}/probe.bin').decode())"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "probe", r.stderr[-2000:]


def test_broken_s3_endpoint_fails_fast(monkeypatch):
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is released
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        for call in (lambda: read_split("s3://bucket/ds", "train"), lambda: load_sample("s3://bucket/ds", "a")):
            start = time.monotonic()
            with pytest.raises(io.StorageError, match="s3://bucket/ds"):
                call()
            assert time.monotonic() - start < 30
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


# --------------------------------------------------------------------------- decoding


def test_empty_and_garbage_bytes():
    with expect(ImageDecodeError, "e.png", "empty"):
        decode_image(b"", "e.png")
    with expect(ImageDecodeError, "g.jpg"):
        decode_image(b"GIF87?not really" * 4, "g.jpg")


@pytest.mark.parametrize("data, shown", [
    (b"this is not an image", 'starts with the text "this is " (74 68 69 73 20 69 73 20)'),
    (b"\x00\x01\xffab", "starts with the bytes 00 01 ff 61 62;"),
    (b'<a href="x">', "starts with the bytes 3c 61 20 68 72 65 66 3d;"),  # markup and quotes: hex only
])
def test_an_unrecognised_file_shows_its_first_bytes_readably_never_as_a_python_repr(data, shown):
    with expect(ImageDecodeError, "t.png", "not a recognised image format", shown) as e:
        decode_image(data, "t.png")
    assert "b'" not in str(e.value) and 'b"' not in str(e.value) and "\\x" not in str(e.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(rng, fmt):
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = pil_bytes(Image.fromarray(image), fmt)
    for cut in (len(data) // 2, int(len(data) * 0.9)):
        with expect(ImageDecodeError, "t.img", "truncated"):
            decode_image(data[:cut], "t.img")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny 1x1 PNG whose IHDR claims ``width`` x ``height`` (valid CRC)."""
    data = bytearray(encode_png(np.zeros((1, 1), np.uint8)))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def test_decompression_bomb_rejected_before_decoding():
    start = time.monotonic()
    with expect(ImageDecodeError, "bomb.png", "max_pixels"):
        decode_image(png_declaring(8000, 8000), "bomb.png")  # 64 Mpx: over our 50 Mpx, under PIL's limit
    with expect(ImageTooLargeError, "bomb.png", "400000000 pixels", f"max_pixels={MAX_PIXELS}") as e:
        decode_mask(png_declaring(20000, 20000), "bomb.png")  # over PIL's own hard limit too: still our limit quoted
    assert str(2 * Image.MAX_IMAGE_PIXELS) not in str(e.value)
    with expect(ImageTooLargeError, "400000000 pixels", "max_pixels=1234") as e:
        decode_image(png_declaring(20000, 20000), "bomb.png", max_pixels=1234)
    assert str(2 * Image.MAX_IMAGE_PIXELS) not in str(e.value)
    with expect(ImageTooLargeError, f"hard limit of {2 * Image.MAX_IMAGE_PIXELS} pixels"):  # a max_pixels above PIL's
        decode_image(png_declaring(20000, 20000), "bomb.png", max_pixels=10**12)
    with expect(ImageDecodeError, "small.png", "max_pixels=100"):
        decode_image(encode_png(np.zeros((20, 20), np.uint8)), "small.png", max_pixels=100)
    assert time.monotonic() - start < 1.0


def test_exif_orientation(rng):
    im = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    assert decode_image(pil_bytes(im, "JPEG", exif=exif.tobytes())).shape == (50, 30, 3)


def test_cmyk_jpeg_to_rgb():
    out = decode_image(pil_bytes(Image.new("CMYK", (8, 6), (255, 0, 0, 0)), "JPEG", quality=100))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - [0, 255, 255]).max() <= 3  # pure cyan


def test_16bit_png():
    import cv2

    grey16 = (np.arange(48 * 32, dtype=np.uint32).reshape(48, 32) * 41 % 65536).astype(np.uint16)
    expected = np.round(grey16 / 257).astype(np.uint8)
    np.testing.assert_array_equal(decode_mask(encode_png(grey16)), expected)
    image = decode_image(encode_png(grey16))
    assert image.dtype == np.uint8 and image.shape == (48, 32, 3)
    np.testing.assert_array_equal(image[..., 1], expected)
    rgb16 = np.stack([grey16, grey16[::-1], 65535 - grey16], axis=2)
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1].copy())  # OpenCV writes BGR
    out = decode_image(buf.tobytes())
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - np.round(rgb16 / 257)).max() <= 1


def test_palette_transparency_and_rgba_composited_over_white():
    pal = Image.new("P", (4, 3), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 2), 1)
    out = decode_image(pil_bytes(pal, "PNG", transparency=0))
    assert out.shape == (3, 4, 3)
    assert out[2, 1].tolist() == [200, 100, 50] and out[0, 0].tolist() == [255, 255, 255]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = [[255, 0], [128, 255]]
    out = decode_image(encode_png(rgba))
    assert out[0, 0, 0] == 100 and out[0, 1, 0] == 255 and abs(int(out[1, 0, 0]) - 178) <= 1


def test_gif_first_frame_and_grey():
    frames = [Image.new("RGB", (10, 8), (255, 0, 0)), Image.new("RGB", (10, 8), (0, 0, 255))]
    data = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode_image(data)
    assert out.shape == (8, 10, 3) and out[0, 0].tolist() == [255, 0, 0]
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_array_equal(decode_image(encode_png(grey)), np.repeat(grey[..., None], 3, axis=2))


def test_mask_modes():
    alpha = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    cutout = np.zeros((3, 4, 4), np.uint8)
    cutout[..., 3] = alpha  # a mask stored as transparency of a constant colour
    np.testing.assert_array_equal(decode_mask(encode_png(cutout)), alpha)
    ambiguous = cutout.copy()
    ambiguous[..., :3] = alpha[::-1, :, None]  # grey varies too
    with expect(ImageDecodeError, "amb.png", "ambiguous"):
        decode_mask(encode_png(ambiguous), "amb.png")
    one_bit = Image.fromarray(alpha > 100).convert("1")
    np.testing.assert_array_equal(decode_mask(pil_bytes(one_bit, "PNG")), np.where(alpha > 100, 255, 0))
