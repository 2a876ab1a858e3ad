"""A local Ray head node for tests, benchmarks and the rehearsal (:mod:`testkit.rehearse`): free ports, and a stop
that touches only its own cluster.

``ray start --head`` on loopback with every port chosen free, so several clusters (parallel
test runs, a running ``make serve``) share one machine without colliding; and a stop that ends
the processes of that cluster alone, where ``ray stop`` would kill every Ray process on the
machine. Needs the ``ray`` CLI beside the running Python.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from serve_app.run import LOOPBACK_ENV, free_port
from ray_jobs.common import KEEP_IDLE_WORKERS_ENV


QUIET_DAEMONS_ENV = {
    # While it watches fewer than 1,000 log files, the log monitor lists the logs folder and
    # stats every file in it ten times a second: 5% of a core all session long on 2 cores
    # (measured per test, see the README on the suite's time). Past the threshold it lists them every
    # LOG_NAME_UPDATE_INTERVAL_S (0.5 s); a new worker's output still reaches the driver.
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    # Serve's controller runs its loop every 0.1 s, 3% of a core with nothing deployed; the
    # tests wait on Serve's state by polling, so a 0.5 s loop costs them nothing.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}
"""Settings for the daemons of the clusters started here (tests, benchmarks, the rehearsal), read
from the environment of ``ray start``; the environment of the caller wins."""

WORKER_PRIORITY_ENV = {"RAY_worker_niceness": "0"}
"""The raylet starts workers 15 nice levels below itself by default. The suite runs everything
but its cluster tests at nice 19 beside them (``tests/conftest.py``), and Linux gives a nice-15
process only 36/51 of a core it shares with a nice-19 one (scheduler weights 36 and 15): the
cluster's workers could lose 30% of a contended core to unit tests meant only to fill idle time.
With 0 they run at the priority the cluster was started with. (In two fresh clones the suite's
time moved within the host's noise.) ``make serve`` keeps Ray's default."""


def listening_sockets(pids: "set[int] | list[int]") -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state that one of ``pids`` holds,
    read from ``/proc`` (no ``ss`` or psutil needed). IPv4-mapped IPv6 addresses are given as IPv4."""
    import ipaddress

    inodes: dict[int, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[int(target[8:-1])] = pid
        except OSError:
            continue
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or int(f[9]) not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = f[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints the address as native-endian 32-bit words.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            if v6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            out.append((str(ip), int(hex_port, 16), inodes[int(f[9])]))
    return sorted(out)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can read."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(proc.name)] = (ppid, cmdline + " ")
    return procs


def cluster_pids(temp_dir: str) -> list[int]:
    """The processes of the ``ray start`` that owns ``temp_dir``.

    Those whose command line names ``temp_dir`` (GCS, raylet, dashboard, monitors), those that
    name its GCS port (the client server), and every descendant of either (workers and the
    agents, which rename themselves ``ray::...``).
    """
    import re

    procs = _processes()
    roots = {pid for pid, (_, cmd) in procs.items() if temp_dir in cmd}
    ports = {m for pid in roots for m in re.findall(r"--gcs[-_]address=\S+?:(\d+)|--gcs_server_port=(\d+)", procs[pid][1]) for m in m if m}
    roots |= {pid for pid, (_, cmd) in procs.items() if any(f":{port} " in cmd for port in ports)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in roots:
                roots.add(child)
                stack.append(child)
    roots.discard(os.getpid())
    return sorted(roots)


def stop_ray_head(temp_dir: str, timeout: float = 30) -> None:
    """Stop only the cluster that owns ``temp_dir``.

    ``ray stop`` kills every Ray process on the machine, including clusters that other test
    runs or services on the same machine own; this stops ours alone (see :func:`cluster_pids`).
    The set is taken once, before anything dies, while the process tree still links the
    agents and workers to their raylet.
    """
    import signal
    import time

    targets = set(cluster_pids(temp_dir))

    def alive() -> set[int]:
        return {pid for pid in targets if process_alive(pid)}

    # SIGTERM first, for the processes that clean up after themselves (dashboard, workers); Ray
    # 2.60's gcs_server, raylet and runtime-env agent were still alive 5 s after it, so they get
    # SIGKILL after a short grace instead of a long one.
    for sig, wait in ((signal.SIGTERM, min(1.5, timeout / 2)), (signal.SIGKILL, timeout / 2)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive():
            return


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie waiting to be reaped."""
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def start_ray_head(temp_dir: str, num_cpus: int = 2, env: "dict[str, str] | None" = None) -> dict:
    """``ray start --head`` on loopback with every port chosen free, so that several clusters
    (parallel test runs on one machine) never collide, and every Ray server listening on 127.0.0.1
    only (:data:`LOOPBACK_ENV`; a driver joining it calls :func:`use_loopback` first), keeping
    idle workers (:data:`ray_jobs.common.KEEP_IDLE_WORKERS_ENV`), its workers at its own priority
    (:data:`WORKER_PRIORITY_ENV`); ``env``: more settings for this cluster's processes (the caller's
    environment still wins). Returns address, dashboard URL, ray binary."""
    import subprocess

    bin_dir = str(Path(sys.executable).parent)
    ray_bin = str(Path(bin_dir, "ray"))
    port, dash = free_port(), free_port()
    cmd = [
        ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
        f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--num-cpus={num_cpus}", "--object-store-memory=400000000", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    try:
        subprocess.run(cmd, check=True, timeout=120, capture_output=True, text=True, env={**KEEP_IDLE_WORKERS_ENV, **QUIET_DAEMONS_ENV, **WORKER_PRIORITY_ENV, **(env or {}), **os.environ, **LOOPBACK_ENV})
    except subprocess.CalledProcessError as e:
        stop_ray_head(temp_dir)
        raise RuntimeError(f"ray start failed: {e.stdout[-2000:]} {e.stderr[-2000:]}") from None
    return {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "ray_bin": ray_bin, "temp_dir": temp_dir}
