"""The Serve app's parts without a cluster: config, Ray's schema, cache, history, upload checks, launcher errors."""

from __future__ import annotations

import io
import time
import zipfile

import pytest

from matting_lib.config import ConfigError
from serve_app.cache import ENTRY_OVERHEAD, CachedResult, ResultCache
from serve_app.config import (
    DEFAULT_CONFIG_PATH, REPO_ROOT, HistorySettings, ServeConfig, app_entry, load_serve_yaml, serve_config_from_args,
    with_resolved_paths,
)
from serve_app.errors import ApiError
from serve_app.history import History
from serve_app.uploads import UploadedFile, expand_batch, output_name, read_zip
from testkit.serve import encode, photo

# --------------------------------------------------------------------------- config


def test_shipped_config_is_a_valid_serve_config_and_app_config():
    from ray.serve.schema import ServeDeploySchema

    data = load_serve_yaml(DEFAULT_CONFIG_PATH)
    schema = ServeDeploySchema.model_validate(data)
    assert [a.import_path for a in schema.applications] == ["serve_app.app:build_app"]
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000
    cfg = serve_config_from_args(app_entry(data)["args"])
    assert cfg.model_names == ["base", "lowlight"]
    assert cfg == ServeConfig()  # the file spells out the defaults
    md = cfg.model_deployment
    assert 0.1 <= md.num_cpus <= 0.25 and 0.1 <= cfg.ingress.num_cpus <= 0.25
    assert md.num_cpus * 2 * md.autoscaling.max_replicas + cfg.ingress.num_cpus <= 2  # fits on 2 CPUs
    resolved = with_resolved_paths(cfg)
    assert resolved.models[0].checkpoint == str(REPO_ROOT / "models" / "base.pt")
    assert resolved.history.db_path == str(REPO_ROOT / ".serve_data" / "history.sqlite")


@pytest.mark.parametrize(
    "override,key",
    [
        ("limits.max_upload_mb=0", "limits.max_upload_mb"),
        ("routing.dark_model=night", "routing.dark_model"),
        ("model_deployment.autoscaling.max_replicas=0", "model_deployment.autoscaling.max_replicas"),
        ("cache.size=3", "cache.size"),
        ("history.db_path=s3://b/h.sqlite", "history.db_path"),
        ("model_deployment.num_cpus=fast", "model_deployment.num_cpus"),
        ("model_deployment.placement=inline", "model_deployment.placement"),
        ("model_deployment.max_side=4096", "model_deployment.max_side"),  # over serve_app.params.MAX_SIDE
        ("limits.max_side_limit=1024", "limits.max_side_limit"),  # gone: MAX_SIDE is not a setting
        ("limits.body_timeout_s=0", "limits.body_timeout_s"),
    ],
)
def test_config_errors_name_the_key(override, key):
    args = app_entry(load_serve_yaml(DEFAULT_CONFIG_PATH))["args"]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        serve_config_from_args(args, [override])


def test_api_key_from_config_or_environment(monkeypatch):
    monkeypatch.delenv("MATTING_API_KEY", raising=False)
    assert ServeConfig().resolve_api_key() == ""
    monkeypatch.setenv("MATTING_API_KEY", "from-env")
    assert ServeConfig().resolve_api_key() == "from-env"
    assert ServeConfig(api_key="from-config").resolve_api_key() == "from-config"


