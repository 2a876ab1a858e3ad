"""Hostile input: the corpus against one real app, property-based fuzzing of the parsers, access checks.

- The whole of :mod:`testkit.hostile` goes to ONE running app (deployed with an API key,
  like ``serve deploy``); every reply must be the documented status and JSON error (or a 200
  that passes its check), and afterwards the replicas must be the very same ones (ids and
  process ids from Serve's REST API) and a normal request must still work.
- Hypothesis fuzzes, without Ray, what parses untrusted bytes and values:
  :func:`matting_lib.data.decode.decode_image`, :mod:`serve_app.uploads` (multipart, zips,
  names) and :mod:`serve_app.params`: either a valid result or the module's documented error,
  never anything else, within a time bound.
- Access: every ``/v1`` route of the FastAPI route table answers 401 without the key or with a
  wrong one, and history ids cannot be bent into paths.
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import re
import secrets
import time
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from testkit.hostile import replica_identities, run_cases
from matting_lib.data.decode import ImageDecodeError, decode_image
from serve_app.config import HistorySettings, LimitSettings, app_entry
from serve_app.errors import ApiError
from serve_app.history import History
from serve_app.params import MAX_SIDE, MatteParams, check_against_limits, merge_params
from serve_app.uploads import UploadedFile, expand_batch, output_name, parse_upload
from testkit.hostile import BATCH, MATTE, corpus, make_zip, photo, pil_bytes
from testkit.serve import deploy_and_wait, get, make_checkpoint, post, remove_app, serve_yaml_for_test

API_KEY = "hostile-" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {API_KEY}"}
FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
"""Modest example counts keep the fuzz tests near 15 s together; no example database is written."""
FUZZ_BOUND_S = 3.0
"""Longest one parse may take (generous: the CPU is shared; a real problem takes minutes)."""


# --------------------------------------------------------------------------- the corpus against a real app


@pytest.fixture(scope="module")
def app(ray_cluster, serve_port, tmp_path_factory):
    """The app with two tiny models and an API key; ``url``, ``dashboard``, ``limits``, ``replicas`` at start.

    The models run inside the ingress (``placement: ingress``, as ``make serve`` runs them): the
    hostile bytes and the forward passes share the one process that must not die. (Separate model
    deployments are the placement of tests/test_serve_app.py and tests/test_serve_edges.py.)"""
    tmp = tmp_path_factory.mktemp("hostile")
    checkpoints = {name: make_checkpoint(tmp / f"{name}.pt", seed) for seed, name in enumerate(("base", "lowlight"), 1)}
    config = serve_yaml_for_test(tmp, checkpoints, serve_port, args={"api_key": API_KEY, "model_deployment": {"placement": "ingress"}})
    url = deploy_and_wait(ray_cluster["dashboard"], config)
    limits = LimitSettings(**app_entry(config)["args"]["limits"])
    try:
        yield SimpleNamespace(url=url, dashboard=ray_cluster["dashboard"], limits=limits,
                              replicas=replica_identities(ray_cluster["dashboard"]))
    finally:
        remove_app(config)


def test_corpus_is_broad():
    cases = corpus(LimitSettings(max_upload_mb=2, max_pixels=4_000_000, max_batch_files=8, max_zip_total_mb=3))
    assert len(cases) >= 50
    statuses = {c.expect for c in cases}
    assert {200, 400, 413, 415, 422} <= statuses
    assert {c.endpoint for c in cases} == {MATTE, BATCH}
    assert sum(c.expect == 200 for c in cases) >= 15 and all(c.check for c in cases if c.expect == 200)
    assert all(c.error for c in cases if c.expect != 200)


@pytest.mark.timeout(240)
def test_every_hostile_case_gets_its_documented_answer_and_no_replica_dies(app):
    cases = corpus(app.limits)
    results = run_cases(app.url, cases, AUTH)
    wrong = [f"{r.case.name}: {r.problem}" for r in results if r.problem]
    assert not wrong, "\n".join(wrong)
    slow = [(r.case.name, round(r.seconds, 1)) for r in results if r.seconds > 20]
    assert not slow, slow

    after = replica_identities(app.dashboard)
    assert after == app.replicas, (app.replicas, after)  # same replica ids, actor ids and pids
    assert {state for _, _, state in after.values()} == {"RUNNING"}
    assert get(f"{app.url}/readyz").status_code == 200
    rgb = photo(45, 70, seed=11)
    r = post(f"{app.url}/v1/matte", data=pil_bytes(Image.fromarray(rgb), "PNG"), headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (70, 45)


# --------------------------------------------------------------------------- access


def _walk(routes: list, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every APIRoute, descending into included routers.

    ``serve.ingress`` includes the class's routes as a router; FastAPI >= 0.165 keeps it as one
    ``_IncludedRouter`` entry (``original_router`` + ``include_context.prefix``).
    """
    from fastapi.routing import APIRoute

    out = []
    for route in routes:
        if isinstance(route, APIRoute):
            out += [(method, prefix + route.path) for method in route.methods]
        elif hasattr(route, "original_router"):
            out += _walk(route.original_router.routes, prefix + route.include_context.prefix)
    return out


