"""One health check, run once: is the new release answering the way it should?

Every failure says why in words a person can act on (expected vs got, which address refused,
how long it waited, what the command printed), because the reason ends up in the deploy's
output when the gate rolls a release back. Redirects are not followed: a health check that
lands on a login page after a 302 would pass while the application is broken.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lockstep.errors import UsageError
from lockstep.process import WITHHELD_VARIABLES

_BODY_LIMIT = 1024 * 1024  # read at most this much of a response body
_SHOWN_BODY = 120  # characters of a body quoted in a failure reason
_SHOWN_LINES = 5  # lines of a command's output quoted in a failure reason


@dataclass(frozen=True)
class HttpCheck:
    url: str  # http:// or https:// (certificates are verified)
    expect_status: int = 200
    body_contains: str | None = None
    timeout: float = 2.0
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TcpCheck:
    host: str
    port: int
    timeout: float = 2.0


@dataclass(frozen=True)
class CommandCheck:
    argv: tuple[str, ...]  # passes when it exits with 0
    timeout: float = 10.0
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # added to lockstep's (minus WITHHELD_VARIABLES)


HealthCheck = HttpCheck | TcpCheck | CommandCheck


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str  # why it failed (or what passed)
    elapsed: float  # seconds
    status: int | None = None  # the HTTP status, or a command's exit code; None when there was none


def describe_check(check: HealthCheck) -> str:
    """A short name for the check, for messages: "GET http://127.0.0.1:8001/health"."""
    if isinstance(check, HttpCheck):
        return f"GET {check.url}"
    if isinstance(check, TcpCheck):
        return f"TCP {check.host}:{check.port}"
    return "command " + " ".join(check.argv)


def run_check(check: HealthCheck) -> CheckResult:
    """Run `check` once; never raises for a failing application, only for a malformed check."""
    started = time.monotonic()
    if isinstance(check, HttpCheck):
        ok, reason, status = _run_http(check)
    elif isinstance(check, TcpCheck):
        ok, reason, status = _run_tcp(check)
    else:
        ok, reason, status = _run_command(check)
    return CheckResult(ok, reason, time.monotonic() - started, status)


def _short(text: str, limit: int = _SHOWN_BODY) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _connection_failure(error: OSError, where: str, timeout: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {where}: nothing listens there (is the process up, on that port?)"
    if isinstance(error, TimeoutError):
        return f"timeout after {timeout:g} s waiting for {where}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host of {where}: {error.strerror}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate of {where} failed verification: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with {where} failed: {error.reason or error}"
    if isinstance(error, ConnectionResetError):
        return f"connection reset by {where}"
    return f"cannot connect to {where}: {error.strerror or error}"


def _run_http(check: HttpCheck) -> tuple[bool, str, int | None]:
    parts = urlsplit(check.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"health check URL {check.url!r} is not an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{parts.hostname}:{port}"
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=check.timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=check.timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + check.timeout
    try:
        connection.request("GET", target, headers={"User-Agent": "lockstep-health-check", **check.headers})
        response = connection.getresponse()
        status = response.status
        if 300 <= status < 400 and status != check.expect_status:
            location = response.getheader("Location") or "(no Location header)"
            return (
                False,
                f"{check.url} redirected with {status} to {location}; redirects are not followed: "
                "point the health check at the final path",
                status,
            )
        if status != check.expect_status or check.body_contains is not None:
            body = _read_body(response, connection, deadline)
            if body is None:
                return False, f"timeout after {check.timeout:g} s reading the response body of {check.url}", status
            text = body.decode("utf-8", "replace")
            if status != check.expect_status:
                return (
                    False,
                    f"{check.url} answered {status} {response.reason}, expected {check.expect_status}"
                    + (f"; body starts {_short(text)}" if text.strip() else ""),
                    status,
                )
            if check.body_contains is not None and check.body_contains not in text:
                return (
                    False,
                    f"{check.url} answered {status} but the body does not contain {check.body_contains!r}; "
                    f"it starts {_short(text)}",
                    status,
                )
        return True, f"{check.url} answered {status}", status
    except http.client.HTTPException as error:
        return False, f"{where} did not answer with valid HTTP ({type(error).__name__}: {error})", None
    except OSError as error:
        return False, _connection_failure(error, where, check.timeout), None
    finally:
        connection.close()


def _read_body(
    response: http.client.HTTPResponse, connection: http.client.HTTPConnection, deadline: float
) -> bytes | None:
    """Up to _BODY_LIMIT bytes, within the check's deadline overall (a server dripping bytes
    slowly cannot stretch a 2 s check); None when the deadline passes."""
    chunks: list[bytes] = []
    size = 0
    while size < _BODY_LIMIT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if connection.sock is not None:
            connection.sock.settimeout(remaining)
        try:
            chunk = response.read1(min(65536, _BODY_LIMIT - size))
        except TimeoutError:
            return None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _run_tcp(check: TcpCheck) -> tuple[bool, str, int | None]:
    where = f"{check.host}:{check.port}"
    try:
        with socket.create_connection((check.host, check.port), timeout=check.timeout):
            return True, f"{where} accepts connections", None
    except OSError as error:
        return False, _connection_failure(error, where, check.timeout), None


def _run_command(check: CommandCheck) -> tuple[bool, str, int | None]:
    if not check.argv:
        raise UsageError("the health check command is empty")
    inherited = {name: value for name, value in os.environ.items() if name not in WITHHELD_VARIABLES}
    name = check.argv[0]
    try:
        # Its own session, so a timeout kills whatever it started too (a shell's children
        # would otherwise hold the output pipe open and keep us waiting).
        child = subprocess.Popen(
            list(check.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**inherited, **check.env},
            cwd=check.cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        return False, f"health check command not found: {name} (install it or use its full path)", None
    except PermissionError:
        return False, f"health check command is not executable: {name}", None
    try:
        output, _ = child.communicate(timeout=check.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        return False, f"timeout after {check.timeout:g} s: {name} did not finish" + _last_lines(output), None
    if child.returncode == 0:
        return True, f"{name} exited with code 0", 0
    how = (
        f"was killed by signal {-child.returncode}" if child.returncode < 0 else f"exited with code {child.returncode}"
    )
    return False, f"{name} {how}" + _last_lines(output), child.returncode


def _last_lines(output: bytes) -> str:
    lines = output.decode("utf-8", "replace").rstrip().splitlines()[-_SHOWN_LINES:]
    return "; last output: " + " / ".join(line.strip() for line in lines) if lines else "; no output"
