"""The Serve app on a real local cluster over real HTTP.

One application per module, deployed like ``serve deploy serve_app/config.yaml`` (through
the dashboard's REST API, with test checkpoints, a free port and short autoscaling windows)
and reused by every test. Tests run in file order: the replica-kill, hot swap and autoscaling
tests change the running app, and the last test restarts it with the models inside the ingress
and an API key.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import threading
import uuid
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from matting_lib.postprocess import PostprocessParams, apply
from matting_lib.inference.predictor import Predictor
from matting_lib.routing import DEFAULT_THRESHOLD
from serve_app.api import parse_server_timing
from serve_app.params import MAX_SIDE
from serve_app.replica import checkpoint_label
from testkit.data import luma
from testkit.serve import (
    decode, deploy, deploy_and_wait, encode, get, make_checkpoint, photo, post, running_replicas,
    remove_app, serve_yaml_for_test, wait_until,
)

pytestmark = pytest.mark.timeout(240)

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def svc(ray_cluster, serve_port, s3_server, tmp_path_factory):
    """The deployed app: ``url``, the Serve ``config`` it runs, its checkpoints, ``tmp``, and
    ``bucket``: the moto S3 bucket that holds its corrections (as on a cluster)."""
    import boto3

    tmp = tmp_path_factory.mktemp("serve_app")
    bucket = f"s3://serve-app-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket[len("s3://"):])
    checkpoints = {name: make_checkpoint(tmp / f"{name}.pt", seed) for seed, name in enumerate(("base", "lowlight", "spare"), 1)}
    config = serve_yaml_for_test(tmp, checkpoints, serve_port, fast_scaling="spare",  # only spare autoscales quickly
                                 args={"corrections": {"store_uri": f"{bucket}/corrections"}})
    config["applications"][0]["args"]["models"][2]["backend"] = "torch"  # the others: auto = ONNX Runtime on CPU
    # Batching is off in the shipped CPU config; on here, so the batched path stays tested.
    config["applications"][0]["args"]["model_deployment"].update(max_batch_size=4, batch_wait_timeout_s=0.1)
    url = deploy_and_wait(ray_cluster["dashboard"], config)
    try:
        yield SimpleNamespace(url=url, config=config, checkpoints=checkpoints, tmp=tmp, dashboard=ray_cluster["dashboard"],
                              bucket=bucket)
    finally:
        remove_app(config)


def matte(url: str, data: bytes, params: dict | None = None, raw: bool = False, **kw):
    if raw:
        return post(f"{url}/v1/matte", params=params, data=data, headers={"Content-Type": "image/png", **kw.pop("headers", {})}, **kw)
    return post(f"{url}/v1/matte", params=params, files={"file": ("photo.png", data, "image/png")}, **kw)


def as_array(data: bytes) -> np.ndarray:
    return np.asarray(decode(data))


def local_alpha(checkpoint: str, rgb: np.ndarray) -> np.ndarray:
    """The model's alpha computed in this process (max_side 256, as the test config)."""
    return Predictor.from_checkpoint(checkpoint, device="cpu", max_side=256, subject_prior=False).predict(rgb)  # as deployed in tests


# --------------------------------------------------------------------------- routing


def test_dark_goes_to_lowlight_bright_to_base(svc):
    for light, expected in (("bright", "base"), ("dark", "lowlight")):
        rgb = photo(120, 160, light, seed=3)
        r = matte(svc.url, encode(rgb))
        assert r.status_code == 200, r.text
        assert r.headers["X-Matting-Model"] == expected
        brightness = float(r.headers["X-Matting-Brightness"])
        assert brightness == pytest.approx(luma(rgb), abs=0.01)
        assert (brightness < DEFAULT_THRESHOLD) == (expected == "lowlight")
        assert r.headers["X-Matting-Checkpoint"] == checkpoint_label(svc.checkpoints[expected]) == f"{expected}.pt"


def test_forcing_a_model_and_raw_body(svc):
    dark = encode(photo(64, 80, "dark", seed=4))
    r = matte(svc.url, dark, {"model": "base"}, raw=True)
    assert r.status_code == 200, r.text
    assert r.headers["X-Matting-Model"] == "base"
    assert float(r.headers["X-Matting-Brightness"]) < DEFAULT_THRESHOLD  # still measured and reported


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("h,w", [(97, 143), (300, 420)])  # 300x420 is above max_side=256: upsampled
def test_alpha_is_the_models_at_input_size(svc, h, w):
    rgb = photo(h, w, "bright", seed=5)
    r = matte(svc.url, encode(rgb), {"output": "alpha", "model": "base"})
    assert r.status_code == 200, r.text
    got = as_array(r.content)
    assert got.shape == (h, w)
    want = np.rint(local_alpha(svc.checkpoints["base"], rgb) * 255)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_parameters_change_the_output_as_specified(svc):
    rgb = photo(90, 120, "bright", seed=6)
    data = encode(rgb)
    # The replicas answer 8-bit mattes (serve_app/model.py); post-processing runs on those.
    alpha = np.rint(local_alpha(svc.checkpoints["base"], rgb) * 255).astype(np.uint8)
    cases = [
        {"output": "rgba"},
        {"output": "alpha", "threshold": 0.5},
        {"output": "alpha", "erosion": 7},
        {"output": "alpha", "feather": 4},
        {"output": "composite", "background": "#ff0000", "format": "png"},
        {"output": "rgba", "decontaminate": "true"},
    ]
    outputs = []
    for params in cases:
        r = matte(svc.url, data, {"model": "base", **params})
        assert r.status_code == 200, (params, r.text)
        got = as_array(r.content).astype(int)
        pp = PostprocessParams(**{k: (v == "true" if k == "decontaminate" else v) for k, v in params.items()})
        want = as_array(apply(rgb, alpha, pp)).astype(int)
        assert got.shape == want.shape, params
        assert np.abs(got - want).max() <= 2, params
        outputs.append(got)
    base_alpha = outputs[0][..., 3]
    assert not np.array_equal(outputs[1], base_alpha)  # threshold changed something
    assert np.all((outputs[1] == 0) | (outputs[1] >= 127))
    assert outputs[2].sum() < base_alpha.sum()  # erosion shrinks the matte
    assert outputs[4].shape == (90, 120, 3)