def _v1_routes() -> list[tuple[str, str]]:
    """(method, path) of every /v1 route in the app's route table (in the OpenAPI page or not)."""
    from serve_app.api import router as fastapi_app

    return sorted((m, p) for m, p in _walk(fastapi_app.routes) if p.startswith("/v1"))


BAD_CREDENTIALS = [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": API_KEY},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": f"Bearer {API_KEY}x"},
    {"Authorization": f"Bearer {API_KEY[:-1]}"},
    {"Authorization": "Bearer "},
    {"X-Api-Key": API_KEY},
]


@pytest.mark.timeout(120)
def test_every_v1_route_needs_the_key(app):
    routes = _v1_routes()
    assert {("POST", "/v1/matte"), ("POST", "/v1/batch"), ("GET", "/v1/history"), ("GET", "/v1/history/{entry_id}"),
            ("DELETE", "/v1/history/{entry_id}")} <= set(routes)
    good = pil_bytes(Image.fromarray(photo(30, 30, seed=12)), "PNG")
    made = post(f"{app.url}/v1/matte", data=good, headers={**AUTH, "Content-Type": "image/png"})
    entry = made.headers["X-Matting-History-Id"]
    for method, path in routes:
        url = app.url + path.replace("{entry_id}", entry)
        for creds in BAD_CREDENTIALS:
            for params in ({}, {"threshold": "5", "limit": "0"}):  # bad values must not be judged before the key
                r = requests.request(method, url, params=params, data=good, headers={"Content-Type": "image/png", **creds},
                                     timeout=30)
                assert r.status_code == 401, (method, path, creds, params, r.status_code, r.text[:200])
                assert r.json()["error"] == "unauthorized" and r.headers["WWW-Authenticate"] == "Bearer"
    assert get(f"{app.url}/v1/history/{entry}", headers=AUTH).status_code == 200  # the unauthorised DELETEs did nothing
    assert get(f"{app.url}/healthz").status_code == 200 and get(f"{app.url}/readyz").status_code == 200


HOSTILE_IDS = [
    "..", "../results", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%252e%252e%252f",
    "..%5C..%5Cwindows", "%2Fetc%2Fpasswd", "%00", "{id}%0A", "{id}%00", "{ID}", "{id}.png", "{id}%2F..%2F{id}",
    "{id}0", "{short}", "' OR '1'='1", "*", "%", "０" * 32,
]


@pytest.mark.timeout(120)
def test_history_ids_cannot_reach_other_files(app):
    good = pil_bytes(Image.fromarray(photo(30, 30, seed=13)), "PNG")
    ids = [post(f"{app.url}/v1/matte", data=good, params={"threshold": t}, headers={**AUTH, "Content-Type": "image/png"})
           .headers["X-Matting-History-Id"] for t in ("0.1", "0.2")]
    for i in ids:  # 32 hex digits of a version-4 uuid: 122 random bits, not guessable
        assert re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{19}", i), i
    assert ids[0] != ids[1]
    real = ids[0]
    for template in HOSTILE_IDS:
        hostile = template.format(id=real, ID=real.upper(), short=real[:31])
        for suffix in ("", "/result", "/thumbnail"):
            for method in ("GET", "DELETE") if not suffix else ("GET",):
                r = requests.request(method, f"{app.url}/v1/history/{hostile}{suffix}", headers=AUTH, timeout=30)
                assert r.status_code in (404, 405), (hostile, suffix, method, r.status_code, r.text[:200])
                assert r.json()["status"] == r.status_code and "Traceback" not in r.text
    assert get(f"{app.url}/v1/history/{real}/result", headers=AUTH).status_code == 200  # nothing was deleted


def test_history_get_refuses_every_malformed_id_without_touching_storage(tmp_path):
    store = tmp_path / "store"
    history = History(HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=str(store)))
    entry = history.add(kind="image", name="a.png", model="base", brightness=0.5, params={}, width=1, height=1,
                         media_type="image/png", ext="png", body=b"x", thumbnail_source=None)
    assert history.get(entry.id) == entry

    @FUZZ
    @given(st.one_of(st.text(max_size=80), st.sampled_from([entry.id + "\n", entry.id.upper(), "../" + entry.id,
                                                           "/" + entry.id, entry.id + "/../x"])))
    def prop(entry_id: str) -> None:
        got = history.get(entry_id)
        assert got is None or (got == entry and entry_id == entry.id)

    prop()
    assert history.read_result(entry) == b"x"


# --------------------------------------------------------------------------- fuzzing the parsers (no Ray)


def _seeds() -> list[bytes]:
    rgb = photo(24, 32, seed=14)
    im = Image.fromarray(rgb)
    return [
        pil_bytes(im, "PNG"), pil_bytes(im, "JPEG", quality=80), pil_bytes(im.convert("P"), "GIF"),
        pil_bytes(im, "WEBP"), pil_bytes(im, "BMP"), pil_bytes(im, "TIFF"), pil_bytes(im.convert("LA"), "PNG"),
        pil_bytes(im, "JPEG", progressive=True),
    ]


