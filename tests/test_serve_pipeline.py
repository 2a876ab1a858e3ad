"""The ingress's pipeline and API-key check without Serve or Ray: a stub model client, plain asyncio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from matting_lib.routing import BrightnessRouter
from serve_app.auth import ApiKeyAuth
from serve_app.cache import ResultCache
from serve_app.config import ServeConfig
from serve_app.errors import ApiError
from serve_app.params import MatteParams
from serve_app.pipeline import MattingPipeline
from testkit.serve import encode, photo, upload_head


class StubModels:
    """Answers every call with a flat alpha; records calls; serves ``checkpoints``."""

    def __init__(self, checkpoints: dict[str, str]):
        self.checkpoints = dict(checkpoints)
        self.calls: list[tuple[str, tuple[int, int], int | None]] = []
        self.refines: list[str] = []
        self.hints: list = []

    async def call(self, model: str, rgb: np.ndarray, max_side: int | None, refine: str = "auto", hints=None) -> dict:
        self.calls.append((model, rgb.shape[:2], max_side))
        self.refines.append(refine)
        self.hints.append(hints)
        return {"alpha": np.full(rgb.shape[:2], 200, np.uint8), "checkpoint": self.checkpoints[model], "forward_ms": 1.0,
                "refine": "off" if refine == "auto" else refine}

    async def infos(self) -> dict:
        return {name: {"name": name, "checkpoint": uri} for name, uri in self.checkpoints.items()}


def _pipeline(models: StubModels) -> MattingPipeline:
    return MattingPipeline(models, BrightnessRouter(), ResultCache(10_000_000), max_pixels=1_000_000, versions=models.checkpoints)


def test_routes_by_brightness_caches_and_postprocesses():
    models = StubModels({"base": "b1.pt", "lowlight": "l1.pt"})
    pipe = _pipeline(models)
    bright, dark = encode(photo(48, 64, "bright")), encode(photo(48, 64, "dark"))

    first = asyncio.run(pipe.matte(bright, "a.png", MatteParams()))
    assert not first.cache_hit and first.result.model == "base" and first.result.checkpoint == "b1.pt"
    assert (first.result.width, first.result.height) == (64, 48) and first.result.media_type == "image/png"
    assert first.result.body[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(first.timings) >= {"key", "decode", "model", "forward", "encode"}

    again = asyncio.run(pipe.matte(bright, "a.png", MatteParams()))
    assert again.cache_hit and again.result.body == first.result.body
    assert len(models.calls) == 1  # the cache answered

    low = asyncio.run(pipe.matte(dark, "b.png", MatteParams()))
    assert low.result.model == "lowlight" and low.result.brightness < BrightnessRouter().threshold
    forced = asyncio.run(pipe.matte(dark, "b.png", MatteParams(model="base")))
    assert forced.result.model == "base" and not forced.cache_hit


def test_an_absent_max_side_reaches_the_model_as_keep():
    """HTTP's absent ``max_side`` (None in MatteParams) is the server's configured side: the
    pipeline translates it to matting_lib.resize.KEEP, the one value that means that."""
    from matting_lib.resize import KEEP

    models = StubModels({"base": "b1.pt", "lowlight": "l1.pt"})
    pipe = _pipeline(models)
    data = encode(photo(32, 32, "bright"))
    asyncio.run(pipe.matte(data, "a.png", MatteParams()))
    asyncio.run(pipe.matte(data, "a.png", MatteParams(max_side=64)))
    assert [c[2] for c in models.calls] == [KEEP, 64]


def test_a_swapped_checkpoint_is_a_new_cache_entry():
    models = StubModels({"base": "b1.pt", "lowlight": "l1.pt"})
    pipe = _pipeline(models)
    data = encode(photo(32, 32, "bright"))
    asyncio.run(pipe.matte(data, "a.png", MatteParams()))
    models.checkpoints["base"] = "b2.pt"
    pipe.versions_checked = 0.0  # the version TTL has passed
    out = asyncio.run(pipe.matte(data, "a.png", MatteParams()))
    assert not out.cache_hit and out.result.checkpoint == "b2.pt" and pipe.versions["base"] == "b2.pt"


def test_refine_reaches_the_model_is_part_of_the_cache_key_and_is_reported():
    models = StubModels({"base": "b1.pt", "lowlight": "l1.pt"})
    pipe = _pipeline(models)
    data = encode(photo(48, 64, "bright"))
    default = asyncio.run(pipe.matte(data, "a.png", MatteParams()))
    classical = asyncio.run(pipe.matte(data, "a.png", MatteParams(refine="Classical")))
    again = asyncio.run(pipe.matte(data, "a.png", MatteParams(refine="classical")))
    assert models.refines == ["auto", "classical"]  # the third was a cache hit
    assert not classical.cache_hit and again.cache_hit
    assert (default.result.refine, classical.result.refine, again.result.refine) == ("off", "classical", "classical")
    with pytest.raises(ValueError):
        MatteParams(refine="sharp")


def test_undecodable_bytes_are_a_client_error():
    pipe = _pipeline(StubModels({"base": "b1.pt", "lowlight": "l1.pt"}))
    with pytest.raises(ApiError) as e:
        asyncio.run(pipe.matte(b"not an image", "x.png", MatteParams()))
    assert 400 <= e.value.status < 500


def _request(path: str, headers: dict[str, str]):
    from starlette.requests import Request

    return Request({"type": "http", "method": "GET", "path": path, "query_string": b"", "root_path": "",
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_api_key_dependency_is_built_from_the_config():
    auth = ApiKeyAuth.from_config(ServeConfig(api_key="sesame", api_key_env=""))
    auth.check(_request("/v1/models", {"Authorization": "Bearer sesame"}))
    auth.check(_request("/healthz", {}))  # pages and probes stay open
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}, {"Authorization": "Basic sesame"}):
        with pytest.raises(ApiError) as e:
            auth.check(_request("/v1/matte", headers))
        assert e.value.status == 401
    open_auth = ApiKeyAuth.from_config(ServeConfig(api_key="", api_key_env=""))
    open_auth.check(_request("/v1/matte", {}))  # no key configured: open


def test_a_client_that_hangs_up_mid_upload_is_one_info_line_with_499(tmp_path, caplog):
    """The ingress's FastAPI app (routes, handlers, service with stub models) under a real uvicorn
    on loopback, without Serve's proxy in front: every hang-up reaches the app as starlette's
    ClientDisconnect, deterministically. Each must be one INFO line with 499 on ``ray.serve``,
    never an ERROR or a traceback. (Through Serve, where the proxy may cancel first:
    tests/test_serve_edges.py.)"""
    import logging
    import socket
    import threading
    import time

    import uvicorn

    from serve_app.api import build_api
    from serve_app.config import HistorySettings
    from serve_app.service import IngressService
    from serve_app.run import free_port

    config = ServeConfig(api_key="", api_key_env="",
                         history=HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=str(tmp_path / "results")))
    app = build_api(IngressService(config, StubModels({"base": "b1.pt", "lowlight": "l1.pt"})))
    # Records of ray.serve are collected by a handler of their own: whether that logger also
    # propagates to the root (and so to caplog) depends on what configured Ray's logging first.
    serve_logger, records = logging.getLogger("ray.serve"), []
    collect = logging.Handler(logging.DEBUG)
    collect.emit = records.append
    serve_logger.addHandler(collect)
    old_level = serve_logger.level
    serve_logger.setLevel(logging.INFO)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started

        def lines(path: str) -> list[logging.LogRecord]:
            return [r for r in records if f"POST {path} 499" in r.getMessage()]

        for path, boundary in (("/v1/matte", ""), ("/v1/batch", "B0undary")):
            head = upload_head(path, 100_000, boundary)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head + b"--B0undary\r\n" + b"x" * 1000)
                time.sleep(0.3)  # the app is waiting for the rest of the body
            deadline = time.monotonic() + 10
            while not lines(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            (record,) = lines(path)
            assert record.levelno == logging.INFO and "the client disconnected" in record.getMessage()
        bad = {id(r): r for r in [*records, *caplog.records] if r.levelno >= logging.WARNING or r.exc_info}
        assert not bad, [r.getMessage() for r in bad.values()]
    finally:
        serve_logger.removeHandler(collect)
        serve_logger.setLevel(old_level)
        server.should_exit = True
        thread.join(timeout=10)


# --------------------------------------------------------------------------- the app in process (no Serve, no sockets)


def _app(tmp_path, checkpoints: dict[str, str], **config):
    from serve_app.api import build_api
    from serve_app.config import HistorySettings
    from serve_app.service import IngressService

    cfg = ServeConfig(**{"api_key": "", "api_key_env": "", **config},
                      history=HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=str(tmp_path / "results")))
    return build_api(IngressService(cfg, StubModels(checkpoints)))


def _call(app, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """One request through the ASGI app: (status, headers, body)."""
    return asyncio.run(_acall(app, method, path, body, headers))


async def _acall(app, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """:func:`_call` in the running event loop (requests at once share one loop, as in a replica)."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {"content-length": str(len(body)), **(headers or {})}.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent, out = [False], {"status": 0, "headers": {}, "body": b""}

    async def receive():
        if sent[0]:
            await asyncio.sleep(3600)
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["headers"], out["body"]


