#!/usr/bin/env python3
"""Benchmark: lockstep's built-in proxy against nginx as a reverse proxy, in front of the same backend.

Issue #4's targets: throughput at least 0.5x nginx's, at most +1 ms (p50) / +5 ms (p99) latency over
direct requests at a fixed 500 requests/s, and a switch that takes effect in under 100 ms.
Usage, from the repository root:

    python bench/proxy.py                       # 10 s per wrk run, 3 rounds (best of)
    python bench/proxy.py --duration 3 --rounds 1   # quick look

The backend is a second nginx serving a 13-byte body from memory (`return 200`), so the backend is
not the bottleneck. Both proxies run as one process (nginx `worker_processes 1`, the built-in
proxy is single-threaded) with keep-alive to the backend; wrk, the backend and the proxy share the
machine. Fixed-rate latency comes from an open-loop paced client in this script (wrk2 is not
available): requests are scheduled every 2 ms on 32 keep-alive connections and each latency is
measured from its scheduled send time, so a stall is not hidden (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lockstep.traffic.builtin import BuiltinProxy  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nginx_config(prefix: Path, server_block: str) -> str:
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    {server_block}
}}
"""


@contextlib.contextmanager
def nginx(server_block: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    prefix = Path(tempfile.mkdtemp(prefix="lsbench-nginx-"))
    (prefix / "nginx.conf").write_text(nginx_config(prefix, server_block))
    process = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(prefix),
            "-e",
            str(prefix / "error.log"),
            "-c",
            str(prefix / "nginx.conf"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_answers(port)
        yield process
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(prefix, ignore_errors=True)


def static_backend(port: int, body: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    block = f'server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{body}"; }} }}'
    return nginx(block, port)


def nginx_proxy(port: int, upstream_port: int) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    block = f"""
    upstream slot {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://slot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}"""
    return nginx(block, port)


def wait_answers(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/")
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (nginx's master and workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far: contention on a shared machine slows a
    process down but does not inflate this, so CPU per request compares fairly."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(port: int, duration: float, connections: int) -> float:
    output = subprocess.run(
        [WRK, "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        print(output, file=sys.stderr)
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert match, output
    return float(match.group(1))


async def paced_latencies(port: int, rate: float, duration: float, connections: int = 32) -> list[float]:
    """Open-loop: request i is due at start + i/rate; its latency counts from then, in milliseconds."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    queue: asyncio.Queue[float] = asyncio.Queue()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            due = await queue.get()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append((loop.time() - due) * 1000)
            queue.task_done()

    workers = [asyncio.ensure_future(worker()) for _ in range(connections)]
    await asyncio.sleep(0.2)
    start = loop.time() + 0.05
    total = int(rate * duration)
    for number in range(total):
        due = start + number / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    await queue.join()
    for task in workers:
        task.cancel()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_profile(port: int, rate: float, duration: float) -> tuple[float, float]:
    samples = asyncio.run(paced_latencies(port, rate, duration))
    return statistics.median(samples), percentile(samples, 0.99)


SWITCH_CLIENT = """
import http.client, sys, time
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
while True:
    connection.request("GET", "/")
    body = connection.getresponse().read()
    sys.stdout.write(f"{time.monotonic()} {body.decode()}\\n")
    sys.stdout.flush()
"""


def switch_times(proxy: BuiltinProxy, blue_port: int, green_port: int, rounds: int) -> list[float]:
    """Milliseconds from the switch_to call to the first response served by the new slot.

    A client in another process (so it does not share this one's GIL) keeps requesting on a
    keep-alive connection and stamps each response with the system-wide monotonic clock; the
    switch time is that of the first response from the new slot after switch_to was called."""
    seen: list[tuple[float, str]] = []
    client = subprocess.Popen([sys.executable, "-c", SWITCH_CLIENT, str(proxy.port)], stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    stdout = client.stdout

    def collect() -> None:
        for line in stdout:
            when, _, body = line.strip().partition(" ")
            seen.append((float(when), body))

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    results = []
    try:
        while len(seen) < 10:
            time.sleep(0.01)
        for number in range(rounds):
            target, body = (green_port, "green") if number % 2 == 0 else (blue_port, "blue")
            time.sleep(0.05)
            first_index = len(seen)
            started = time.monotonic()
            proxy.switch_to(target)
            while True:
                served = [when for when, answer in seen[first_index:] if when > started and answer == body]
                if served:
                    results.append((min(served) - started) * 1000)
                    break
                time.sleep(0.001)
    finally:
        client.kill()
        client.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run and per latency run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target; the best counts")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0)
    arguments = parser.parse_args()

    backend_port, green_port, nginx_port, builtin_port = free_port(), free_port(), free_port(), free_port()
    state_directory = Path(tempfile.mkdtemp(prefix="lsb-", dir="/tmp"))
    proxy = BuiltinProxy(f"127.0.0.1:{builtin_port}", state_directory)
    with (
        static_backend(backend_port, "blue") as backend,
        static_backend(green_port, "green"),
        nginx_proxy(nginx_port, backend_port) as nginx_process,
    ):
        proxy.ensure_running(backend_port)
        try:
            proxy_pid = proxy.pid()
            assert proxy_pid is not None
            targets = {"direct": backend_port, "nginx": nginx_port, "builtin": builtin_port}
            measured = {"direct": process_tree(backend.pid), "nginx": process_tree(nginx_process.pid)}
            measured["builtin"] = [proxy_pid]
            throughput = {name: 0.0 for name in targets}
            cpu_per_request = {name: float("inf") for name in targets}
            for _ in range(arguments.rounds):
                for name, port in targets.items():
                    cpu_before = cpu_seconds(measured[name])
                    rate = wrk(port, arguments.duration, arguments.connections)
                    used = cpu_seconds(measured[name]) - cpu_before
                    throughput[name] = max(throughput[name], rate)
                    cpu_per_request[name] = min(cpu_per_request[name], used / (rate * arguments.duration) * 1e6)
            latency = {
                name: latency_profile(port, arguments.rate, arguments.duration) for name, port in targets.items()
            }
            switches = switch_times(proxy, backend_port, green_port, rounds=20)
            state = proxy.state()
        finally:
            proxy.stop()
            shutil.rmtree(state_directory, ignore_errors=True)

    errors = sum(upstream.errors for upstream in state.upstreams)
    direct_p50, direct_p99 = latency["direct"]
    print(f"\n## Traffic switch: built-in proxy vs nginx ({os.cpu_count()} CPUs, same run)\n")
    print("| measure | direct | nginx proxy | built-in proxy | built-in / nginx | target |")
    print("|---|---|---|---|---|---|")
    print(
        f"| requests/s (wrk -t1 -c{arguments.connections}, best of {arguments.rounds}x{arguments.duration:g}s) "
        f"| {throughput['direct']:,.0f} | {throughput['nginx']:,.0f} | {throughput['builtin']:,.0f} "
        f"| {throughput['builtin'] / throughput['nginx']:.2f}x | >= 0.5x |"
    )
    print(
        f"| CPU per request of the measured server, µs (lower is better; robust to other load) "
        f"| {cpu_per_request['direct']:.1f} | {cpu_per_request['nginx']:.1f} | {cpu_per_request['builtin']:.1f} "
        f"| {cpu_per_request['nginx'] / cpu_per_request['builtin']:.2f}x | |"
    )
    for label, index, direct, budget in (("p50", 0, direct_p50, 1.0), ("p99", 1, direct_p99, 5.0)):
        nginx_value, builtin_value = latency["nginx"][index], latency["builtin"][index]
        print(
            f"| latency {label} at {arguments.rate:g} req/s, ms (added over direct) | {direct:.2f} "
            f"| {nginx_value:.2f} ({nginx_value - direct:+.2f}) | {builtin_value:.2f} ({builtin_value - direct:+.2f}) "
            f"| | <= +{budget:g} ms |"
        )
    print(
        f"| switch time, ms (switch_to call to first response from the new slot; median / max of {len(switches)}) "
        f"| | | {statistics.median(switches):.1f} / {max(switches):.1f} | | < 100 ms |"
    )
    print(f"\nBackend: nginx `return 200` (4-5 byte body). Built-in proxy upstream errors during the run: {errors}.")
    print("Reproduce: `python bench/proxy.py` (quick: `python bench/proxy.py --duration 3 --rounds 1`)")


if __name__ == "__main__":
    main()
