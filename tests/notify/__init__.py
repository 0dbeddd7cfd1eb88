"""Real servers on loopback for the notification tests: an HTTP receiver and an SMTP server with STARTTLS.

They live here (not in a conftest) so each test module's fixtures can start exactly what it needs.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.notify.config import NotificationsConfig
from lockstep.notify.dispatcher import Notifier
from lockstep.notify.events import Event


def free_port() -> int:
    """A free loopback port from this worker's LOCKSTEP_TEST_PORTS block, never the kernel's
    ephemeral range, where an outgoing connection could take it before the server binds it."""
    from tests.deploy.conftest import free_ports

    return free_ports(1)[0]


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    """A stdlib HTTP server in a thread that records every request and answers with `statuses` in turn."""

    statuses: list[int] = field(default_factory=list)  # consumed one per request; then 200
    delay_seconds: float = 0.0
    location: str | None = None  # sent with 3xx statuses
    trickle_seconds: float = 0.0  # answer 200 one byte every 0.2 s for this long (a tarpit)
    requests: list[ReceivedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with recorder._lock:
                    recorder.requests.append(
                        ReceivedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = recorder.statuses.pop(0) if recorder.statuses else 200
                if recorder.delay_seconds:
                    time.sleep(recorder.delay_seconds)
                try:
                    if recorder.trickle_seconds:
                        self._trickle(recorder.trickle_seconds)
                        return
                    self.send_response(status)
                    if recorder.location is not None and 300 <= status < 400:
                        self.send_header("Location", recorder.location)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout tests)

            def _trickle(self, seconds: float) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    self.wfile.write(b".")
                    self.wfile.flush()
                    time.sleep(0.2)

            do_GET = _handle
            do_POST = _handle
            do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[ReceivedRequest]:
        """The requests once at least `count` have arrived; fails the test when they do not."""
        assert wait_until(lambda: len(self.received()) >= count, timeout), (
            f"expected {count} requests, got {len(self.received())}"
        )
        return self.received()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key, written as PEM files; returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / "smtp-cert.pem"
    key_path = directory / "smtp-key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path


def server_tls_context(certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    return context


def sample_event(kind: str = "deploy.failed", **details: Any) -> Event:
    """An event with fixed facts, for checking what channels deliver."""
    return Event(
        kind=kind,
        environment="production",
        summary=f"{kind} for shop at 3f2c1a9",
        details={"commit": "3f2c1a9", "duration_seconds": 12.5, **details},
        at=datetime.datetime(2026, 11, 22, 6, 0, 0, tzinfo=datetime.UTC),
        deploy_id="d-20261122-0600",
    )


class Warnings:
    """A `warn` callable that collects lines, with a wait for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def wait_for(self, count: int = 1, timeout: float = 60.0) -> list[str]:
        assert wait_until(lambda: len(self.lines) >= count, timeout), f"expected {count} warnings, got {self.lines}"
        with self._lock:
            return list(self.lines)


def make_notifier(
    directory: Path,
    channels: list[dict[str, Any]],
    environ: dict[str, str],
    warnings: Warnings,
    project: str | None = None,
    environment: str = "production",
    **settings: Any,
) -> Notifier:
    """A Notifier for `channels` with short retry delays, warning into `warnings`."""
    config = NotificationsConfig.model_validate(
        {"channels": channels, "timeout_seconds": 5, "retry_delay_seconds": 0.05, **settings}
    )
    return Notifier(config, directory, environment, warn=warnings, environ=environ, project=project)