SEEDS = _seeds()


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed file with a few byte flips, an insertion, a deletion and/or a truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif len(data) > 1:
            del data[i]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _decodes_or_documented_error(data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        rgb = decode_image(data, "fuzz", max_pixels=1_000_000)
    except ImageDecodeError as e:
        assert str(e).startswith("fuzz: ")
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert 0 < rgb.shape[0] * rgb.shape[1] <= 1_000_000
    assert time.perf_counter() - t0 < FUZZ_BOUND_S


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_arbitrary_bytes(data):
    _decodes_or_documented_error(data)


@settings(FUZZ, max_examples=150)
@given(mutated(SEEDS))
def test_decode_mutated_images(data):
    _decodes_or_documented_error(data)


ZIP_SEED = make_zip([("a.png", SEEDS[0]), ("dir/b.jpg", SEEDS[1]), ("c.txt", b"hello" * 50)])
ZIP_LIMITS = dict(max_files=8, max_entry_bytes=200_000, max_total_bytes=300_000)


def _check_files(files: list[UploadedFile]) -> None:
    assert 1 <= len(files) <= ZIP_LIMITS["max_files"]
    used: set[str] = set()
    for f in files:
        assert len(f.data) <= ZIP_LIMITS["max_entry_bytes"]
        assert not f.name.startswith("/") and ".." not in f.name.replace("\\", "/").split("/")
        out = output_name(f.name, "png", used)
        assert not out.startswith("/") and ".." not in out.split("/") and out.endswith(".png")
    assert len(used) == len(files)


def _expand_or_documented_error(files: list[UploadedFile]) -> None:
    t0 = time.perf_counter()
    try:
        got = expand_batch(files, **ZIP_LIMITS)
    except ApiError as e:
        assert e.status in (400, 413) and e.detail
    else:
        _check_files(got)
    assert time.perf_counter() - t0 < FUZZ_BOUND_S


@FUZZ
@given(mutated([ZIP_SEED]))
def test_zip_parsing_of_mutated_archives(data):
    _expand_or_documented_error([UploadedFile("u.zip", data)])


@FUZZ
@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=64)), min_size=0, max_size=10))
def test_zip_entry_names(entries):
    try:
        data = make_zip(entries)
    except (ValueError, UnicodeEncodeError):  # names zipfile itself cannot write (e.g. surrogates)
        return
    _expand_or_documented_error([UploadedFile("u.zip", data)])


def _request(content_type: str):
    from starlette.requests import Request

    return Request({"type": "http", "method": "POST", "path": "/v1/matte", "headers": [(b"content-type", content_type.encode())]})


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated([b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
                                                   + SEEDS[0][:200] + b"\r\n--B\r\nContent-Disposition: form-data; name=\"threshold\""
                                                   b"\r\n\r\n0.5\r\n--B--\r\n"])),
       st.sampled_from(["multipart/form-data; boundary=B", "multipart/form-data", "multipart/form-data; boundary=\"B\"",
                        "image/png", "multipart/form-data; boundary=" + "B" * 200]))
def test_multipart_parsing(body, content_type):
    try:
        upload = asyncio.run(parse_upload(_request(content_type), body, max_files=2))
    except ApiError as e:
        assert e.status == 400 and e.detail.startswith("malformed multipart upload")
    else:
        assert len(upload.files) <= 2 and len(upload.fields) <= 32
        used: set[str] = set()
        for f in upload.files:  # a client's names, only ever used through output_name and as display text
            out = output_name(f.name, "png", used)
            assert not posixpath.isabs(out) and ".." not in out.split("/")


FIELDS = list(MatteParams.model_fields)
VALUES = st.one_of(
    st.text(max_size=30), st.sampled_from(["nan", "-inf", "inf", "1e400", "-0", "0x10", "true", "1_000", " 5 ", "#fff",
                                           "jpg", "auto", "base", "rgba", "", "\0", "9" * 400]),
    st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str),
)


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), VALUES, max_size=6))
def test_parameter_parsing(form):
    t0 = time.perf_counter()
    try:
        params = check_against_limits(merge_params(MatteParams(), form), ["base", "lowlight"])
    except ApiError as e:
        assert e.status == 422 and e.detail
    else:
        assert set(form) <= set(FIELDS)
        assert 0.0 <= params.threshold <= 1.0 and params.threshold == params.threshold  # not NaN
        assert 1 <= params.quality <= 100 and params.erosion >= 0 and params.feather >= 0
        assert params.model in ("auto", "base", "lowlight") and params.format in ("png", "jpeg", "webp")
        assert params.max_side is None or 32 <= params.max_side <= MAX_SIDE
        params.postprocess()  # accepted by matting_lib as well
    assert time.perf_counter() - t0 < FUZZ_BOUND_S


def test_output_names_of_hostile_paths_stay_inside():
    used: set[str] = set()
    for name in ["../x.png", "a/../../b.png", "/etc/passwd", "C:\\x.png", "..", ".", "", "a//b.png", "...", "\0.png"]:
        out = output_name(name, "png", used)
        assert not posixpath.isabs(out) and ".." not in out.split("/") and "" not in out.split("/"), (name, out)
    assert len(used) == 10
