"""Health checks against a real HTTP(S) server, real TCP sockets and real commands on loopback."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lockstep.errors import UsageError
from lockstep.health.checks import CommandCheck, HttpCheck, TcpCheck, describe_check, run_check
from tests.conftest import require_binary


class Handler(BaseHTTPRequestHandler):
    """Routes that behave like healthy, broken, redirecting and hanging applications."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self.reply(200, b'{"status": "ok", "database": "up"}')
        elif self.path == "/broken":
            self.reply(503, b"database is down\n" + b"stack frame\n" * 100)
        elif self.path == "/login-wall":
            self.reply(302, b"", {"Location": "/login?next=/health"})
        elif self.path == "/slow":
            time.sleep(3)
            self.reply(200, b"finally")
        elif self.path == "/needs-token":
            ok = self.headers.get("X-Health-Token") == "let-me-in"
            self.reply(200 if ok else 403, b"token ok" if ok else b"forbidden")
        elif self.path == "/query?deep=1":
            self.reply(200, b"deep check passed")
        else:
            self.reply(404, b"no such page")


class QuietServer(ThreadingHTTPServer):
    """Clients that give up (the timeout test) are expected; their broken pipes are not news."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A real HTTP server on a loopback port chosen by the kernel; yields its base URL."""
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_http_passes_on_expected_status(server: str) -> None:
    """A 200 from the health path passes and reports the status."""
    result = run_check(HttpCheck(f"{server}/health"))
    assert result.ok, result.reason
    assert result.status == 200
    assert 0 <= result.elapsed < 2


def test_http_wrong_status_says_expected_and_got(server: str) -> None:
    """A 503 fails naming both codes and quoting the start of the body (not all of it)."""
    result = run_check(HttpCheck(f"{server}/broken"))
    assert not result.ok
    assert result.status == 503
    assert "answered 503" in result.reason and "expected 200" in result.reason
    assert "database is down" in result.reason
    assert len(result.reason) < 400


def test_http_custom_expected_status_and_query(server: str) -> None:
    """expect_status may be anything not 3xx (here 404); the query string is sent."""
    assert run_check(HttpCheck(f"{server}/nothing-here", expect_status=404)).ok
    assert run_check(HttpCheck(f"{server}/query?deep=1", body_contains="passed")).ok


def test_http_body_must_contain(server: str) -> None:
    """body_contains passes on a match; a mismatch shows what the body started with."""
    assert run_check(HttpCheck(f"{server}/health", body_contains='"database": "up"')).ok
    result = run_check(HttpCheck(f"{server}/health", body_contains="all systems go"))
    assert not result.ok
    assert "does not contain 'all systems go'" in result.reason
    assert '{"status": "ok"' in result.reason


def test_http_redirect_is_not_followed(server: str) -> None:
    """A 302 fails, naming the Location and telling to point the check at the final path."""
    result = run_check(HttpCheck(f"{server}/login-wall"))
    assert not result.ok
    assert result.status == 302
    assert "/login?next=/health" in result.reason
    assert "point the health check at the final path" in result.reason


def test_http_expected_redirect_passes(server: str) -> None:
    """A check that expects the 302 itself (expect_status=302) passes on it."""
    assert run_check(HttpCheck(f"{server}/login-wall", expect_status=302)).ok


def test_http_timeout(server: str) -> None:
    """A server slower than the timeout fails within about the timeout, saying how long it waited."""
    result = run_check(HttpCheck(f"{server}/slow", timeout=0.5))
    assert not result.ok
    assert "timeout after 0.5 s" in result.reason
    assert result.elapsed < 2.5


def test_http_connection_refused() -> None:
    """Nothing listening: the reason says connection refused and where."""
    port = closed_port()
    result = run_check(HttpCheck(f"http://127.0.0.1:{port}/health"))
    assert not result.ok
    assert f"connection refused by 127.0.0.1:{port}" in result.reason
    assert result.status is None


def test_http_headers_are_sent(server: str) -> None:
    """Configured headers reach the application (e.g. a token the health endpoint requires)."""
    assert not run_check(HttpCheck(f"{server}/needs-token")).ok
    assert run_check(HttpCheck(f"{server}/needs-token", headers={"X-Health-Token": "let-me-in"})).ok


