"""The health gate with real processes and a real HTTP server: passes, early exit, timeout."""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lockstep.health.checks import HttpCheck, TcpCheck
from lockstep.health.gate import wait_until_healthy
from lockstep.runtimes.local import ProcessSpec, is_running, log_tail, start_process, stop_process


class FlappingHandler(BaseHTTPRequestHandler):
    """/health alternates 200 and 500: never three passes in a row. /ok always passes."""

    counter = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with FlappingHandler.lock:
            FlappingHandler.counter += 1
            healthy = self.path == "/ok" or FlappingHandler.counter % 2 == 0
        body = b"fine" if healthy else b"connection pool exhausted"
        self.send_response(200 if healthy else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FlappingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    """A free loopback port from this worker's LOCKSTEP_TEST_PORTS block, never the kernel's
    ephemeral range, where an outgoing connection could take it before the server binds it."""
    from tests.deploy.conftest import free_ports

    return free_ports(1)[0]


def spec_for(tmp_path: Path, source: str, port: int | None = None) -> ProcessSpec:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    return ProcessSpec("web@green", (sys.executable, str(script)), tmp_path, {}, port, tmp_path / "app.log")


def test_passes_after_consecutive_successes(server: str) -> None:
    """A healthy endpoint passes after exactly passes_required checks."""
    result = wait_until_healthy(HttpCheck(f"{server}/ok"), passes_required=3, interval=0.05, timeout=30)
    assert result.ok, result.reason
    assert result.attempts == 3
    assert "3 consecutive passes" in result.reason


def test_flapping_endpoint_times_out_with_last_failure(server: str) -> None:
    """Passes must be consecutive: an endpoint failing every other time times out, naming the last failure."""
    result = wait_until_healthy(HttpCheck(f"{server}/health"), passes_required=2, interval=0.05, timeout=1.0)
    assert not result.ok
    assert result.attempts >= 4
    assert "not healthy after 1 s" in result.reason
    assert "answered 500" in result.reason and "connection pool exhausted" in result.reason
    assert 1.0 <= result.elapsed < 10


def test_becomes_healthy_once_the_process_listens(tmp_path: Path) -> None:
    """A process that needs a moment before it listens passes once it does (failures before reset nothing)."""
    source = """
    import os, socket, time
    time.sleep(1.0)
    server = socket.socket()
    server.bind(("127.0.0.1", int(os.environ["PORT"])))
    server.listen(50)
    print("ready", flush=True)
    while True:
        connection, _ = server.accept()
        connection.close()
    """
    port = free_port()
    spec = spec_for(tmp_path, source, port)
    process = start_process(spec, settle_seconds=0.1)
    try:
        result = wait_until_healthy(
            TcpCheck("127.0.0.1", port), interval=0.1, timeout=30, process_alive=lambda: is_running(process)
        )
        assert result.ok, result.reason
        assert result.attempts > 3  # some checks failed before it listened
    finally:
        stop_process(process)


def test_fails_early_when_the_process_exits(tmp_path: Path) -> None:
    """A process that dies while being checked ends the gate at once, with its log tail, not after the timeout."""
    source = """
    import sys, time
    time.sleep(0.5)
    print("fatal: relation \\"orders\\" does not exist", flush=True)
    sys.exit(1)
    """
    spec = spec_for(tmp_path, source, free_port())
    process = start_process(spec, settle_seconds=0.1)
    try:
        result = wait_until_healthy(
            HttpCheck(f"http://127.0.0.1:{spec.port}/health"),
            interval=0.1,
            timeout=60,
            process_alive=lambda: is_running(process),
            log_tail=lambda: log_tail(spec.log_path),
        )
    finally:
        stop_process(process)
    assert not result.ok
    assert result.elapsed < 20
    assert "the process exited before it became healthy" in result.reason
    assert 'fatal: relation "orders" does not exist' in result.reason
    assert "connection refused" in result.reason  # the last check's failure, too


def test_dead_before_the_first_check() -> None:
    """A process already dead is reported without running a check."""
    result = wait_until_healthy(
        TcpCheck("127.0.0.1", free_port()), process_alive=lambda: False, log_tail=lambda: "boom"
    )
    assert not result.ok and result.attempts == 0
    assert "boom" in result.reason
