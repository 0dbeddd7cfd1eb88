"""Continuous HTTP load that records every failure, to prove a traffic switch drops nothing.

Each thread loops over a mix: GET / and POST /echo (random body, echo verified), on a kept-alive
connection or a fresh one. A reused keep-alive connection that the server closed while idle
(no response byte received) is retried once on a fresh connection, as RFC 9112 section 9.3.1 and
every HTTP client allow; those retries are counted in `stale_retries`, not hidden.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_REASONS = 20


@dataclass
class LoadReport:
    """What the load saw: a switch is clean when `failures` is 0."""

    requests: int = 0
    failures: int = 0
    failure_reasons: list[str] = field(default_factory=list)
    bodies_seen: Counter[str] = field(default_factory=Counter)
    stale_retries: int = 0


# What http.client raises when the server closed the connection before any response byte.
STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def response_retrying_stale(
    connection: http.client.HTTPConnection,
    reused: bool,
    send: Callable[[http.client.HTTPConnection], None],
    reconnect: Callable[[], http.client.HTTPConnection],
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, bool]:
    """`send` a request on `connection` and get the response's head; returns it, the connection
    it came on, and whether it was retried.

    A reused keep-alive connection that the server closed while idle (nothing of a response
    received) is retried once on a fresh connection, as RFC 9112 section 9.3.1 and every HTTP
    client allow; callers count those retries, never hide them. Anything after the status line
    (a body cut short) is a failure, not a retry: the caller reads the body itself.
    """
    try:
        send(connection)
        return connection.getresponse(), connection, False
    except STALE_CONNECTION_ERRORS:
        if not reused:
            raise
    connection.close()
    fresh = reconnect()
    try:
        send(fresh)
        return fresh.getresponse(), fresh, True
    except BaseException:
        fresh.close()
        raise


class LoadGenerator:
    """`start()` spawns `threads` load threads against `url`; `stop()` joins them and reports."""

    def __init__(self, url: str, threads: int = 4, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.threads = threads
        self.timeout = timeout
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._report = LoadReport()
        self._workers: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), name=f"load-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> LoadReport:
        self._stopping.set()
        for worker in self._workers:
            worker.join(self.timeout + 10)
        return self._report

    @property
    def requests_so_far(self) -> int:
        """Completed requests (failed or not) since start, while the load runs."""
        return self._report.requests

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> None:
        """Block until at least `count` requests completed in total (for pacing tests without sleeps)."""
        deadline = time.monotonic() + timeout
        while self._report.requests < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"load reached only {self._report.requests} of {count} requests")
            time.sleep(0.005)

    def _record(self, body_seen: str | None = None, failure: str | None = None, stale_retry: bool = False) -> None:
        with self._lock:
            report = self._report
            if stale_retry:
                report.stale_retries += 1
                return
            report.requests += 1
            if body_seen is not None:
                report.bodies_seen[body_seen] += 1
            if failure is not None:
                report.failures += 1
                if len(report.failure_reasons) < MAX_REASONS:
                    report.failure_reasons.append(failure)

    def _run(self, number: int) -> None:
        generator = random.Random(number)
        kept: http.client.HTTPConnection | None = None
        while not self._stopping.is_set():
            keep_alive = generator.random() < 0.7
            is_post = generator.random() < 0.4
            body = os.urandom(generator.choice([0, 16, 1024, 64 * 1024])) if is_post else b""
            reused = keep_alive and kept is not None
            connection = kept if reused and kept is not None else self._connect()
            try:
                connection = self._exchange(connection, is_post, body, reused)
            except Exception as error:
                connection.close()
                if connection is kept:
                    kept = None
                self._record(failure=f"{'POST /echo' if is_post else 'GET /'}: {type(error).__name__}: {error}")
                continue
            if keep_alive:
                kept = connection
            else:
                connection.close()
        if kept is not None:
            kept.close()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _exchange(
        self, connection: http.client.HTTPConnection, is_post: bool, body: bytes, reused: bool
    ) -> http.client.HTTPConnection:
        """One request, its outcome recorded; returns the connection it ended on."""

        def send(on: http.client.HTTPConnection) -> None:
            if is_post:
                on.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
            else:
                on.request("GET", "/")

        response, connection, retried = response_retrying_stale(connection, reused, send, self._connect)
        if retried:
            self._record(stale_retry=True)
        answer = response.read()
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
        if not 200 <= response.status < 300:
            self._record(failure=f"{response.status} {response.reason}: {answer[:200]!r}")
        elif is_post and answer != body:
            self._record(failure=f"POST /echo: echoed {len(answer)} bytes differ from the {len(body)} sent")
        elif is_post:
            self._record()
        else:
            self._record(body_seen=answer.decode("utf-8", "replace"))
        return connection


@dataclass
class WrkReport:
    """What wrk saw: every request a client sent and got no 2xx/3xx answer to counts, including
    a kept-alive connection closed under a request (wrk never retries one, as no client may for
    a POST)."""

    requests: int
    socket_errors: dict[str, int]
    non_2xx: int
    output: str

    @property
    def failures(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


class WrkLoad:
    """`wrk` on kept-alive connections against `url` for `seconds`, in the background."""

    def __init__(self, wrk: str, url: str, seconds: float, connections: int = 16) -> None:
        self._process = subprocess.Popen(
            [wrk, "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def running(self) -> bool:
        return self._process.poll() is None

    def wait(self, timeout: float = 120.0) -> WrkReport:
        output, _ = self._process.communicate(timeout=timeout)
        requests = re.search(r"(\d+) requests in", output)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        assert requests is not None, output
        return WrkReport(
            requests=int(requests.group(1)),
            socket_errors=dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
            if errors
            else {},
            non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
            output=output,
        )
