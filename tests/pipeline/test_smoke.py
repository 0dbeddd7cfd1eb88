"""Smoke tests against real local servers: status, body, speed, headers, TLS days, database, command."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lockstep.config import ProjectConfig
from lockstep.config.deploy_model import SmokeCheckConfig
from lockstep.pipeline.smoke import run_smoke_check
from tests.conftest import require_binary


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(0.3)
        body = b"notes: 3" if self.path != "/moved" else b""
        self.send_response(301 if self.path == "/moved" else 200)
        if self.path == "/moved":
            self.send_header("Location", "/elsewhere")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(server: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def port() -> Iterator[int]:
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler))


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """HTTPS with a self-signed certificate valid for 10 days."""
    require_binary("openssl", "apt-get install openssl")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "10", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for bound in serve(server):
        yield bound, certificate


CONFIG = ProjectConfig.model_validate({"repository": {"url": "/tmp/unused"}})


def check(port: int | None, **settings: object) -> tuple[bool, str]:
    result = run_smoke_check(SmokeCheckConfig.model_validate(settings), CONFIG, port, Path("."), {})
    return result.ok, result.detail


def test_http_status_body_speed_and_headers(port: int) -> None:
    """Each declared expectation passes when met and fails saying what was wrong."""
    assert check(port, http="/api", body_contains="notes", max_ms=2000)[0]
    assert check(port, http="/api", headers={"Access-Control-Allow-Origin": "*"})[0]
    ok, detail = check(port, http="/api", body_contains="orders")
    assert not ok and "does not contain 'orders'" in detail
    ok, detail = check(port, http="/slow", max_ms=100)
    assert not ok and "more than the allowed 100 ms" in detail
    ok, detail = check(port, http="/api", headers={"Access-Control-Allow-Origin": "https://shop.example"})
    assert not ok and "Access-Control-Allow-Origin" in detail
    ok, detail = check(port, http="/moved")
    assert not ok and "redirect to /elsewhere, not followed" in detail


def test_tls_certificate_validity_and_days_left(tls: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An untrusted certificate fails; a trusted one passes with its days left, or fails below the minimum."""
    port, certificate = tls
    url = f"https://127.0.0.1:{port}/api"
    ok, detail = check(None, http=url)
    assert not ok and "not valid" in detail
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    ok, detail = check(None, http=url, tls_min_days=5)
    assert ok and "certificate valid 9 more days" in detail
    ok, detail = check(None, http=url, tls_min_days=30)
    assert not ok and "expires in 9 days (minimum 30)" in detail


def test_database_and_command_checks(tmp_path: Path) -> None:
    """A database that accepts connections passes; a missing one and a failing command say why."""
    import sqlite3

    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    config = ProjectConfig.model_validate(
        {"repository": {"url": "/tmp/unused"}, "databases": {"main": {"url": f"sqlite:///{database}"}}}
    )
    ok = run_smoke_check(SmokeCheckConfig(database="main"), config, None, tmp_path, {})
    assert ok.ok and "1 table," in ok.detail
    missing = run_smoke_check(SmokeCheckConfig(database="other"), config, None, tmp_path, {})
    assert not missing.ok and "no database named 'other'" in missing.detail
    failing = run_smoke_check(SmokeCheckConfig(command="sh -c 'echo broken >&2; exit 4'"), config, None, tmp_path, {})
    assert not failing.ok and "exited with code 4" in failing.detail and "broken" in failing.detail