def test_bad_yaml_is_rejected_by_rays_schema(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - name: x\n    import_path: 3\n    route_prefix: no-slash\n")
    with pytest.raises(ConfigError, match="not a valid Serve config"):
        load_serve_yaml(bad)


# --------------------------------------------------------------------------- cache


def _result(n: int) -> CachedResult:
    return CachedResult(b"x" * n, "image/png", "base", 0.5, "ck", 1, 1)


def test_cache_is_bounded_in_bytes_and_evicts_least_recently_used():
    cache = ResultCache(3 * (1000 + ENTRY_OVERHEAD))
    for k in "abc":
        cache.put(k, _result(1000))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", _result(1000))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    assert cache.bytes <= cache.max_bytes and len(cache) == 3 and cache.evictions == 1
    cache.put("huge", _result(10_000))  # larger than the whole cache: not stored, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3
    assert ResultCache(0).max_bytes == 0


# --------------------------------------------------------------------------- history


def _add(h: History, name: str) -> str:
    body = encode(photo(40, 30, "bright"))
    return h.add(
        kind="image", name=name, model="base", brightness=0.5, params={"format": "png"}, width=30, height=40,
        media_type="image/png", ext="png", body=body, thumbnail_source=body,
    ).id


@pytest.mark.timeout(60)
@pytest.mark.parametrize("store", ["local", "s3"])
def test_history_persists_prunes_and_deletes_files(tmp_path, request, store):
    store_uri = str(tmp_path / "results") if store == "local" else request.getfixturevalue("s3_bucket") + "/history"
    settings = HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=store_uri, max_entries=3)
    h = History(settings)
    ids = [_add(h, f"{i}.png") for i in range(5)]
    reopened = History(settings)  # a restart: a new process opens the same database
    entries, total = reopened.list(10, 0)
    assert total == 3 and [e.id for e in entries] == ids[:1:-1]  # newest first, the two oldest pruned
    assert reopened.get(ids[0]) is None
    from matting_lib import io as mio

    assert not mio.exists(mio.join(store_uri, "results", f"{ids[0]}.png"))
    assert reopened.read_result(entries[0]).startswith(b"\x89PNG")
    assert reopened.read_thumbnail(entries[0]).startswith(b"\x89PNG")
    assert reopened.delete(ids[-1]) and not reopened.delete(ids[-1])
    assert not mio.exists(mio.join(store_uri, "thumbs", f"{ids[-1]}.png"))
    assert reopened.get("../../etc/passwd") is None


def test_history_age_retention(tmp_path):
    h = History(HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=str(tmp_path / "r"), max_age_days=1e-6))
    first = _add(h, "old.png")
    time.sleep(0.2)
    _add(h, "new.png")
    assert h.get(first) is None


def _store_bytes(root) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _entry_bytes(store) -> dict[str, int]:
    """Result plus thumbnail bytes of every entry in a history store, by entry id."""
    sizes: dict[str, int] = {}
    for f in [*(store / "results").iterdir(), *(store / "thumbs").iterdir()]:
        sizes[f.stem] = sizes.get(f.stem, 0) + f.stat().st_size
    return sizes


def test_history_never_exceeds_its_byte_cap_by_more_than_the_newest_entry(tmp_path):
    import numpy as np

    store = tmp_path / "r"
    h = History(HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=str(store), max_mb=0.2, max_entries=1000))
    rng = np.random.default_rng(0)
    evicted = 0
    for i in range(40):
        side = int(rng.integers(20, 120))  # noise PNGs of 1-45 KB: entries of very different sizes
        body = encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        entry = h.add(kind="image", name=f"{i}.png", model="base", brightness=0.5, params={}, width=side, height=side,
                      media_type="image/png", ext="png", body=body, thumbnail_source=body)
        newest = (store / "results" / f"{entry.id}.png").stat().st_size + (store / "thumbs" / f"{entry.id}.png").stat().st_size
        on_disk = _store_bytes(store)
        usage = h.usage()
        assert usage["bytes"] == on_disk, i  # the rows add up to what the store holds
        assert usage["largest_entry_bytes"] == max(_entry_bytes(store).values()), i
        assert on_disk <= 200_000 or usage["entries"] == 1, (i, on_disk)  # at most the cap after each insert...
        assert on_disk - newest <= 200_000  # ...and never over it by more than one entry while inserting
        evicted = i + 1 - usage["entries"]
    assert evicted > 10  # the cap was reached many times over
    _, total = h.list(100, 0)
    assert total == h.usage()["entries"] == len(list((store / "results").iterdir()))


