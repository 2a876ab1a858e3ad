"""The Serve app as a newcomer meets it, on a real local cluster: offline API docs, one ``max_side``
limit, clients that hang up or stall, errors as documented, empty results reported, the web UI in
headless Chromium, and Ray's servers on loopback only.

One application per module with two tiny models whose output layer is biased: ``base`` keeps
everything (alpha near 1, a normal result) and ``lowlight`` finds nothing (alpha near 0: an empty
matte), so bright photos give a normal result and dark ones an empty one, deterministically.
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from testkit.local_ray import cluster_pids, listening_sockets
from serve_app.params import MAX_SIDE
from testkit.serve import (
    decode, deploy_and_wait, encode, get, make_checkpoint, photo, post, remove_app, serve_yaml_for_test, upload_head,
)

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
BODY_TIMEOUT_S = 2.0
BODY_TOTAL_S = 4.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def svc(ray_cluster, serve_port, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_edges")
    checkpoints = {
        "base": make_checkpoint(tmp / "base.pt", 1, head_bias=8.0),
        "lowlight": make_checkpoint(tmp / "lowlight.pt", 2, head_bias=-8.0),
    }
    # The models inside the ingress, as `make serve` runs them (tests/test_serve_app.py covers
    # separate model deployments): one replica process to start instead of three.
    config = serve_yaml_for_test(tmp, checkpoints, serve_port, args={
        "limits": {"body_timeout_s": BODY_TIMEOUT_S, "body_total_timeout_s": BODY_TOTAL_S},
        "model_deployment": {"placement": "ingress"},
    })
    url = deploy_and_wait(ray_cluster["dashboard"], config)
    try:
        yield SimpleNamespace(url=url, port=config["http_options"]["port"], temp_dir=ray_cluster["temp_dir"])
    finally:
        remove_app(config)


BRIGHT = encode(photo(60, 80, "bright", seed=1))
DARK = encode(photo(60, 80, "dark", seed=2))


def _raw(port: int, request: bytes, wait_s: float = 30.0, close_after_send: bool = False) -> bytes:
    """Send ``request`` bytes as they are on a fresh connection; the reply (b'' when closed early)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(request)
        if close_after_send:
            return b""
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except socket.timeout:
            pass
        return data


def _status_and_json(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():  # one chunk is enough for a small JSON body
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(body)


def _ingress_log(temp_dir: str) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(temp_dir, "session_latest", "logs", "serve").glob("replica_matting_ingress_*.log"))


# --------------------------------------------------------------------------- empty results (issue 17, item 5)


def test_empty_result_is_reported_in_headers(svc):
    normal = post(f"{svc.url}/v1/matte", files={"file": ("p.png", BRIGHT)}, params={"history": "false"})
    assert normal.status_code == 200 and normal.headers["X-Matting-Model"] == "base"
    assert normal.headers["X-Matting-Empty"] == "false" and "X-Matting-Notice" not in normal.headers
    empty = post(f"{svc.url}/v1/matte", files={"file": ("n.png", DARK)}, params={"history": "false"})
    assert empty.status_code == 200 and empty.headers["X-Matting-Model"] == "lowlight"
    assert empty.headers["X-Matting-Empty"] == "true"
    assert empty.headers["X-Matting-Notice"].startswith("No subject found")
    assert max(decode(empty.content).getchannel("A").getextrema()) < 128  # what the header warns about
    again = post(f"{svc.url}/v1/matte", files={"file": ("n.png", DARK)}, params={"history": "false"})
    assert again.headers["X-Matting-Cache"] == "hit" and again.headers["X-Matting-Empty"] == "true"  # cached too


def test_refine_is_a_request_parameter_reported_in_a_header(svc):
    """The tiny test models carry no learned refiner: auto runs 'off', classical runs, learned is a 422."""
    for asked, ran in (("auto", "off"), ("classical", "classical"), ("OFF", "off")):
        r = post(f"{svc.url}/v1/matte", files={"file": ("p.png", BRIGHT)}, params={"history": "false", "refine": asked})
        assert r.status_code == 200 and r.headers["X-Matting-Refine"] == ran and r.headers["X-Matting-Prior"] == "false"
        assert decode(r.content).size == (80, 60)  # the input's full size
    bad = post(f"{svc.url}/v1/matte", files={"file": ("p.png", BRIGHT)}, params={"history": "false", "refine": "learned"})
    assert bad.status_code == 422 and "refiner" in bad.json()["detail"]
    bad = post(f"{svc.url}/v1/matte", files={"file": ("p.png", BRIGHT)}, params={"refine": "sharpest"})
    assert bad.status_code == 422 and "refine" in bad.json()["detail"]


