"""Smoke tests: the checks a new release must pass before it takes traffic.

HTTP checks run against the new slot's port directly (it has no traffic yet), with the status,
body text, response time and required headers the config declares; an https:// URL also has its
certificate checked for validity and days left. Database checks connect; command checks exit 0.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from lockstep.config import ProjectConfig
from lockstep.config.deploy_model import SmokeCheckConfig
from lockstep.databases import adapter_for
from lockstep.errors import LockstepError
from lockstep.pipeline.snapshot import database_password
from lockstep.process import Command, CommandOutcome, run_user_command
from lockstep.wording import counted


@dataclass(frozen=True)
class SmokeResult:
    name: str
    ok: bool
    detail: str


def describe(check: SmokeCheckConfig) -> str:
    if check.http is not None:
        return f"GET {check.http}"
    if check.database is not None:
        return f"database {check.database}"
    return f"command {check.command}"


def run_smoke_check(
    check: SmokeCheckConfig,
    config: ProjectConfig,
    port: int | None,
    release: Path,
    env: dict[str, str],
    run: Callable[[Command, float], CommandOutcome] = run_user_command,
) -> SmokeResult:
    """Run one smoke check against the release listening on `port` (in `release`). A deploy
    passes `run` to record a command check's process group while it runs: killed then, it
    leaves the command to the clean-up."""
    name = describe(check)
    try:
        if check.http is not None:
            return SmokeResult(name, *_http(check, port))
        if check.database is not None:
            return SmokeResult(name, *_database(check.database, config))
        assert check.command is not None
        outcome = run(Command(tuple(Command.parse(check.command).argv), env=env, cwd=str(release)), 300)
        return SmokeResult(name, outcome.ok, "exit 0" if outcome.ok else outcome.describe_failure(5))
    except LockstepError as error:
        return SmokeResult(name, False, str(error))


def _http(check: SmokeCheckConfig, port: int | None) -> tuple[bool, str]:
    assert check.http is not None
    if check.http.startswith(("http://", "https://")):
        url = urlsplit(check.http)
        host, target_port = url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        secure = url.scheme == "https"
    else:
        if port is None:
            return False, "this HTTP smoke check needs a component with a port (set traffic.component)"
        host, target_port, path, secure = "127.0.0.1", port, check.http, False
    started = time.monotonic()
    connection: http.client.HTTPConnection
    if secure:
        context = ssl.create_default_context()
        connection = http.client.HTTPSConnection(host, target_port, timeout=10, context=context)
    else:
        connection = http.client.HTTPConnection(host, target_port, timeout=10)
    try:
        connection.request("GET", path, headers={"User-Agent": "lockstep-smoke-test"})
        # Read the certificate now: once the body is read the server may close the connection.
        certificate_days = _certificate_days(connection) if secure else None
        response = connection.getresponse()
        body = response.read(1024 * 1024).decode("utf-8", "replace")
        elapsed_ms = (time.monotonic() - started) * 1000
    except ssl.SSLCertVerificationError as error:
        return False, f"TLS certificate of {host} is not valid: {error.verify_message}"
    except (OSError, http.client.HTTPException) as error:
        return False, f"request failed: {error}"
    finally:
        connection.close()
    if response.status != check.expect_status:
        location = response.getheader("Location")
        extra = f" (redirect to {location}, not followed)" if location else ""
        return False, f"status {response.status}, expected {check.expect_status}{extra}"
    if check.body_contains is not None and check.body_contains not in body:
        return False, f"the body does not contain {check.body_contains!r} (it starts {body[:80]!r})"
    if check.max_ms is not None and elapsed_ms > check.max_ms:
        return False, f"took {elapsed_ms:.0f} ms, more than the allowed {check.max_ms:.0f} ms"
    for header, expected in check.headers.items():
        actual = response.getheader(header)
        if actual != expected:
            shown = "missing" if actual is None else repr(actual)
            return False, f"header {header} is {shown}, expected {expected!r}"
    if certificate_days is not None and check.tls_min_days is not None and certificate_days < check.tls_min_days:
        return False, f"the TLS certificate expires in {certificate_days} days (minimum {check.tls_min_days})"
    detail = f"{response.status} in {elapsed_ms:.0f} ms"
    if certificate_days is not None:
        detail += f"; certificate valid {certificate_days} more days"
    return True, detail


def _certificate_days(connection: http.client.HTTPConnection) -> int | None:
    sock = connection.sock
    if not isinstance(sock, ssl.SSLSocket):
        return None
    certificate = sock.getpeercert()
    if not certificate or "notAfter" not in certificate:
        return None
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(str(certificate["notAfter"])), UTC)
    return (expires - datetime.now(UTC)).days


def _database(name: str, config: ProjectConfig) -> tuple[bool, str]:
    database = config.databases.get(name)
    if database is None:
        return False, f"no database named {name!r} in lockstep.toml"
    adapter = adapter_for(database.url)
    started = time.monotonic()
    summary = adapter.summarize(database.url, database_password(name, database))
    return True, f"{counted(len(summary.tables), 'table')}, connected in {(time.monotonic() - started) * 1000:.0f} ms"


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0