def test_history_files_left_by_a_crash_mid_eviction_are_removed_at_the_next_start(tmp_path):
    import os
    import sqlite3

    settings = HistorySettings(db_path=str(tmp_path / "h.sqlite"), store_uri=str(tmp_path / "r"))
    h = History(settings)
    gone, young, kept = _add(h, "a.png"), _add(h, "b.png"), _add(h, "c.png")
    with sqlite3.connect(settings.db_path) as db:  # rows deleted, then the process died before the files went
        db.execute("DELETE FROM history WHERE id IN (?, ?)", (gone, young))
    old = time.time() - 2 * 3600
    for folder in ("results", "thumbs"):
        os.utime(tmp_path / "r" / folder / f"{gone}.png", (old, old))
    History(settings)  # the next start
    left = {p.name for p in (tmp_path / "r" / "results").iterdir()}
    assert left == {f"{young}.png", f"{kept}.png"}  # a young orphan may be another replica's insert in progress
    assert not (tmp_path / "r" / "thumbs" / f"{gone}.png").exists()


def test_a_history_database_from_before_the_byte_cap_is_upgraded_in_place(tmp_path):
    import sqlite3

    from serve_app.history import SCHEMA

    db_path = str(tmp_path / "h.sqlite")
    with sqlite3.connect(db_path) as db:
        db.executescript(SCHEMA.replace(",\n    thumb_size INTEGER NOT NULL DEFAULT 0", ""))
        assert "thumb_size" not in {r[1] for r in db.execute("PRAGMA table_info(history)")}
    h = History(HistorySettings(db_path=db_path, store_uri=str(tmp_path / "r")))
    _add(h, "a.png")
    assert h.usage()["entries"] == 1 and h.usage()["bytes"] > 0


# --------------------------------------------------------------------------- uploads


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
    return buf.getvalue()


def test_zip_entries_skip_metadata_and_keep_order():
    data = _zip({"a.png": b"1", "dir/": b"", "__MACOSX/._a.png": b"x", ".DS_Store": b"x", "./dir/b.png": b"2"})
    assert [(f.name, f.data) for f in read_zip(data, 10, 100, 1000)] == [("a.png", b"1"), ("dir/b.png", b"2")]


@pytest.mark.parametrize(
    "entries,status",
    [
        ({"../x.png": b"1"}, 400),
        ({"a/../../x.png": b"1"}, 400),
        ({"C:/x.png": b"1"}, 400),
        ({"/abs.png": b"1"}, 400),
        ({f"{i}.png": b"1" for i in range(11)}, 413),
        ({"big.png": b"\0" * 101}, 413),
        ({f"{i}.png": b"\0" * 90 for i in range(12)}, 413),
    ],
)
def test_zip_limits(entries, status):
    with pytest.raises(ApiError) as e:
        read_zip(_zip(entries), 10, 100, 1000)
    assert e.value.status == status


def test_batch_expansion_and_output_names():
    files = [UploadedFile("a.png", b"1"), UploadedFile("z.zip", _zip({"a.jpg": b"2", "s/c.png": b"3"}))]
    out = expand_batch(files, 5, 100, 1000)
    assert [f.name for f in out] == ["a.png", "a.jpg", "s/c.png"]
    used: set[str] = set()
    assert [output_name(f.name, "png", used) for f in out] == ["a.png", "a-2.png", "s/c.png"]
    assert output_name("we ird:name.jpeg", "webp", used) == "we_ird_name.webp"
    with pytest.raises(ApiError) as e:
        expand_batch([], 5, 100, 1000)
    assert e.value.status == 400
    with pytest.raises(ApiError) as e:
        expand_batch([UploadedFile(f"{i}", b"1") for i in range(6)], 5, 100, 1000)
    assert e.value.status == 413


# --------------------------------------------------------------------------- launcher errors


