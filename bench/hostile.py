"""The hostile-input corpus against a running Serve app; writes "Hostile input" in ``bench/RELIABILITY.md``.

    python -m bench.hostile                 # starts a local Ray cluster and the app with tiny random models
    python -m bench.hostile --url http://127.0.0.1:8000 --dashboard http://127.0.0.1:8265 [--api-key KEY]

Every case of :func:`testkit.hostile.corpus` is sent once; the report is a table of case,
expected and got answer, the slowest reply, and the number of replicas that were replaced
during the run (from Serve's REST API: a replica id or process id that changed). That number
must be 0: no hostile upload may crash a replica. Exit status 1 when a case is answered
wrongly or a replica was replaced. The local app uses the test limits of
``testkit/serve.py`` (2 MB uploads, 4 Mpx), so the oversized cases stay small.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.results import markdown_table, update_results
from serve_app.config import LimitSettings, app_entry
from testkit.hostile import Result, corpus, replica_identities, run_cases

RELIABILITY = Path(__file__).resolve().parent / "RELIABILITY.md"
HEADER = (
    "# Reliability results\n\n"
    "Written by the reliability runs in `bench/` themselves (hostile input, load and faults); each "
    "section is replaced by the latest run of its script.\n"
)
SECTION = "Hostile input"


def report(results: list[Result], replaced: int, replicas: int) -> str:
    """The Markdown section: counts, replica restarts, and the case -> expected -> got table."""
    wrong = [r for r in results if r.problem]
    slowest = max(results, key=lambda r: r.seconds)
    rows = [
        [r.case.name.replace("|", "\\|"), r.case.endpoint, r.case.expected, r.got, "ok" if not r.problem else "WRONG"]
        for r in results
    ]
    lines = [
        f"{len(results)} cases from `testkit/hostile.py` sent to one running app "
        f"({sum(r.case.expect == 200 for r in results)} legitimately odd inputs that must succeed, the rest must be refused "
        "with their documented status and JSON error).",
        "",
        f"- answered as documented: **{len(results) - len(wrong)} / {len(results)}**",
        f"- replicas replaced during the run: **{replaced}** of {replicas} (must be 0)",
        f"- slowest reply: {slowest.seconds * 1000:.0f} ms ({slowest.case.name})",
    ]
    lines += [f"- WRONG: {r.case.name}: {r.problem}" for r in wrong]
    return "\n".join(lines) + "\n\n" + markdown_table(["case", "endpoint", "expected", "got", ""], rows)


def write_section(markdown: str, path: Path = RELIABILITY) -> Path:
    """Replace this benchmark's section of ``RELIABILITY.md`` (created with its header if absent)."""
    if not path.exists():
        path.write_text(HEADER)
    return update_results(SECTION, markdown, path=path)


def _local_app(tmp: Path):
    """The tests' machinery: ``ray start --head`` on loopback (free ports, token auth) and the app
    deployed through the dashboard with tiny random checkpoints and the test limits.
    Returns (url, dashboard, limits, stop)."""
    from bench.local_app import bench_checkpoints, start_cluster_and_app, stop_cluster

    checkpoints, _ = bench_checkpoints(None, tmp)
    cluster, config, url = start_cluster_and_app(tmp, checkpoints)
    return url, cluster["dashboard"], LimitSettings(**app_entry(config)["args"]["limits"]), lambda: stop_cluster(cluster)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running app with the shipped limits (default: start one locally)")
    ap.add_argument("--dashboard", help="the Ray dashboard of --url's cluster (for the replica check)")
    ap.add_argument("--api-key", default="", help="the app's API key, if it has one")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RELIABILITY.md")
    args = ap.parse_args(argv)
    from testkit.env import configure

    configure()  # the auth and S3 environment before Ray is imported

    stop = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if not args.dashboard:
                ap.error("--dashboard is needed with --url")
            url, dashboard, limits = args.url, args.dashboard, LimitSettings()  # the shipped limits
        else:
            print("starting a local cluster and the app...", flush=True)
            url, dashboard, limits, stop = _local_app(Path(tmp))
        try:
            headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
            before = replica_identities(dashboard)
            results = run_cases(url, corpus(limits), headers, log=True)
            after = replica_identities(dashboard)
        finally:
            if stop is not None:
                stop()
    replaced = sum(1 for rid, ident in before.items() if after.get(rid, (None,))[:2] != ident[:2])
    replaced += sum(1 for rid in after if rid not in before)
    section = report(results, replaced, len(before))
    if args.no_write:
        print(section)
    else:
        print(f"wrote {write_section(section)}")
    bad = [r for r in results if r.problem]
    for r in bad:
        print(f"WRONG {r.case.name}: {r.problem}", file=sys.stderr)
    return 1 if bad or replaced else 0


if __name__ == "__main__":
    sys.exit(main())