def _matte(app, query: str, data: bytes):
    return _call(app, "POST", f"/v1/matte?{query}", data, {"content-type": "image/png", "x-filename": "a.png"})


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_a_nan_or_infinite_float_is_refused_as_not_finite(tmp_path, value):
    import json

    app = _app(tmp_path, {"base": "b1.pt", "lowlight": "l1.pt"})
    data = encode(photo(32, 32, "bright"))
    for where in ("query", "form"):
        if where == "query":
            status, _, body = _matte(app, f"threshold={value}", data)
        else:
            form = (b"--B\r\nContent-Disposition: form-data; name=\"threshold\"\r\n\r\n" + value.encode() +
                    b"\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
                    b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--B--\r\n")
            status, _, body = _call(app, "POST", "/v1/matte", form, {"content-type": "multipart/form-data; boundary=B"})
        detail = json.loads(body)["detail"]
        assert status == 422 and detail.startswith("threshold:") and "finite number" in detail, (where, detail)
        assert "less than" not in detail and "greater than" not in detail
    status, _, body = _matte(app, "threshold=2", data)
    assert status == 422 and "less than or equal to 1" in json.loads(body)["detail"]  # a finite value out of range: as before


def test_model_names_are_case_insensitive_and_answer_with_the_configured_name(tmp_path):
    from serve_app.params import check_against_limits

    names = ["base", "lowlight"]
    assert check_against_limits(MatteParams(model="BASE"), names).model == "base"
    assert check_against_limits(MatteParams(model="LowLight"), names).model == "lowlight"
    assert check_against_limits(MatteParams(model="AUTO"), names).model == "auto"
    with pytest.raises(ApiError) as e:
        check_against_limits(MatteParams(model="base2"), names)
    assert e.value.status == 422 and e.value.detail.startswith("model: unknown model 'base2'")

    app = _app(tmp_path, {"base": "b1.pt", "lowlight": "l1.pt"})
    data = encode(photo(32, 32, "dark"))
    status, headers, _ = _matte(app, "model=BASE", data)
    assert status == 200 and headers["x-matting-model"] == "base" and headers["x-matting-cache"] == "miss"
    status, headers, _ = _matte(app, "model=base", data)
    assert status == 200 and headers["x-matting-cache"] == "hit"  # one cache entry, whatever the case
    status, headers, _ = _matte(app, "model=Auto", data)
    assert status == 200 and headers["x-matting-model"] == "lowlight"


def test_model_names_must_differ_in_more_than_case():
    from matting_lib.config import ConfigError
    from serve_app.config import ModelSpec

    with pytest.raises(ConfigError, match="ignoring case"):
        ServeConfig(models=(ModelSpec("base", "a.pt"), ModelSpec("Base", "b.pt"), ModelSpec("lowlight", "c.pt")))


def test_clients_see_a_checkpoint_by_its_file_name_never_the_servers_path(tmp_path):
    import json

    from serve_app.replica import checkpoint_label

    assert checkpoint_label("/srv/matting/models/base.pt") == "base.pt"
    assert checkpoint_label("models/lowlight.pt") == "lowlight.pt"
    assert checkpoint_label("file:///srv/matting/models/base.onnx") == "base.onnx"
    assert checkpoint_label("s3://bucket/models/base-v2.pt") == "s3://bucket/models/base-v2.pt"  # not a machine path
    assert checkpoint_label("https://user:secret@host.example/m/base.pt?X-Sig=abc") == "https://host.example/m/base.pt"

    base, low = str(tmp_path / "srv" / "base.pt"), "s3://bucket/models/lowlight.pt"
    app = _app(tmp_path, {"base": base, "lowlight": low})
    status, headers, _ = _matte(app, "model=base", encode(photo(32, 32, "bright")))
    assert status == 200 and headers["x-matting-checkpoint"] == "base.pt"
    status, headers, _ = _matte(app, "model=lowlight", encode(photo(32, 32, "bright")))
    assert status == 200 and headers["x-matting-checkpoint"] == low
    status, _, body = _call(app, "GET", "/v1/models")
    assert status == 200 and str(tmp_path) not in body.decode()
    assert {m["name"]: m["checkpoint"] for m in json.loads(body)["models"]} == {"base": "base.pt", "lowlight": low}


def test_the_cache_key_still_tells_checkpoints_with_the_same_file_name_apart():
    models = StubModels({"base": "/srv/v1/base.pt", "lowlight": "l1.pt"})
    pipe = _pipeline(models)
    data = encode(photo(32, 32, "bright"))
    asyncio.run(pipe.matte(data, "a.png", MatteParams()))
    models.checkpoints["base"] = "/srv/v2/base.pt"  # a new model under the same file name
    pipe.versions_checked = 0.0
    out = asyncio.run(pipe.matte(data, "a.png", MatteParams()))
    assert not out.cache_hit and out.result.checkpoint == "/srv/v2/base.pt"


def test_an_image_bomb_is_refused_quoting_the_services_own_pixel_limit():
    import struct
    import zlib

    from PIL import Image

    def png_declaring(w: int, h: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))

    pipe = _pipeline(StubModels({"base": "b1.pt", "lowlight": "l1.pt"}))  # max_pixels=1_000_000
    for w, h in ((2000, 2000), (30000, 30000)):  # over the service's limit; over Pillow's hard limit as well
        with pytest.raises(ApiError) as e:
            asyncio.run(pipe.matte(png_declaring(w, h), "bomb.png", MatteParams()))
        assert e.value.status == 413 and e.value.code == "too_many_pixels"
        assert "max_pixels=1000000" in e.value.detail and f"{w * h}" in e.value.detail
        assert str(2 * Image.MAX_IMAGE_PIXELS) not in e.value.detail, e.value.detail