@pytest.mark.timeout(60)
def test_launcher_names_a_missing_checkpoint(tmp_path, capsys):
    from serve_app.run import main
    from testkit.serve import make_checkpoint

    def launch(*args: str) -> str:
        with pytest.raises(SystemExit) as e:
            main(list(args))
        assert e.value.code == 2
        return capsys.readouterr().err

    base = make_checkpoint(tmp_path / "base.pt", 1)
    missing = tmp_path / "nowhere" / "lowlight.pt"
    err = launch(f"models.0.checkpoint={base}", f"models.1.checkpoint={missing}")
    assert "model 'lowlight'" in err and str(missing) in err and "models/README.md" in err

    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not really")
    err = launch(f"models.0.checkpoint={tmp_path / 'broken.pt'}")
    assert "model 'base'" in err and "not usable" in err

    assert "routing.threshold" in launch("routing.threshold=3")


# --------------------------------------------------------------------------- model deployment's hot swap


def test_hot_swap_loads_the_new_checkpoint_and_survives_a_bad_one(tmp_path):
    import asyncio

    import numpy as np

    from serve_app.config import ModelDeploymentSettings
    from serve_app.model import MattingModel
    from testkit.serve import make_checkpoint

    a, b = make_checkpoint(tmp_path / "a.pt", 1), make_checkpoint(tmp_path / "b.pt", 2)
    model = MattingModel.func_or_class("base", a, ModelDeploymentSettings(max_side=256, device="cpu"))
    rgb = photo(40, 50, "bright")
    before = model.predictor.predict(rgb)

    asyncio.run(model.reconfigure({"checkpoint": str(tmp_path / "missing.pt")}))
    assert model.checkpoint == a and "missing.pt" in model.info()["swap_error"]
    assert str(tmp_path) not in model.info()["swap_error"]  # clients see the file name, not the server's path
    np.testing.assert_array_equal(model.predictor.predict(rgb), before)  # still the old model

    asyncio.run(model.reconfigure({"checkpoint": b}))
    info = model.info()
    assert info["checkpoint"] == b and info["swaps"] == 1 and info["swap_error"] == ""
    assert info["metrics"] == {"val_sad": 2.0}
    assert not np.array_equal(model.predictor.predict(rgb), before)

    asyncio.run(model.reconfigure({"checkpoint": b, "bogus": 1}))
    assert "unknown key 'bogus'" in model.info()["swap_error"] and model.checkpoint == b
    asyncio.run(model.reconfigure({}))  # no checkpoint named: back to the deployment's own
    assert model.checkpoint == a and model.swaps == 2


def test_model_replica_refines_by_request_and_lets_the_prior_find_a_missed_subject(tmp_path):
    """The replica's batch method itself (``__wrapped__``: @serve.batch needs a Serve replica
    around it): a model that finds nothing (head bias -8) on the espresso photo gets the ImageNet
    prior's cup when the deployment allows the prior; in one batch, a request for a mode the
    model cannot run gets an error of its own and the others are served."""
    import asyncio

    import cv2
    import numpy as np
    import skimage.data

    from matting_lib.resize import KEEP
    from serve_app.config import ModelDeploymentSettings
    from serve_app.model import MattingModel
    from testkit.serve import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "blind.pt", 1, head_bias=-8.0)
    rgb = cv2.resize(skimage.data.coffee(), (300, 200), interpolation=cv2.INTER_AREA)
    answers = {}
    for prior in (False, True):
        model = MattingModel.func_or_class("base", ckpt, ModelDeploymentSettings(max_side=256, device="cpu", subject_prior=prior))
        assert model.info()["refine_modes"] == ["auto", "classical", "off"]  # no learned refiner in this checkpoint
        batch = MattingModel.func_or_class.predict.__wrapped__
        answers[prior], refused = asyncio.run(batch(model, [(rgb, KEEP, "auto"), (rgb, KEEP, "learned")]))
        assert "refiner" in refused["error"] and "alpha" not in refused
    assert answers[False]["refine"] == "off" and not answers[False]["prior"]
    assert (answers[False]["alpha"] >= 128).mean() < 0.005  # empty
    assert answers[True]["prior"] and 0.05 < (answers[True]["alpha"] >= 128).mean() < 0.6


