#!/usr/bin/env python3
"""Benchmark: how long a traffic switch through real nginx and HAProxy takes.

For each server it runs lockstep's managed switch on loopback in front of two test backends and
switches back and forth while a prober sends GET / on fresh connections back to back (and, by
default, the test load generator adds keep-alive and POST traffic). Per switch it records:

* call: how long `switch_to` takes to return (write, validate, reload, wait for new workers);
* first: from calling `switch_to` to the start of the first probe that the new backend answered;
* failures: requests that failed during all the switches (must be 0).

Usage, from the repository root:

    python bench/proxy_switch_real_servers.py                  # 20 switches each, with load
    python bench/proxy_switch_real_servers.py --switches 5 --no-load --servers nginx
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.traffic.backend import start_backend  # noqa: E402
from tests.traffic.load import LoadGenerator  # noqa: E402

from lockstep.traffic.haproxy import HaproxySwitch  # noqa: E402
from lockstep.traffic.nginx import NginxSwitch  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prober:
    """GET / on a fresh connection, back to back; remembers when each answer's request started."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[float, str]] = []
        self.failures = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    def first_answer_after(self, started: float, name: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sent, body in list(self.answers):
                if sent >= started and body == name:
                    return sent
            time.sleep(0.001)
        raise SystemExit(f"{name} never answered after the switch")

    def _run(self) -> None:
        while not self._stopping.is_set():
            sent = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                connection.request("GET", "/")
                body = connection.getresponse().read().decode()
                connection.close()
            except OSError:
                self.failures += 1
                continue
            self.answers.append((sent, body))
            if len(self.answers) > 5000:
                del self.answers[:2500]


def measure(kind: str, switches: int, with_load: bool) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="lockstep-bench-") as scratch,
        start_backend("blue") as blue,
        start_backend("green") as green,
    ):
        listen = f"127.0.0.1:{free_port()}"
        state = Path(scratch) / "state"
        switch = NginxSwitch(listen, state) if kind == "nginx" else HaproxySwitch(listen, state)
        switch.ensure_running(blue.port)
        prober = Prober(int(listen.rsplit(":", 1)[1]))
        load = LoadGenerator(f"http://{listen}", threads=4) if with_load else None
        calls: list[float] = []
        firsts: list[float] = []
        try:
            prober.start()
            if load is not None:
                load.start()
            for number in range(switches):
                time.sleep(0.2)  # let traffic settle on the current backend
                target = green if number % 2 == 0 else blue
                started = time.monotonic()
                switch.switch_to(target.port)
                calls.append(time.monotonic() - started)
                firsts.append(prober.first_answer_after(started, target.name) - started)
        finally:
            report = load.stop() if load is not None else None
            prober.stop()
            switch.stop()
        return {
            "server": kind,
            "switches": switches,
            "call_median_ms": statistics.median(calls) * 1000,
            "call_max_ms": max(calls) * 1000,
            "first_median_ms": statistics.median(firsts) * 1000,
            "first_max_ms": max(firsts) * 1000,
            "requests": (report.requests if report else 0) + len(prober.answers),
            "failures": (report.failures if report else 0) + prober.failures,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--servers", nargs="+", default=["nginx", "haproxy"], choices=["nginx", "haproxy"])
    parser.add_argument("--no-load", action="store_true", help="only the prober, no background load")
    arguments = parser.parse_args()
    print(
        f"{'server':8} {'switches':>8} {'call median':>12} {'call max':>9} {'first median':>13} {'first max':>10} "
        f"{'failures':>8}"
    )
    for kind in arguments.servers:
        result = measure(kind, arguments.switches, not arguments.no_load)
        print(
            f"{kind:8} {result['switches']:>8} {result['call_median_ms']:>10.0f}ms {result['call_max_ms']:>7.0f}ms "
            f"{result['first_median_ms']:>11.0f}ms {result['first_max_ms']:>8.0f}ms {result['failures']:>8}"
        )


if __name__ == "__main__":
    main()