def test_a_file_that_is_no_image_is_described_without_a_python_bytes_repr(tmp_path):
    import json

    app = _app(tmp_path, {"base": "b1.pt", "lowlight": "l1.pt"})
    status, _, body = _matte(app, "", b"this is not an image")
    error = json.loads(body)
    assert status == 415 and error["error"] == "not_an_image"
    assert 'starts with the text "this is "' in error["detail"] and "b'" not in error["detail"], error["detail"]


# --------------------------------------------------------------------------- corrections and hints at the ingress


def _multipart(files: dict[str, tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    parts = [f'--B\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in (fields or {}).items()]
    parts += [f'--B\r\nContent-Disposition: form-data; name="{k}"; filename="{n}"\r\nContent-Type: image/png\r\n\r\n'.encode()
              + data + b"\r\n" for k, (n, data) in files.items()]
    return b"".join(parts) + b"--B--\r\n", {"content-type": "multipart/form-data; boundary=B"}


def test_hints_that_do_not_fit_the_image_are_refused_before_the_model(tmp_path):
    import json

    app = _app(tmp_path, {"base": "b1.pt", "lowlight": "l1.pt"})
    models = app.state.service.models
    image = encode(photo(40, 60, "bright"))
    cases = [
        ({"file": ("a.png", image)}, {"box": "0,0,61,40"}, 422, "box: box 0,0,61,40 must satisfy"),
        ({"file": ("a.png", image)}, {"box": "1,2,3"}, 422, "box: Value error, box must be 'x0,y0,x1,y1'"),
        ({"file": ("a.png", image), "hints": ("h.png", encode(np.zeros((40, 61), np.uint8)))}, {}, 422,
         "hints: the hints image is 61x40, the image 60x40"),
        ({"file": ("a.png", image), "hints": ("h.png", b"junk")}, {}, 422, "hints: hints image: not a recognised"),
        ({"file": ("a.png", image), "other": ("b.png", image)}, {}, 400, "2 images in one request"),
    ]
    for files, fields, status, start in cases:
        body, headers = _multipart(files, fields)
        got, _, answer = _call(app, "POST", "/v1/matte", body, headers)
        detail = json.loads(answer)["detail"]
        assert (got, detail[:len(start)]) == (status, start), detail
    assert models.calls == []  # nothing reached a model
    marks = np.full((40, 60), 128, np.uint8)
    marks[5:10, 5:10] = 255
    body, headers = _multipart({"file": ("a.png", image), "hints": ("h.png", encode(marks))}, {"box": "2,3,50,38"})
    status, headers, _ = _call(app, "POST", "/v1/matte", body, headers)
    assert status == 200 and headers["x-matting-hints"] == "box+strokes"
    sent = models.hints[-1]
    assert sent.box == (2, 3, 50, 38) and sent.marks.sum() == 25 and sent.marks[5:10, 5:10].min() == 1
    status, headers, _ = _call(app, "POST", "/v1/matte", *_multipart({"file": ("a.png", image)}))
    assert status == 200 and headers["x-matting-hints"] == "none" and models.hints[-1] is None


def test_corrections_are_stored_per_api_key_in_the_seed_format(tmp_path):
    import json

    from matting_lib.data.corrections import CorrectionStore, tenant_of
    from matting_lib.data.dataset import load_sample, read_split
    from serve_app.config import CorrectionSettings

    store = str(tmp_path / "corrections")
    rgb = photo(40, 60, "bright", seed=3)
    cutout = np.dstack([rgb, np.zeros((40, 60), np.uint8)])
    cutout[10:30, 15:45, 3] = 255
    cutout[10:30, 15, 3] = 128
    apps = {key: _app(tmp_path, {"base": "b1.pt", "lowlight": "l1.pt"}, api_key=key,
                      corrections=CorrectionSettings(store_uri=store)) for key in ("", "k-one")}
    body, headers = _multipart({"file": ("cat.png", encode(rgb)), "alpha": ("m.png", encode(cutout))}, {"model": "base"})
    status, _, answer = _call(apps[""], "POST", "/v1/corrections", body, headers)
    saved = json.loads(answer)
    assert status == 201 and saved["tenant"] == "public" and saved["count"] == 1
    root = CorrectionStore(store).folder("public")
    assert read_split(root, "train") == [saved["id"]]
    sample = load_sample(root, saved["id"])
    np.testing.assert_array_equal(sample.image, rgb)
    np.testing.assert_array_equal(sample.alpha, cutout[..., 3])  # a cut-out's alpha channel is the matte
    assert sample.trimap[20, 15] == 128 and sample.trimap[20, 30] == 255 and sample.trimap[0, 0] == 0

    auth = {**headers, "authorization": "Bearer k-one"}
    status, _, answer = _call(apps["k-one"], "POST", "/v1/corrections", body, auth)
    assert status == 201 and json.loads(answer)["tenant"] == tenant_of("k-one") != "public"
    assert json.loads(answer)["count"] == 1  # its own folder: the public one is not counted
    status, _, answer = _call(apps[""], "GET", "/v1/corrections")
    listed = json.loads(answer)
    assert status == 200 and listed["count"] == 1 and listed["items"][0]["id"] == saved["id"]
    assert listed["items"][0]["name"] == "cat.png" and listed["items"][0]["model"] == "base"
    stored = [p.read_bytes() for p in (tmp_path / "corrections" / tenant_of("k-one")).rglob("*") if p.is_file()]
    assert len(stored) == 5 and not any(b"k-one" in b for b in stored)  # the key itself is never stored
    for key_files, fields, status_want, start in [
        ({"file": ("a.png", encode(rgb))}, {}, 400, "missing file field(s) alpha"),
        ({"file": ("a.png", encode(rgb)), "alpha": ("m.png", encode(np.zeros((40, 61), np.uint8)))}, {}, 422,
         "alpha: the corrected matte is 61x40, the image 60x40"),
        ({"file": ("a.png", encode(rgb)), "alpha": ("m.png", encode(cutout))}, {"history_id": "f" * 32}, 422,
         "history_id: no history entry"),
        ({"file": ("a.png", encode(rgb)), "alpha": ("m.png", encode(cutout))}, {"colour": "red"}, 422, "colour: unknown field"),
        ({"file": ("a.png", b"junk"), "alpha": ("m.png", encode(cutout))}, {}, 415, "a.png: not a recognised"),
    ]:
        body, headers = _multipart(key_files, fields)
        status, _, answer = _call(apps[""], "POST", "/v1/corrections", body, headers)
        detail = json.loads(answer)["detail"]
        assert (status, detail[:len(start)]) == (status_want, start), (status, detail)
    assert CorrectionStore(store).tenants() == sorted(["public", tenant_of("k-one")])
    assert len(CorrectionStore(store).list("public")) == 1  # the refused ones stored nothing


# --------------------------------------------------------------------------- admission by decoded megapixels (issue 27)


def test_the_pixel_budget_admits_in_order_refuses_with_retry_after_and_caps_one_image_at_the_whole_budget():
    from serve_app.admission import PixelBudget

    async def scenario():
        budget = PixelBudget(capacity_mp=2.0, wait_s=0.05, retry_after_s=7)
        a = await budget.acquire(1_500_000)
        with pytest.raises(ApiError) as refused:
            await budget.acquire(1_000_000)  # 1.5 + 1.0 > 2.0, and nobody gives back within wait_s
        assert refused.value.status == 503 and refused.value.code == "overloaded"
        assert refused.value.headers == {"Retry-After": "7"} and "megapixels" in refused.value.detail
        assert budget.in_flight == 1.5  # the refused request holds nothing
        budget.wait_s = 30
        order: list[str] = []

        async def take(name: str, pixels: int) -> None:
            async with budget.hold(pixels):
                order.append(name)
                assert budget.in_flight <= budget.capacity
                await asyncio.sleep(0)

        waiting = [asyncio.create_task(take("big", 2_000_000)), asyncio.create_task(take("small", 100_000))]
        await asyncio.sleep(0.01)
        assert order == [] and budget.stats()["waiting"] == 2  # the small one does not overtake the big one
        budget.release(a)
        await asyncio.gather(*waiting)
        assert order == ["big", "small"] and budget.in_flight == 0
        huge = await budget.acquire(50_000_000)  # larger than the whole budget: runs alone instead of never
        assert huge == 2.0
        budget.release(huge)
        return budget.stats()

    stats = asyncio.run(scenario())
    assert stats["refused"] == 1 and stats["admitted"] == 4 and stats["peak_mp"] <= 2.0


class SlowModels(StubModels):
    """A stub whose calls take a while and which records how many images it holds at once."""

    def __init__(self, checkpoints):
        super().__init__(checkpoints)
        self.holding = 0
        self.most = 0
        self.retries = 0  # /v1/stats shows it

    async def call(self, *args, **kwargs):
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            await asyncio.sleep(0.02)
            return await super().call(*args, **kwargs)
        finally:
            self.holding -= 1


def test_concurrent_requests_past_the_budget_wait_their_turn_and_the_budget_is_shown_in_stats(tmp_path):
    import json

    from serve_app.api import build_api
    from serve_app.config import AdmissionSettings, HistorySettings
    from serve_app.service import IngressService

    cfg = ServeConfig(api_key="", api_key_env="", admission=AdmissionSettings(max_megapixels=0.005, wait_s=60),
                      history=HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=str(tmp_path / "results")))
    models = SlowModels({"base": "b1.pt", "lowlight": "l1.pt"})
    svc = IngressService(cfg, models)
    app = build_api(svc)
    images = [encode(photo(50, 60, "bright", seed=i)) for i in range(4)]  # 3000 px each: one at a time fits 5000

    async def all_at_once():
        return await asyncio.gather(*(_acall(app, "POST", "/v1/matte?history=false", d,
                                             {"content-type": "image/png", "x-filename": "a.png"}) for d in images))

    statuses = [s for s, _, _ in asyncio.run(all_at_once())]
    assert statuses == [200] * 4 and models.most == 1  # admitted one by one, none refused
    _, _, body = _call(app, "GET", "/v1/stats")
    adm = json.loads(body)["admission"]
    assert adm["admitted"] == 4 and adm["refused"] == 0 and adm["in_flight_mp"] == 0 and adm["peak_mp"] <= 0.005


def test_past_the_budget_a_request_and_a_batch_get_503_with_retry_after_then_200(tmp_path):
    import json

    from serve_app.config import AdmissionSettings

    app = _app(tmp_path, {"base": "b1.pt", "lowlight": "l1.pt"},
               admission=AdmissionSettings(max_megapixels=1, wait_s=0.1, retry_after_s=3))
    budget = app.state.service.budget
    held = asyncio.run(budget.acquire(1_000_000))  # another request holds the whole budget
    data = encode(photo(32, 32, "bright"))
    status, headers, body = _matte(app, "history=false", data)
    assert status == 503 and headers["retry-after"] == "3", body
    assert json.loads(body) == {"error": "overloaded", "status": 503, "detail": json.loads(body)["detail"]}
    form, form_headers = _multipart({"a": ("a.png", data), "b": ("b.png", encode(photo(32, 32, "dark")))})
    status, headers, body = _call(app, "POST", "/v1/batch?history=false", form, form_headers)
    assert status == 503 and headers["retry-after"] == "3" and json.loads(body)["error"] == "overloaded"
    budget.release(held)
    assert _matte(app, "history=false", data)[0] == 200
    assert _call(app, "POST", "/v1/batch?history=false", form, form_headers)[0] == 200
    assert budget.stats()["refused"] == 3 and budget.in_flight == 0


# --------------------------------------------------------------------------- a total deadline per request body (issue 27)


def test_a_drip_fed_body_gets_408_at_the_total_deadline_though_no_gap_trips_the_idle_timeout():
    from starlette.requests import Request

    from serve_app.uploads import read_body

    sent = []

    async def drip():  # one byte at a time, well inside the idle timeout, never finishing
        await asyncio.sleep(0.01)
        sent.append(1)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def whole():
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"1000")], "query_string": b""}

    async def read(receive, **kw):
        return await read_body(Request(scope, receive), 10_000, **kw)

    with pytest.raises(ApiError) as late:
        asyncio.run(read(drip, timeout_s=5.0, total_s=0.3))
    assert late.value.status == 408 and late.value.code == "request_timeout"
    assert "not complete within 0.3 s" in late.value.detail and " of 1000 bytes" in late.value.detail
    assert late.value.headers == {"Connection": "close"} and len(sent) > 3  # it was fed, slowly, the whole time
    assert asyncio.run(read(whole, timeout_s=5.0, total_s=0.3)) == b"x" * 100