def test_model_replica_reads_max_side_as_the_predictor_does(tmp_path):
    """KEEP = the deployment's configured max_side, the same alpha as asking for it by number and
    as the predictor's own default; None (no cap) and sides outside [MIN_SIDE, MAX_SIDE] get an
    error of their own (MAX_SIDE bounds memory) while the rest of the batch is served."""
    import asyncio

    import numpy as np

    from matting_lib.resize import KEEP
    from serve_app.config import ModelDeploymentSettings
    from serve_app.model import MattingModel, to_uint8
    from serve_app.params import MAX_SIDE
    from testkit.serve import make_checkpoint

    model = MattingModel.func_or_class("base", make_checkpoint(tmp_path / "a.pt", 1), ModelDeploymentSettings(max_side=64, device="cpu"))
    rgb = photo(150, 100, "bright")
    batch = MattingModel.func_or_class.predict.__wrapped__
    keep, by_number, bigger, none, over = asyncio.run(batch(model, [(rgb, KEEP, "off"), (rgb, 64, "off"), (rgb, 128, "off"),
                                                                    (rgb, None, "off"), (rgb, MAX_SIDE + 1, "off")]))
    expected = to_uint8(model.predictor.predict(rgb, refine="off"))
    np.testing.assert_array_equal(keep["alpha"], expected)
    np.testing.assert_array_equal(by_number["alpha"], expected)
    assert not np.array_equal(bigger["alpha"], expected)  # an explicit side is used
    for refused in (none, over):
        assert "alpha" not in refused and "max_side" in refused["error"] and str(MAX_SIDE) in refused["error"]


# --------------------------------------------------------------------------- memory of a large request


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(300)
def test_a_model_replica_gives_back_the_memory_of_a_large_request(tmp_path):
    """ONNX Runtime keeps its arena at the largest size it ever needed: one request at the largest
    max_side would pin ~0.85 GB even for this tiny model. The replica's session frees it after
    runs above the configured working size, and malloc_trim hands the heap back."""
    import numpy as np

    from serve_app.config import ModelDeploymentSettings
    from matting_lib.inference.onnx_runtime import ShrinkingSession
    from serve_app.model import MattingModel, release_memory
    from serve_app.params import MAX_SIDE
    from testkit.serve import make_checkpoint

    model = MattingModel.func_or_class("base", make_checkpoint(tmp_path / "m.pt", 1),
                                       ModelDeploymentSettings(max_side=256, num_threads=1), "onnx")
    assert isinstance(model.predictor.model, ShrinkingSession)
    small = np.zeros((200, 200, 3), np.uint8)
    model.predictor.predict(small)
    before = _rss_mb()
    big = np.random.default_rng(0).integers(0, 255, (MAX_SIDE + 500, MAX_SIDE + 500, 3), dtype=np.uint8)
    alpha = model.predictor.predict(big, MAX_SIDE)
    assert alpha.shape == big.shape[:2]
    del big, alpha
    release_memory()
    model.predictor.predict(small)  # and the normal size still runs on the warm arena
    assert _rss_mb() - before < 250, (before, _rss_mb())


@pytest.mark.parametrize("module", ["serve_app.ingress", "serve_app.app"])
def test_an_ingress_with_model_deployments_loads_no_network_library(module):
    """With ``placement: separate`` the ingress only decodes, routes and encodes: importing its
    deployment must not pull in torch or ONNX Runtime (about 3 s of start-up and a few hundred MB
    per ingress replica). Nor may the application builder, which Serve runs in a task process of
    its own on every deploy. The models inside the ingress (``placement: ingress``) import them
    when built."""
    import subprocess
    import sys

    from testkit import ROOT

    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


# --------------------------------------------------------------------------- the web UI's batch table