def test_http_not_http_is_reported(tmp_path: Path) -> None:
    """A TCP server that does not speak HTTP fails with a clear reason, not an exception."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_garbage() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        result = run_check(HttpCheck(f"http://127.0.0.1:{port}/"))
        thread.join(timeout=10)
    assert not result.ok
    assert "did not answer with valid HTTP" in result.reason


def test_malformed_url_is_a_usage_error() -> None:
    """A check that cannot work (no scheme) is a configuration error, raised as UsageError."""
    with pytest.raises(UsageError):
        run_check(HttpCheck("localhost:8000/health"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server with a fresh self-signed certificate for 127.0.0.1; yields (base URL, cert path)."""
    require_binary("openssl", "apt-get install openssl")
    directory = tmp_path_factory.mktemp("tls")
    certificate, key = directory / "cert.pem", directory / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        ["openssl", *request, "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", certificate
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_verifies_certificates(tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An untrusted certificate fails verification; once trusted (SSL_CERT_FILE) the same check passes."""
    url, certificate = tls_server
    result = run_check(HttpCheck(f"{url}/health"))
    assert not result.ok
    assert "certificate" in result.reason and "failed verification" in result.reason
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    result = run_check(HttpCheck(f"{url}/health", body_contains="ok"))
    assert result.ok, result.reason


def test_tcp_open_and_refused() -> None:
    """A listening port passes; a closed one fails with connection refused."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert run_check(TcpCheck("127.0.0.1", port)).ok
    result = run_check(TcpCheck("127.0.0.1", closed_port()))
    assert not result.ok and "connection refused" in result.reason


def test_command_passes_on_exit_zero(tmp_path: Path) -> None:
    """Exit code 0 passes; cwd and env reach the command."""
    (tmp_path / "marker").write_text("here")
    check = CommandCheck(
        (sys.executable, "-c", "import os, sys; sys.exit(0 if open('marker').read() == os.environ['EXPECT'] else 1)"),
        cwd=tmp_path,
        env={"EXPECT": "here"},
    )
    result = run_check(check)
    assert result.ok, result.reason
    assert result.status == 0


def test_command_failure_shows_exit_code_and_last_lines() -> None:
    """A failing command reports its exit code and its last output lines (stdout and stderr)."""
    script = (
        "import sys\nfor n in range(20): print('noise', n)\nprint('migration 42 pending', file=sys.stderr)\nsys.exit(2)"
    )
    result = run_check(CommandCheck((sys.executable, "-c", script)))
    assert not result.ok
    assert result.status == 2
    assert "exited with code 2" in result.reason
    assert "migration 42 pending" in result.reason
    assert "noise 19" in result.reason and "noise 0" not in result.reason


def test_command_timeout_kills_its_children(tmp_path: Path) -> None:
    """A hanging command fails after its timeout, even when a child it started holds the output open."""
    sh = require_binary("sh", "a POSIX shell")
    started = time.monotonic()
    result = run_check(CommandCheck((sh, "-c", "echo checking; sleep 60; echo never"), timeout=0.5))
    assert not result.ok
    assert "timeout after 0.5 s" in result.reason and "checking" in result.reason
    assert time.monotonic() - started < 10


def test_command_not_found() -> None:
    """A missing command fails the check with its name, not an exception."""
    result = run_check(CommandCheck(("no-such-health-probe",)))
    assert not result.ok and "no-such-health-probe" in result.reason


def test_command_does_not_see_the_repository_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCKSTEP_PASSWORD is withheld from health check commands, like from every other command."""
    monkeypatch.setenv("LOCKSTEP_PASSWORD", "secret")
    script = "import os, sys; sys.exit(1 if 'LOCKSTEP_PASSWORD' in os.environ else 0)"
    assert run_check(CommandCheck((sys.executable, "-c", script))).ok


def test_describe_check() -> None:
    """Checks have short names for messages."""
    assert describe_check(HttpCheck("http://127.0.0.1:1/health")) == "GET http://127.0.0.1:1/health"
    assert describe_check(TcpCheck("127.0.0.1", 5432)) == "TCP 127.0.0.1:5432"
    assert describe_check(CommandCheck(("pg_isready", "-q"))) == "command pg_isready -q"