class HazyModels(StubModels):
    """A model that finds no subject: a faint 0.08 haze everywhere (what the shipped ones give on a plain wall)."""

    async def call(self, model, rgb, max_side, refine="auto", hints=None):
        answer = await super().call(model, rgb, max_side, refine, hints)
        return {**answer, "alpha": np.full(rgb.shape[:2], 20, np.uint8)}


def test_an_empty_result_is_clear_not_a_faint_haze_and_a_real_matte_keeps_its_soft_values(tmp_path):
    import cv2

    def alpha_of(models) -> tuple[np.ndarray, bool]:
        pipe = MattingPipeline(models, BrightnessRouter(), ResultCache(0), max_pixels=1_000_000, versions=models.checkpoints)
        out = asyncio.run(pipe.matte(encode(photo(40, 50, "bright")), "a.png", MatteParams(output="alpha")))
        return cv2.imdecode(np.frombuffer(out.result.body, np.uint8), cv2.IMREAD_UNCHANGED), out.result.empty

    alpha, empty = alpha_of(HazyModels({"base": "b.pt", "lowlight": "l.pt"}))
    assert empty and alpha.max() == 0  # was 20 (0.08) everywhere
    alpha, empty = alpha_of(StubModels({"base": "b.pt", "lowlight": "l.pt"}))
    assert not empty and alpha.min() == alpha.max() == 200

    class GlassModels(StubModels):  # no opaque pixel, but a see-through subject at 0.3 on a clear background
        async def call(self, model, rgb, max_side, refine="auto", hints=None):
            answer = await super().call(model, rgb, max_side, refine, hints)
            a = np.full(rgb.shape[:2], 20, np.uint8)
            a[10:30, 10:40] = 77
            return {**answer, "alpha": a}

    alpha, empty = alpha_of(GlassModels({"base": "b.pt", "lowlight": "l.pt"}))
    assert empty and alpha[10:30, 10:40].min() == 77 and alpha.sum() == 77 * 20 * 30  # the glass stays, the haze goes