BATCHLOG_JS = """
const { zipEntries, readBatchLog, logStatus, mediaType } = require(process.argv[2]);
const fs = require("fs");
(async () => {
  const entries = zipEntries(new Uint8Array(fs.readFileSync(process.argv[3])));
  const log = await readBatchLog(entries);
  const results = {};
  for (const row of log) {
    if (row.status === "ok") results[row.output] = Buffer.from(await entries.get(row.output)()).toString("hex");
  }
  console.log(JSON.stringify({ names: [...entries.keys()], log, statuses: log.map(logStatus), results,
                               types: log.map((r) => mediaType(r.output || "x.png")) }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.mark.parametrize("log_compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_web_ui_reads_every_file_of_a_batch_archive_from_its_log(tmp_path, log_compression):
    """serve_app/static/batchlog.js (what app.js fills the batch table from) on a real /v1/batch archive:
    one row per processed file, a zip's entries included, with its status and result (stored or deflated log)."""
    import json
    import shutil
    import subprocess

    from serve_app.batch import BatchRow, build_zip
    from testkit import ROOT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    rows = [
        BatchRow("portrait.png", "results/portrait.png", "ok", 200, "base", 0.61, "miss", 12.5, "", False, "", b"\x89PNG-1"),
        BatchRow("inside/a.png", "results/inside/a.png", "ok", 200, "lowlight", 0.12, "hit", 3.0, "", True, "none", b"\x89PNG-2"),
        BatchRow("inside/notes.txt", "", "error", 415, "", None, "", 1.0, 'inside/notes.txt: not an image "x"'),
    ]
    archive = build_zip(rows)
    if log_compression == zipfile.ZIP_DEFLATED:  # what an older server sent: the reader inflates it
        src, buf = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
        with zipfile.ZipFile(buf, "w") as out:
            for info in src.infolist():
                out.writestr(info.filename, src.read(info), compress_type=log_compression if info.filename.startswith("log") else zipfile.ZIP_STORED)
        archive = buf.getvalue()
    else:
        assert zipfile.ZipFile(io.BytesIO(archive)).getinfo("log.json").compress_type == zipfile.ZIP_STORED
    (tmp_path / "mattes.zip").write_bytes(archive)
    (tmp_path / "read.js").write_text(BATCHLOG_JS)
    r = subprocess.run([node, str(tmp_path / "read.js"), str(ROOT / "serve_app/static/batchlog.js"), str(tmp_path / "mattes.zip")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert [row["file"] for row in got["log"]] == ["portrait.png", "inside/a.png", "inside/notes.txt"]
    assert got["statuses"] == [{"text": "ok", "className": ""}, {"text": "ok: no subject found", "className": "warning"},
                               {"text": '415: inside/notes.txt: not an image "x"', "className": "error"}]
    assert got["results"] == {"results/portrait.png": b"\x89PNG-1".hex(), "results/inside/a.png": b"\x89PNG-2".hex()}
    assert got["types"][:2] == ["image/png", "image/png"]


def test_web_ui_fills_the_batch_table_from_the_archive_log():
    from testkit import ROOT

    static = ROOT / "serve_app" / "static"
    html = (static / "index.html").read_text()
    assert html.index('src="/static/batchlog.js"') < html.index('src="/static/app.js"')
    app = (static / "app.js").read_text()
    assert "showBatchLog(blob)" in app and "readBatchLog(" in app and "zipEntries(" in app


def test_request_parameters_take_the_post_processing_fields_from_matting_lib():
    """One declaration of the eight post-processing fields (matting_lib.postprocess.PostprocessParams):
    the HTTP parameters show the same types, bounds, defaults and descriptions, and convert into it
    with no field-by-field copy; only HTTP's text forms ('3', 'jpg', '') are translated on the way."""
    from pydantic import TypeAdapter

    from matting_lib.postprocess import PostprocessParams
    from serve_app.params import MatteParams

    lib = TypeAdapter(PostprocessParams).json_schema()["properties"]
    http = MatteParams.model_json_schema()["properties"]
    assert len(lib) == 8 and {k: http[k] for k in lib} == lib
    assert MatteParams(erosion="3", format="jpg", background="").postprocess() == PostprocessParams(erosion=3, format="jpeg")
    with pytest.raises(ValueError, match="background"):
        MatteParams(background="blue")
    with pytest.raises(ValueError, match="erosion"):
        PostprocessParams(erosion="3")  # the library is strict: text is HTTP's business