@pytest.mark.parametrize("fmt,magic,mode", [("jpeg", b"\xff\xd8", "RGB"), ("webp", b"RIFF", "RGBA"), ("png", b"\x89PNG", "RGBA")])
def test_formats(svc, fmt, magic, mode):
    r = matte(svc.url, encode(photo(64, 64, "bright", seed=7)), {"format": fmt, "history": "false"})
    assert r.status_code == 200, r.text
    assert r.content.startswith(magic)
    assert r.headers["Content-Type"] == f"image/{fmt}"
    assert decode(r.content).mode == mode and decode(r.content).size == (64, 64)
    assert "X-Matting-History-Id" not in r.headers


def test_cache_returns_identical_bytes_without_recomputing(svc):
    data = encode(photo(70, 90, "bright", seed=8))
    first = matte(svc.url, data, {"erosion": 3})
    assert first.headers["X-Matting-Cache"] == "miss"
    calls = get(f"{svc.url}/v1/stats").json()["model_calls"]
    second = matte(svc.url, data, {"erosion": 3})
    assert second.headers["X-Matting-Cache"] == "hit"
    assert second.content == first.content
    assert second.headers["X-Matting-Model"] == first.headers["X-Matting-Model"]
    assert get(f"{svc.url}/v1/stats").json()["model_calls"] == calls
    assert matte(svc.url, data, {"erosion": 5}).headers["X-Matting-Cache"] == "miss"