def test_batch_log_says_which_files_are_empty(svc):
    r = post(f"{svc.url}/v1/batch", files=[("files", ("bright.png", BRIGHT)), ("files", ("dark.png", DARK))])
    assert r.status_code == 200, r.text
    assert r.headers["X-Matting-Empty"] == "1"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    log = {row["file"]: row for row in json.loads(zf.read("log.json"))}
    assert log["bright.png"]["empty"] is False and log["bright.png"]["notice"] == ""
    assert log["dark.png"]["empty"] is True and log["dark.png"]["notice"].startswith("No subject found")
    assert "empty,notice" in zf.read("log.csv").decode().splitlines()[0]
    entry = get(f"{svc.url}/v1/history", params={"limit": 1}).json()["items"][0]
    assert entry["summary"] == {"files": 2, "ok": 2, "failed": 0, "empty": 1}


# --------------------------------------------------------------------------- one max_side limit (item 2)


def test_max_side_has_one_limit_in_schema_check_models_and_docs(svc):
    schema = get(f"{svc.url}/openapi.json").json()
    params = {p["name"]: p for p in schema["paths"]["/v1/matte"]["post"]["parameters"]}
    side = params["max_side"]["schema"]["anyOf"][0]
    assert (side["minimum"], side["maximum"]) == (32, MAX_SIDE)
    details = []
    for value in (MAX_SIDE + 1, 5000, 10**9):
        r = post(f"{svc.url}/v1/matte", files={"file": ("p.png", BRIGHT)}, params={"max_side": value})
        assert r.status_code == 422 and r.json()["error"] == "invalid_parameter", r.text
        details.append(r.json()["detail"])
    assert len(set(details)) == 1 and str(MAX_SIDE) in details[0]  # the same limit, whatever the value
    ok = post(f"{svc.url}/v1/matte", files={"file": ("p.png", BRIGHT)}, params={"max_side": MAX_SIDE, "history": "false"})
    assert ok.status_code == 200, ok.text
    assert get(f"{svc.url}/v1/models").json()["limits"] == {"max_side": MAX_SIDE, "default_max_side": 256}
    readme = (ROOT / "serve_app" / "README.md").read_text()
    assert f"`max_side` | long side (px) the network works at, `[32, {MAX_SIDE}]`" in readme
    assert "8192" not in (ROOT / "serve_app" / "static" / "index.html").read_text()


# --------------------------------------------------------------------------- clients that hang up or stall (items 4, 5)


def test_client_that_hangs_up_mid_upload_is_an_info_line_not_an_error(svc):
    """Clients that disconnect while their body is being read, through Serve's proxy: either the
    proxy cancels the request first (Serve logs it as cancelled) or the ingress sees starlette's
    ClientDisconnect (one INFO line with 499; that path alone, deterministically:
    tests/test_serve_pipeline.py). Which one wins is a race; neither may log an ERROR or a
    traceback, and every hang-up must leave one of the two traces."""
    def traces(path: str) -> int:  # the ingress's INFO line ("POST path 499: ...") or Serve's ("POST path CANCELLED ...")
        return len(re.findall(rf"INFO .* POST {path} (?:499: the client disconnected|CANCELLED)", _ingress_log(svc.temp_dir)))

    for path, boundary in (("/v1/matte", ""), ("/v1/batch", "B0undary")):
        seen = traces(path)
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as s:
                s.sendall(upload_head(path, 100_000, boundary) + b"--B0undary\r\n" + b"x" * 1000)
                time.sleep(0.5)  # the ingress is reading the body now
        deadline = time.monotonic() + 10
        while traces(path) == seen and time.monotonic() < deadline:
            time.sleep(0.25)
        assert traces(path) > seen, _ingress_log(svc.temp_dir)[-3000:]
    time.sleep(1.0)  # an error would be logged right after the trace
    log = _ingress_log(svc.temp_dir)
    assert "ClientDisconnect" not in log and "unhandled error" not in log and "ERROR" not in log, log[-5000:]


def test_body_shorter_than_its_content_length_times_out_with_408(svc):
    t0 = time.monotonic()
    reply = _raw(svc.port, upload_head("/v1/matte", 1000) + b"0123456789", wait_s=BODY_TIMEOUT_S + 30)
    elapsed = time.monotonic() - t0
    status, body = _status_and_json(reply)
    assert status == 408 and body == {"error": "request_timeout", "status": 408, "detail": body["detail"]}
    assert "10 of 1000 bytes" in body["detail"]
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 20