# --------------------------------------------------------------------------- batch


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_batch_zip_has_every_file_and_the_log(svc):
    imgs = {f"img{i}.png": encode(photo(48 + 8 * i, 64, "bright" if i % 2 else "dark", seed=10 + i)) for i in range(3)}
    inner = _zip({"sub/a.jpg": encode(photo(40, 40, "bright", seed=20), "JPEG"), "b.png": encode(photo(40, 50, "dark", seed=21))})
    files = [("files", (n, d, "image/png")) for n, d in imgs.items()]
    files += [("files", ("notes.txt", b"not an image", "text/plain")), ("files", ("more.zip", inner, "application/zip"))]
    r = post(f"{svc.url}/v1/batch", files=files, params={"format": "png", "output": "alpha"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Matting-Files"] == "6" and r.headers["X-Matting-Failed"] == "1"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = set(zf.namelist())
    assert {"log.csv", "log.json"} <= names
    log = json.loads(zf.read("log.json"))
    rows = list(csv.DictReader(io.StringIO(zf.read("log.csv").decode())))
    assert [row["file"] for row in rows] == [x["file"] for x in log] == [*imgs, "notes.txt", "sub/a.jpg", "b.png"]
    ok = [x for x in log if x["status"] == "ok"]
    assert len(ok) == 5
    for x in ok:
        assert x["output"] in names and x["model"] in ("base", "lowlight") and x["ms"] >= 0
        assert x["model"] == ("lowlight" if x["brightness"] < DEFAULT_THRESHOLD else "base")
    bad = next(x for x in log if x["file"] == "notes.txt")
    assert bad["status"] == "error" and bad["http_status"] == 415 and bad["output"] == ""
    assert decode(zf.read("results/img2.png")).size == (64, 64)
    assert decode(zf.read("results/sub/a.png")).size == (40, 40)

    raw = post(f"{svc.url}/v1/batch", data=inner, headers={"Content-Type": "application/zip"})
    assert raw.status_code == 200, raw.text
    assert sorted(zipfile.ZipFile(io.BytesIO(raw.content)).namelist()) == ["log.csv", "log.json", "results/b.png", "results/sub/a.png"]


# --------------------------------------------------------------------------- bad input


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG that declares ``w`` x ``h`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


GOOD = encode(photo(32, 32, "bright", seed=30))
BAD_MATTE = [
    ("over the upload limit", {"data": b"\0" * 2_100_000}, 413),
    ("too many pixels", {"data": _png_header_only(3000, 2000)}, 413),
    ("decompression bomb", {"data": _png_header_only(30000, 30000)}, 413),
    ("not an image", {"data": b"hello, this is text"}, 415),
    ("truncated png", {"data": GOOD[: len(GOOD) // 2]}, 400),
    ("truncated jpeg", {"data": encode(photo(64, 64, "bright"), "JPEG")[:300]}, 400),
    ("empty body", {"data": b""}, 400),
    ("threshold > 1", {"data": GOOD, "params": {"threshold": 2}}, 422),
    ("negative erosion", {"data": GOOD, "params": {"erosion": -1}}, 422),
    ("unknown format", {"data": GOOD, "params": {"format": "gif"}}, 422),
    ("bad colour", {"data": GOOD, "params": {"background": "reddish"}}, 422),
    ("unknown model", {"data": GOOD, "params": {"model": "nope"}}, 422),
    ("max_side over the limit", {"data": GOOD, "params": {"max_side": MAX_SIDE + 1}}, 422),
    ("unknown parameter", {"data": GOOD, "params": {"colour": "red"}}, 422),
]


def _zip_declaring(name: str, size: int) -> bytes:
    """A zip whose entry claims ``size`` uncompressed bytes (a zip bomb) while holding few."""
    data = bytearray(_zip({name: b"x"}))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.find(sig)
        data[i + off : i + off + 4] = struct.pack("<I", size)
    return bytes(data)


BAD_BATCH = [
    ("too many entries", _zip({f"{i}.png": GOOD for i in range(9)}), 413),
    ("entry too large", _zip({"big.png": b"\0" * 2_500_000}), 413),
    ("declared size over the limit", _zip_declaring("a.png", 50_000_000), 413),
    ("path traversal", _zip({"../evil.png": GOOD}), 400),
    ("absolute path", _zip({"/etc/evil.png": GOOD}), 400),
    ("zip magic but garbage", b"PK\x03\x04" + b"\0" * 100, 400),
]


def _assert_json_error(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["status"] == status and body["error"] and body["detail"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize("case", BAD_MATTE, ids=[c[0] for c in BAD_MATTE])
def test_bad_matte_input_gets_its_status(svc, case):
    _, kw, status = case
    _assert_json_error(matte(svc.url, kw["data"], kw.get("params"), raw=True), status)


@pytest.mark.parametrize("case", BAD_BATCH, ids=[c[0] for c in BAD_BATCH])
def test_bad_batch_input_gets_its_status(svc, case):
    _, data, status = case
    _assert_json_error(post(f"{svc.url}/v1/batch", files={"files": ("x.zip", data, "application/zip")}), status)


def test_other_errors_are_json(svc):
    _assert_json_error(get(f"{svc.url}/v1/history/" + "0" * 32), 404)
    _assert_json_error(get(f"{svc.url}/v1/history/..%2F..%2Fetc%2Fpasswd/result"), 404)
    _assert_json_error(get(f"{svc.url}/v1/history", params={"limit": 1000}), 422)
    _assert_json_error(get(f"{svc.url}/no/such/route"), 404)
    _assert_json_error(post(f"{svc.url}/v1/batch", files={"files": ("a.png", GOOD), "x": (None, "1")}), 422)
    big = b"\0" * 4_200_000
    _assert_json_error(post(f"{svc.url}/v1/batch", data=big, headers={"Content-Type": "application/zip"}), 413)


# --------------------------------------------------------------------------- history and models


def test_history_lists_and_downloads_again(svc):
    data = encode(photo(60, 80, "bright", seed=40))
    r = matte(svc.url, data, {"output": "alpha", "format": "webp"})
    entry_id = r.headers["X-Matting-History-Id"]
    page = get(f"{svc.url}/v1/history", params={"limit": 2}).json()
    assert page["items"][0]["id"] == entry_id and page["limit"] == 2 and page["total"] >= 2
    assert page["next_offset"] == 2
    older = get(f"{svc.url}/v1/history", params={"limit": 2, "offset": 2}).json()["items"]
    assert entry_id not in [e["id"] for e in older]
    entry = get(f"{svc.url}/v1/history/{entry_id}").json()
    assert entry["model"] == r.headers["X-Matting-Model"] and entry["params"]["format"] == "webp"
    assert (entry["width"], entry["height"]) == (80, 60)
    again = get(f"{svc.url}{entry['links']['result']}")
    assert again.status_code == 200 and again.content == r.content
    assert again.headers["Content-Type"] == "image/webp" and "attachment" in again.headers["Content-Disposition"]
    thumb = get(f"{svc.url}{entry['links']['thumbnail']}")
    assert thumb.status_code == 200 and decode(thumb.content).size == (80, 60)  # under 160 px: kept
    assert post(f"{svc.url}/v1/batch", files={"files": ("a.png", data)}).headers["X-Matting-History-Id"]
    latest = get(f"{svc.url}/v1/history", params={"limit": 1}).json()["items"][0]
    assert latest["kind"] == "batch" and latest["summary"] == {"files": 1, "ok": 1, "failed": 0, "empty": latest["summary"]["empty"]}
    assert get(f"{svc.url}/v1/history/{latest['id']}/result").content.startswith(b"PK")


def test_models_endpoint(svc):
    body = get(f"{svc.url}/v1/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"base", "lowlight", "spare"}
    assert models["spare"]["role"] == "forced only"
    assert models["base"]["checkpoint"] == checkpoint_label(svc.checkpoints["base"]) and models["base"]["role"] == "bright"
    assert str(svc.tmp) not in json.dumps(body)  # file names, never the server's paths
    assert models["lowlight"]["metrics"] == {"val_sad": 2.0} and models["lowlight"]["role"] == "dark"
    assert body["routing"]["threshold"] == DEFAULT_THRESHOLD
    assert (models["base"]["backend"], models["lowlight"]["backend"], models["spare"]["backend"]) == ("onnx", "onnx", "torch")


def test_both_backends_answer_with_the_checkpoints_alpha(svc):
    """ONNX Runtime (base, backend auto on CPU) and torch (spare) both match the torch reference."""
    rgb = photo(90, 130, "bright", seed=11)
    for name in ("base", "spare"):
        r = matte(svc.url, encode(rgb), {"output": "alpha", "model": name, "history": "false"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Matting-Model"] == name
        want = np.rint(local_alpha(svc.checkpoints[name], rgb) * 255)
        assert np.abs(as_array(r.content).astype(int) - want).max() <= 1


def test_concurrent_requests_share_batches_and_keep_their_own_alpha(svc):
    """8 images at once: fewer forward passes than images, every answer its own image's alpha,
    and Server-Timing accounts for the stages."""
    def info() -> dict:
        return {m["name"]: m for m in get(f"{svc.url}/v1/models").json()["models"]}["base"]

    before = info()
    rgbs = [photo(70 + 4 * i, 90, "bright", seed=100 + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda rgb: matte(svc.url, encode(rgb), {"output": "alpha", "model": "base", "history": "false"}), rgbs))
    after = info()
    for rgb, r in zip(rgbs, answers):
        assert r.status_code == 200, r.text
        want = np.rint(local_alpha(svc.checkpoints["base"], rgb) * 255)
        assert np.abs(as_array(r.content).astype(int) - want).max() <= 1
        t = parse_server_timing(r.headers["Server-Timing"])
        assert set(t) == {"upload", "key", "admit", "decode", "model", "forward", "encode", "total"}, t
        assert 0 < t["forward"] <= t["model"] + 0.2 and t["model"] < t["total"]
    assert after["images"] - before["images"] == 8
    assert after["batches"] - before["batches"] < 8


# --------------------------------------------------------------------------- a model replica killed under load


def test_replica_kill_under_load_fails_no_request(svc):
    """The fast subset of ``bench/load.py``: a short mixed load (sizes 64-512 px, dark and normal
    light, repeated images) at concurrency 12 while ``ray.kill`` takes the ``model_base`` replica
    down. Serve starts a new replica, no request fails (the ingress retries a model call whose
    replica died, once per call), and no process grows beyond :data:`bench.load.MEMORY_BOUND_MB`.
    The long runs, with percentiles and a hot swap, are ``python -m bench.load`` (results in
    ``bench/RELIABILITY.md``)."""
    from bench.load import (
        MEMORY_BOUND_MB, compare_memory, ingress_stats, kill_replica, make_workload, memory_snapshot, run_load,
        serve_replicas, status_counts,
    )

    requests_, concurrency, kill_after = 200, 12, 60  # the kill comes after 60 completed requests
    warm, _, _ = run_load(svc.url, make_workload(32, seed=100), concurrency, label="warm-up")
    assert status_counts(warm)["2xx"] == len(warm), [r.error for r in warm if r.status != 200][:3]
    max_ongoing = svc.config["applications"][0]["args"]["model_deployment"]["max_ongoing_requests"]
    victim = next(r for r in serve_replicas(svc.dashboard) if r.deployment == "model_base")
    stats0, mem0 = ingress_stats(svc.url), memory_snapshot(svc.dashboard)

    results, _, info = run_load(svc.url, make_workload(requests_, seed=1), concurrency,
                                lambda: kill_replica(svc.dashboard, "model_base"), kill_after, label="kill")

    stats1, mem1 = ingress_stats(svc.url), memory_snapshot(svc.dashboard)
    assert "error" not in info, info["error"]
    failed = [(r.status, r.error) for r in results if r.status != 200]
    assert len(results) == requests_ and not failed, failed[:5]
    # Serve replaced the killed replica, and the new one served requests after the kill.
    assert info["killed"] == victim.name and info["new"] != victim.name
    assert running_replicas("model_base") == 1
    after_kill = [r for r in results if r.start_s > info["at_s"] and r.model == "base"]
    assert after_kill, "no base request started after the kill"
    # The ingress retries each call once, so at most one retry per call the killed replica held.
    retries = stats1["model_retries"] - stats0["model_retries"]
    assert 0 <= retries <= max_ongoing
    # Both models served; repeated images came from the cache.
    assert {r.model for r in results} == {"base", "lowlight"}
    assert stats1["cache"]["hits"] - stats0["cache"]["hits"] >= 1
    assert sum(r.cache == "hit" for r in results) == stats1["cache"]["hits"] - stats0["cache"]["hits"]
    # Memory: every process (the new replica against the one it replaced) within the bound.
    cache_growth = max(0.0, (stats1["cache"]["bytes"] - stats0["cache"]["bytes"]) / 1e6)
    rows = compare_memory(mem0, mem1, cache_growth)
    assert {m.deployment for m in rows} >= {"ingress", "model_base", "model_lowlight", "proxy"}
    assert [m.note for m in rows if m.deployment == "model_base"] == ["replaced (new process)"]
    over = [(m.deployment, round(m.growth_mb, 1)) for m in rows if not m.ok]
    assert not over, f"RSS grew beyond {MEMORY_BOUND_MB} MB: {over}"


# --------------------------------------------------------------------------- hot swap and autoscaling


def _load(url: str, stop: threading.Event, out: list, seed: int, params: dict, headers: dict | None = None) -> None:
    """Send unique bright images until ``stop``; append (status, checkpoint header) per request."""
    rng = np.random.default_rng(seed)
    while not stop.is_set():
        rgb = photo(64, 64, "bright", seed=int(rng.integers(1 << 30)))
        try:
            r = matte(url, encode(rgb), {"history": "false", **params}, timeout=60, headers=headers or {})
            out.append((r.status_code, r.headers.get("X-Matting-Checkpoint")))
        except Exception as e:  # noqa: BLE001 - a failed request is what the test counts
            out.append((repr(e), None))


def _deploy_under_load(url: str, dashboard: str, config: dict, new: str, seeds: range, enough: int, headers: dict | None = None) -> list:
    """Deploy ``config`` while one thread per seed sends base requests; returns once ``enough``
    requests were answered before the deploy and ``enough`` by checkpoint ``new`` after it."""
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(url, stop, results, s, {"model": "base"}, headers)) for s in seeds]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) >= enough, 60, "requests before the swap")
        deploy(dashboard, config)
        wait_until(lambda: sum(1 for _, c in results if c == checkpoint_label(new)) >= enough, 90,
                   "requests answered by the new checkpoint")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return results


def test_hot_swap_under_requests_fails_none(svc):
    new = make_checkpoint(svc.tmp / "base-v2.pt", 7, {"val_sad": 7.0})
    config = json.loads(json.dumps(svc.config))
    app = config["applications"][0]
    app["deployments"] = [*app.get("deployments", []), {"name": "model_base", "user_config": {"checkpoint": new}}]
    results = _deploy_under_load(svc.url, svc.dashboard, config, new, range(3), enough=5)
    assert all(status == 200 for status, _ in results), [s for s, _ in results if s != 200][:5]
    assert {c for _, c in results} == {checkpoint_label(svc.checkpoints["base"]), checkpoint_label(new)}
    info = next(m for m in get(f"{svc.url}/v1/models").json()["models"] if m["name"] == "base")
    assert info["checkpoint"] == checkpoint_label(new) and info["swaps"] == 1  # reconfigure in place, not a new replica
    svc.config = config
    svc.checkpoints["base"] = new


def test_autoscaling_goes_from_one_to_two_replicas(svc):
    assert running_replicas("model_spare") == 1
    stop, results = threading.Event(), []
    with ThreadPoolExecutor(6) as pool:
        for s in range(6):
            pool.submit(_load, svc.url, stop, results, 100 + s, {"model": "spare"})
        try:
            wait_until(lambda: running_replicas("model_spare") == 2, 120, "a second model_spare replica")
        finally:
            stop.set()
    assert results and all(status == 200 for status, _ in results)


# --------------------------------------------------------------------------- web UI in a real browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _require_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        # CI installs it (.ci/run) and sets MATTING_REQUIRE_BROWSER=1, so there a missing browser fails.
        if os.environ.get("MATTING_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is absent but MATTING_REQUIRE_BROWSER=1")
        pytest.skip(f"Debian's chromium is absent ({CHROMIUM}): apt-get install -y chromium")


def test_web_ui_in_headless_chromium(svc, tmp_path):
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    picture = tmp_path / "portrait.png"
    picture.write_bytes(encode(photo(120, 160, "bright", seed=60)))
    second = tmp_path / "night.png"
    second.write_bytes(encode(photo(60, 80, "dark", seed=61)))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(svc.url + "/")
            expect(page.locator("#p-model option")).to_have_count(4, timeout=30_000)  # auto + the three models

            # single image: upload, see the result, change parameters, download
            page.set_input_files("#file-single", str(picture))
            info = page.locator("#result-info")
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            expect(info).to_contain_text("model base")
            page.wait_for_function("document.getElementById('result-img').naturalWidth === 160", timeout=30_000)
            page.select_option("#p-output", "alpha")
            page.select_option("#p-format", "jpeg")
            expect(info).to_have_attribute("data-format", "jpeg", timeout=60_000)
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            with page.expect_download() as dl:
                page.click("#download")
            download = dl.value
            assert download.suggested_filename == "portrait-matte.jpg"
            got = decode(Path(download.path()).read_bytes())
            assert got.format == "JPEG" and got.mode == "L" and got.size == (160, 120)

            # batch: progress per file, then the ZIP
            page.click("button[data-tab=batch]")
            page.set_input_files("#file-batch", [str(picture), str(second)])
            page.click("#batch-run")
            expect(page.locator("#batch-zip")).not_to_have_class("button disabled", timeout=60_000)
            assert float(page.locator("#batch-progress").get_attribute("value") or 0) == 3
            expect(page.locator("#batch-table tbody tr td img")).to_have_count(2)
            with page.expect_download() as dl:
                page.click("#batch-zip")
            names = zipfile.ZipFile(dl.value.path()).namelist()
            assert sorted(names) == ["log.csv", "log.json", "results/night.jpg", "results/portrait.jpg"]

            # history: thumbnails and download again
            page.click("button[data-tab=history]")
            expect(page.locator("#history-grid .card img").first).to_be_visible(timeout=30_000)
            with page.expect_download() as dl:
                page.locator("#history-grid .card button").first.click()
            assert dl.value.suggested_filename.endswith(".zip")  # the newest entry is the batch
        finally:
            browser.close()


def _alpha_of(data: bytes) -> np.ndarray:
    """The alpha channel of an RGBA result, or the grey values of a matte."""
    im = decode(data)
    return np.asarray(im.getchannel("A") if "A" in im.getbands() else im.convert("L"))


def _saved_correction(svc, tenant: str, correction_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The image and the mask the service stored for a correction (seed format, under the
    corrections store of the config it runs)."""
    from matting_lib import io as mio
    from matting_lib.data.corrections import CorrectionStore
    from serve_app.config import CorrectionSettings, resolve_path

    uri = svc.config["applications"][0]["args"].get("corrections", {}).get("store_uri", CorrectionSettings().store_uri)
    root = CorrectionStore(resolve_path(uri)).folder(tenant)
    assert root.startswith(svc.bucket + "/"), f"the test service saves corrections outside its S3 bucket: {root}"
    image, mask = (decode(mio.read_bytes(mio.join(root, kind, f"{correction_id}.png"))) for kind in ("images", "masks"))
    assert mask.mode == "L", mask.mode
    return np.asarray(image.convert("RGB")), np.asarray(mask)


@pytest.mark.timeout(300)
def test_web_ui_corrects_a_matte_with_a_box_and_strokes_and_saves_it(svc, tmp_path):
    """Issue 26 in a real browser against the real service. On a photo shown scaled down (so
    screen pixels are not image pixels), the user drags a box, paints a keep and a remove stroke
    back to back, and the server's answer has alpha 0 outside the box, 255 on the keep stroke and
    0 on the remove stroke; strokes made while a request is on its way wait (never two requests
    at once). Before/After shows the result without hints, Save stores the matte that is shown as
    a correction, and Undo and Reset take the hints back."""
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    h, w = 480, 640
    picture = tmp_path / "subject.png"
    picture.write_bytes(encode(photo(h, w, "bright", seed=62)))
    mattes = {"now": 0, "max": 0, "sent": 0}  # POST /v1/matte requests of the page

    def sent(req):
        if req.method == "POST" and "/v1/matte" in req.url:
            mattes.update(now=mattes["now"] + 1, sent=mattes["sent"] + 1)
            mattes["max"] = max(mattes["max"], mattes["now"])

    def ended(req):
        if req.method == "POST" and "/v1/matte" in req.url:
            mattes["now"] -= 1

    def result_alpha(page) -> tuple[str, np.ndarray]:
        """The history id of the result on screen and the alpha the SERVER stored for it."""
        entry_id = page.locator("#result-info").get_attribute("data-history-id")
        r = get(f"{svc.url}/v1/history/{entry_id}/result")
        assert r.status_code == 200, r.text
        return entry_id, _alpha_of(r.content)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 720})
            page.on("request", sent)
            page.on("requestfinished", ended)
            page.on("requestfailed", ended)
            page.goto(svc.url + "/")
            expect(page.locator("#p-model option")).to_have_count(4, timeout=30_000)
            page.set_input_files("#file-single", str(picture))
            info = page.locator("#result-info")
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            expect(info).to_have_attribute("data-hints", "none")
            expect(page.locator("#tool-box")).to_be_enabled()
            expect(page.locator("#before-after")).to_be_disabled()
            expect(page.locator("#undo")).to_be_disabled()
            page.wait_for_function("document.getElementById('result-img').naturalWidth === 640", timeout=30_000)
            _, plain = result_alpha(page)

            shown = page.locator("#result-img").bounding_box()
            sx, sy = w / shown["width"], h / shown["height"]
            assert sx > 1.2 and sy == pytest.approx(sx, rel=0.02), shown  # displayed scaled down
            over = page.locator("#overlay-result").bounding_box()
            assert all(abs(over[k] - shown[k]) <= 1 for k in ("x", "y", "width", "height")), (over, shown)

            def drag(*points: tuple[float, float]) -> None:
                """A drag through ``points`` (image pixels) on the result pane, where it is now (the page may have scrolled)."""
                at = page.locator("#result-img").bounding_box()
                assert at["width"] == pytest.approx(shown["width"]), at
                screen = [(at["x"] + x / sx, at["y"] + y / sy) for x, y in points]
                page.mouse.move(*screen[0])
                page.mouse.down()
                for pt in screen[1:]:
                    page.mouse.move(*pt, steps=8)
                page.mouse.up()

            # box: drawn on the result pane, sent in image pixels
            page.click("#tool-box")
            expect(page.locator("#tool-box")).to_have_attribute("aria-pressed", "true")
            drag((120, 70), (520, 410))
            expect(info).to_have_attribute("data-hints", "box", timeout=60_000)
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            x0, y0, x1, y1 = map(int, info.get_attribute("data-box").split(","))
            assert max(abs(x0 - 120), abs(y0 - 70), abs(x1 - 520), abs(y1 - 410)) <= 2, (x0, y0, x1, y1)
            _, boxed = result_alpha(page)
            outside = np.ones((h, w), bool)
            outside[y0:y1, x0:x1] = False
            assert plain[outside].max() > 0  # so the box is what makes it 0 below
            assert boxed[outside].max() == 0

            # the overlays follow the image at full size too
            page.check("#full-size")
            page.wait_for_function("document.getElementById('result-img').getBoundingClientRect().width === 640")
            full, over = page.locator("#result-img").bounding_box(), page.locator("#overlay-result").bounding_box()
            assert all(abs(over[k] - full[k]) <= 1 for k in ("x", "y", "width", "height")), (over, full)
            page.uncheck("#full-size")
            page.wait_for_function(f"document.getElementById('result-img').getBoundingClientRect().width === {shown['width']}")

            # a keep and a remove stroke, back to back: the second waits for the first's answer
            page.locator("#brush-size").evaluate("(el) => { el.value = '20'; el.dispatchEvent(new Event('input')); }")
            expect(page.locator("#o-brush-size")).to_have_text("20")
            count0 = mattes["sent"]
            page.click("#tool-keep")
            drag((220, 240), (320, 240), (420, 240))
            page.click("#tool-remove")
            drag((260, 150), (380, 150))
            expect(info).to_have_attribute("data-strokes", "2", timeout=60_000)
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            expect(info).to_have_attribute("data-hints", "box+strokes")
            assert mattes["max"] == 1, mattes
            assert 1 <= mattes["sent"] - count0 <= 2, mattes  # at most one request per stroke
            assert info.get_attribute("data-box") == f"{x0},{y0},{x1},{y1}"
            corrected_id, alpha = result_alpha(page)
            assert alpha[outside].max() == 0
            assert plain[240, 222:419].min() < 255 and plain[150, 262:379].max() > 0  # the strokes change these
            assert alpha[240, 222:419].min() == 255, alpha[240, 222:419]  # keep: the stroke's centre line
            assert alpha[150, 262:379].max() == 0, alpha[150, 262:379]  # remove
            with page.expect_download() as dl:
                page.click("#download")
            assert Path(dl.value.path()).read_bytes() == get(f"{svc.url}/v1/history/{corrected_id}/result").content

            # before/after: before is the result without hints
            page.click("#before-after")
            expect(page.locator("#before-after")).to_have_attribute("data-view", "before")
            data = page.evaluate("async () => Array.from(new Uint8Array(await (await fetch("
                                 "document.getElementById('result-img').src)).arrayBuffer()))")
            assert np.array_equal(_alpha_of(bytes(data)), plain)
            page.click("#before-after")
            expect(page.locator("#before-after")).to_have_attribute("data-view", "after")
            assert page.locator("#result-img").get_attribute("src") == page.locator("#download").get_attribute("href")

            # save: the matte on screen, with its history entry and model
            saved_before = get(f"{svc.url}/v1/corrections").json()["count"]
            page.click("#save-correction")
            note = page.locator("#correction-info")
            expect(note).to_have_attribute("data-state", "saved", timeout=60_000)
            saved_id = note.get_attribute("data-id")
            listing = get(f"{svc.url}/v1/corrections").json()
            assert listing["count"] == saved_before + 1 and note.get_attribute("data-count") == str(listing["count"])
            item = listing["items"][0]
            assert item["id"] == saved_id and item["history_id"] == corrected_id and item["model"] == "base"
            image, mask = _saved_correction(svc, listing["tenant"], saved_id)
            assert np.array_equal(image, as_array(picture.read_bytes()))  # the original, as uploaded
            assert mask.shape == (h, w) and np.abs(mask.astype(int) - alpha).max() <= 1  # the matte shown
            assert mattes["max"] == 1, mattes

            # undo: the remove stroke, then the keep stroke; reset: the box
            page.click("#undo")
            expect(note).to_have_attribute("data-state", "")  # a note for the matte before
            expect(info).to_have_attribute("data-strokes", "1", timeout=60_000)
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            expect(info).to_have_attribute("data-hints", "box+strokes")
            _, undone = result_alpha(page)
            assert undone[240, 222:419].min() == 255 and undone[150, 262:379].max() > 0
            page.click("#undo")
            expect(info).to_have_attribute("data-hints", "box", timeout=60_000)
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            page.click("#reset")
            expect(info).to_have_attribute("data-hints", "none", timeout=60_000)
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            assert info.get_attribute("data-box") == ""
            _, again = result_alpha(page)
            assert np.abs(again.astype(int) - plain).max() <= 1
            expect(page.locator("#undo")).to_be_disabled()
            expect(page.locator("#before-after")).to_be_disabled()
            assert mattes["max"] == 1, mattes
        finally:
            browser.close()


# --------------------------------------------------------------------------- learning from corrections


def _disc_correction(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo of a bright disc on a textured background and its true matte."""
    import cv2

    rng = np.random.default_rng(seed)
    rgb = photo(96, 128, "bright", seed=300 + seed)
    alpha = np.zeros((96, 128), np.uint8)
    cv2.circle(alpha, (int(rng.integers(40, 90)), int(rng.integers(35, 60))), int(rng.integers(18, 28)), 255, -1)
    rgb[alpha > 0] = (230, 210, 60)
    return rgb, alpha


@pytest.mark.timeout(420)
def test_saved_corrections_train_a_model_the_service_swaps_to_with_no_failed_request(svc, tmp_path):
    """Issue 26's loop, closed on the running service: the corrections saved in the browser above
    and three more through the API (photos of a disc, with their true mattes) are read from the S3
    store by ``ray_jobs.learn_corrections``, which fine-tunes the served base (tiny, on one Ray
    Train worker of this cluster: DDP has its own test in test_training_faults.py), scores it
    against the base it replaces on the held-out corrections, publishes it to S3 only because it is
    better there, and redeploys the app with it while requests keep coming: none fails, and the
    service then answers with the published checkpoint."""
    from ray_jobs.learn_corrections import main as learn

    before = get(f"{svc.url}/v1/corrections").json()["count"]
    for seed in range(3):
        rgb, alpha = _disc_correction(seed)
        r = post(f"{svc.url}/v1/corrections", files={"file": ("disc.png", encode(rgb)), "alpha": ("a.png", encode(alpha))},
                 data={"model": "base"})
        assert r.status_code == 201, r.text
    listing = get(f"{svc.url}/v1/corrections").json()
    assert listing["count"] == before + 3 and listing["tenant"] == "public"

    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(svc.url, stop, results, s, {"model": "base"})) for s in range(400, 402)]
    for t in threads:
        t.start()
    try:
        rc = learn([
            "--config", "configs/corrections.yaml", f"corrections.store={svc.bucket}/corrections",
            f"current={svc.checkpoints['base']}", "train=configs/tiny.yaml", "corrections.repeat=6",
            # One worker, sized to fit beside the running app (0.85 CPU) on a 2-CPU cluster
            "train_overrides=[stages.0.epochs=1, data.image_size=64, data.batch_size=4, scaling.num_workers=1, "
            "scaling.cpus_per_worker=0.5, scaling.data_cpus=0.1]",
            f"out={tmp_path}/runs", "run_name=learn", f"publish.dir={svc.bucket}/published",
            f"publish.serve_address={svc.dashboard}", "max_side=256", "subject_prior=false",
        ])
        results_file = json.loads((tmp_path / "runs" / "learn" / "results.json").read_text())
        published = results_file.get("publish", {}).get("checkpoint", "")
        wait_until(lambda: sum(1 for _, c in results if c == checkpoint_label(published)) >= 3, 90,
                   "requests answered by the published checkpoint")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert rc == 0
    c = results_file["corrections"]
    assert c["total"] == before + 3 and len(c["held_out"]) >= 1 and not set(c["held_in"]) & set(c["held_out"])
    scores = results_file["scores"]
    assert scores["candidate"]["corrections"]["mad"] < scores["current"]["corrections"]["mad"]
    assert results_file["decision"]["publish"] is True
    assert published.startswith(f"{svc.bucket}/published/base-") and "serves it" in results_file["publish"]["swap"]
    assert (tmp_path / "runs" / "learn" / "results.md").read_text().count("| corrections |") == 3
    assert results and all(status == 200 for status, _ in results), [s for s, _ in results if s != 200][:5]
    info = next(m for m in get(f"{svc.url}/v1/models").json()["models"] if m["name"] == "base")
    assert info["checkpoint"] == checkpoint_label(published) and info["swap_error"] == ""
    svc.checkpoints["base"] = published


# --------------------------------------------------------------------------- restart: models in the ingress, an API key (last)


def test_restart_with_models_in_the_ingress_and_a_key_keeps_history_routes_and_hot_swaps(svc):
    """The app deleted and deployed again with ``model_deployment.placement: ingress`` (one
    deployment, the models inside the ingress replica) and an API key from the environment:
    the history written before the restart is still listed and downloadable; every /v1 route of
    the route table answers 401 without the key or with a wrong one; bright and dark photos get
    the same routing and alphas as from model deployments; and a hot swap through the ingress's
    user_config fails no request."""
    from ray import serve

    r = matte(svc.url, encode(photo(50, 50, "dark", seed=50)))
    kept_id, kept_bytes = r.headers["X-Matting-History-Id"], r.content
    serve.delete("matting")
    config = json.loads(json.dumps(svc.config))
    app = config["applications"][0]
    app.pop("deployments", None)
    app["args"]["models"] = app["args"]["models"][:2]  # base and lowlight
    ckpts = {m["name"]: m["checkpoint"] for m in app["args"]["models"]}  # (an earlier test hot swapped base)
    app["args"]["model_deployment"].update(placement="ingress", max_batch_size=1)
    app["runtime_env"] = {"env_vars": {"MATTING_API_KEY": API_KEY}}
    url = deploy_and_wait(svc.dashboard, config)
    assert sorted(serve.status().applications["matting"].deployments) == ["ingress"]
    auth = {"Authorization": f"Bearer {API_KEY}"}

    ids = [e["id"] for e in get(f"{url}/v1/history", params={"limit": 100}, headers=auth).json()["items"]]
    assert kept_id in ids
    assert get(f"{url}/v1/history/{kept_id}/result", headers=auth).content == kept_bytes

    spec = get(f"{url}/openapi.json").json()
    routes = [(m, p) for p, ops in spec["paths"].items() if p.startswith("/v1") for m in ops]
    assert len(routes) >= 8
    for method, path in routes:
        route_url = url + path.replace("{entry_id}", kept_id)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            resp = getattr(__import__("requests"), method)(route_url, headers=headers, timeout=30)
            _assert_json_error(resp, 401)
    assert get(f"{url}/healthz").status_code == 200
    ok = matte(url, GOOD, headers=auth)
    assert ok.status_code == 200 and ok.headers["X-Matting-Cache"] == "miss"

    for light, expected in (("bright", "base"), ("dark", "lowlight")):
        rgb = photo(97, 143, light, seed=60)
        r = matte(url, encode(rgb), {"output": "alpha", "history": "false"}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.headers["X-Matting-Model"] == expected
        want = np.rint(local_alpha(ckpts[expected], rgb) * 255)
        assert np.abs(as_array(r.content).astype(int) - want).max() <= 1
        assert "forward" in parse_server_timing(r.headers["Server-Timing"])
    models = {m["name"]: m for m in get(f"{url}/v1/models", headers=auth).json()["models"]}
    assert set(models) == {"base", "lowlight"} and models["base"]["checkpoint"] == checkpoint_label(ckpts["base"])

    new = make_checkpoint(svc.tmp / "base-v3.pt", 8, {"val_sad": 8.0})
    app["deployments"] = [{"name": "ingress", "user_config": {"checkpoints": {"base": new}}}]
    results = _deploy_under_load(url, svc.dashboard, config, new, range(200, 202), enough=4, headers=auth)
    assert all(status == 200 for status, _ in results), [s for s, _ in results if s != 200][:5]
    info = next(m for m in get(f"{url}/v1/models", headers=auth).json()["models"] if m["name"] == "base")
    assert info["checkpoint"] == checkpoint_label(new) and info["swaps"] == 1 and info["swap_error"] == ""