@pytest.mark.timeout(120)
def test_a_drip_fed_body_gets_408_at_the_total_deadline(svc):
    """One byte every half second never trips the idle timeout; the total deadline still ends it (issue 27)."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=60) as s:
        s.sendall(upload_head("/v1/matte", 1000))
        s.settimeout(0.5)
        reply, sent = b"", 0
        while sent < 200 and not reply:  # 100 s of dripping at most: far past the deadline
            s.sendall(b"x")
            sent += 1
            try:
                reply = s.recv(65536)
            except socket.timeout:
                continue
        s.settimeout(5)
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    status, body = _status_and_json(reply)
    assert status == 408 and body["error"] == "request_timeout", body
    assert f"not complete within {BODY_TOTAL_S:g} s" in body["detail"] and sent < 200


# --------------------------------------------------------------------------- errors as documented (item 6)


def test_cut_short_multipart_is_bad_request(svc):
    whole = (b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n"
             b"Content-Type: image/png\r\n\r\n" + BRIGHT + b"\r\n--B0undary--\r\n")
    headers = {"Content-Type": "multipart/form-data; boundary=B0undary"}
    assert post(f"{svc.url}/v1/matte", data=whole, headers=headers, params={"history": "false"}).status_code == 200
    for path in ("/v1/matte", "/v1/batch"):
        r = post(f"{svc.url}{path}", data=whole[: len(whole) // 2], headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
        assert "closing boundary" in r.json()["detail"]


def test_unknown_parameters_are_refused_on_every_route(svc):
    entry = post(f"{svc.url}/v1/matte", files={"file": ("p.png", BRIGHT)}).headers["X-Matting-History-Id"]
    for method, path in (("get", "/v1/history"), ("get", "/v1/models"), ("get", "/v1/stats"), ("get", f"/v1/history/{entry}"),
                         ("get", f"/v1/history/{entry}/result"), ("get", f"/v1/history/{entry}/thumbnail"),
                         ("delete", f"/v1/history/{entry}"), ("post", "/v1/matte"), ("post", "/v1/batch")):
        r = __import__("requests").request(method, f"{svc.url}{path}", params={"bogus": "1"}, timeout=30)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["error"] == "invalid_parameter" and "bogus" in r.json()["detail"]
    assert get(f"{svc.url}/v1/history", params={"limit": 5, "offset": 0}).status_code == 200


def test_what_uvicorn_answers_itself_is_as_documented(svc):
    """Requests that never reach the app: uvicorn answers them in plain text (serve_app/README.md)."""
    readme = (ROOT / "serve_app" / "README.md").read_text()
    long_query = _raw(svc.port, b"GET /v1/models?q=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=10)
    negative = _raw(svc.port, b"POST /v1/matte HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", wait_s=10)
    for reply in (long_query, negative):
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert status == 400 and b"text/plain" in head.lower(), reply[:300]
        assert f"plain-text `{status} {body.decode().strip()}`" in readme, (status, body)


def test_error_table_matches_the_hostile_corpus():
    """Every (status, error) the hostile corpus expects is a row of the README's table, and every row
    of the table is produced by the corpus or by a test of this module (408, 401, 503/504 elsewhere; 503
    ``overloaded``, the admission budget, in tests/test_serve_pipeline.py)."""
    from serve_app.config import LimitSettings
    from testkit.hostile import corpus

    readme = (ROOT / "serve_app" / "README.md").read_text()
    section = readme.split("## Limits and errors", 1)[1].splitlines()
    start = next(i for i, line in enumerate(section) if line.startswith("| input |"))
    rows = [line for line in section[start + 2:] if line.startswith("|")]
    rows = rows[: next((i for i, line in enumerate(section[start + 2:]) if not line.startswith("|")), len(rows))]
    documented = set()
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        statuses = re.findall(r"\d{3}", cells[-2])
        codes = re.findall(r"`(\w+)`", cells[-1])
        documented |= set(zip(map(int, statuses), codes)) if len(statuses) == len(codes) else {(int(s), c) for s in statuses for c in codes}
    expected = {(c.expect, c.error) for c in corpus(LimitSettings(max_upload_mb=2, max_pixels=4_000_000, max_batch_files=8,
                                                                  max_zip_total_mb=3)) if c.expect != 200}
    assert expected <= documented, expected - documented
    elsewhere = {(408, "request_timeout"), (401, "unauthorized"), (503, "unavailable"), (503, "overloaded"), (504, "timeout")}
    assert documented - expected == elsewhere


# --------------------------------------------------------------------------- Ray on loopback (item 9)


def _name(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()


def test_every_ray_server_of_the_local_cluster_listens_on_loopback(svc):
    """GCS, raylet, agents, workers, the HTTP proxy: 127.0.0.1 only. The one documented exception
    (infra/README.md, with the firewall rule): the inter-deployment gRPC server that Ray Serve opens
    on [::] in each replica, which Ray does not let us bind elsewhere."""
    sockets = listening_sockets(cluster_pids(svc.temp_dir))
    names = {_name(pid) for _, _, pid in sockets}
    assert any("gcs_server" in n for n in names) and any(n.endswith("raylet") for n in names), names
    assert ("127.0.0.1", svc.port) in {(ip, port) for ip, port, _ in sockets}
    exposed = [(ip, port, _name(pid)) for ip, port, pid in sockets if not (ip.startswith("127.") or ip == "::1")]
    replicas = [e for e in exposed if e[2].startswith("ray::ServeReplica:matting:")]
    assert exposed == replicas, [e for e in exposed if e not in replicas]
    assert [name for *_, name in replicas] == ["ray::ServeReplica:matting:ingress"]  # the models run inside it


# --------------------------------------------------------------------------- the API docs and the web UI in a browser


def _browser(p):
    import os

    if not os.path.exists(CHROMIUM):
        if os.environ.get("MATTING_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is absent but MATTING_REQUIRE_BROWSER=1")
        pytest.skip(f"Debian's chromium is absent ({CHROMIUM}): apt-get install -y chromium")
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def _offline(page) -> list[tuple[str, str]]:
    """Refuse every request that leaves this machine, as with no internet; returns what was
    refused, as (resource type, URL)."""
    refused: list[tuple[str, str]] = []

    def route(r):
        if re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", r.request.url):
            r.continue_()
        else:
            refused.append((r.request.resource_type, r.request.url))
            r.abort()

    page.route("**/*", route)
    return refused


def test_api_docs_render_without_internet(svc):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page()
            refused = _offline(page)
            page.goto(svc.url + "/docs")
            expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/matte")).to_be_visible(timeout=30_000)
            operations = sum(len(ops) for ops in get(f"{svc.url}/openapi.json").json()["paths"].values())
            expect(page.locator(".swagger-ui .opblock")).to_have_count(operations)
            page.goto(svc.url + "/redoc")
            expect(page.get_by_text("Matte one image").first).to_be_visible(timeout=30_000)
            # Only ReDoc's "powered by" logo comes from outside (an <img>; the page does without it).
            assert [url for kind, url in refused if kind != "image"] == [], refused
        finally:
            browser.close()


def test_web_ui_reports_empty_results_clears_errors_and_keeps_the_batch_summary(svc, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    bright, dark = tmp_path / "bright.png", tmp_path / "dark.png"
    bright.write_bytes(BRIGHT)
    dark.write_bytes(DARK)
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page()
            _offline(page)
            page.goto(svc.url + "/")
            expect(page.locator("#p-model option")).to_have_count(3, timeout=30_000)
            assert page.locator("#p-max_side").get_attribute("max") == str(MAX_SIDE)
            info, notice, download = page.locator("#result-info"), page.locator("#result-notice"), page.locator("#download")

            # a normal result: no notice
            page.set_input_files("#file-single", str(bright))
            expect(info).to_have_attribute("data-state", "done", timeout=60_000)
            expect(info).to_contain_text("model base")
            expect(notice).to_be_hidden()
            expect(download).not_to_have_class(re.compile("disabled"))

            # an error: the old result and its Download button go away
            page.fill("#p-max_side", str(MAX_SIDE + 1))
            expect(info).to_have_attribute("data-state", "error", timeout=60_000)
            expect(info).to_contain_text("422")
            expect(download).to_have_class(re.compile("disabled"))
            assert page.locator("#result-img").get_attribute("src") is None
            page.fill("#p-max_side", "")

            # an empty result: a visible notice, not a silent transparent image
            page.set_input_files("#file-single", str(dark))
            expect(info).to_contain_text("model lowlight", timeout=60_000)
            expect(info).to_have_attribute("data-state", "done")
            expect(notice).to_be_visible()
            expect(notice).to_contain_text("No subject found")
            page.set_input_files("#file-single", str(bright))
            expect(info).to_contain_text("model base", timeout=60_000)
            expect(notice).to_be_hidden()

            # refinement: the mode asked for is the mode that ran, and the result is the input's size,
            # shown pixel for pixel with "full size"
            page.select_option("#p-refine", "classical")
            expect(info).to_contain_text("refine classical", timeout=60_000)
            expect(info).to_have_attribute("data-size", "80x60", timeout=30_000)
            page.check("#full-size")
            assert page.locator("#result-img").evaluate("im => im.getBoundingClientRect().width") == 80
            page.select_option("#p-refine", "auto")
            expect(info).to_contain_text("refine off", timeout=60_000)

            # batch: per-file notice, and the ZIP's summary stays
            page.click("button[data-tab=batch]")
            page.set_input_files("#file-batch", [str(bright), str(dark)])
            page.click("#batch-run")
            count = page.locator("#batch-count")
            expect(count).to_have_attribute("data-state", "done", timeout=60_000)
            expect(count).to_have_text("2 file(s), 0 failed, 1 with no subject found")
            expect(page.locator("#batch-table tbody tr").nth(1).locator("td").nth(2)).to_have_text("ok: no subject found")
            page.wait_for_timeout(1000)
            expect(count).to_have_text("2 file(s), 0 failed, 1 with no subject found")
        finally:
            browser.close()
