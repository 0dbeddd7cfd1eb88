"""Helpers the nginx and HAProxy switches share: listen addresses, processes, durable writes."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from lockstep.errors import LockstepError, UsageError
from lockstep.process import process_alive


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "HOST:PORT" (or "[v6]:PORT", or ":PORT" meaning every address)."""
    host, separator, port_text = listen.rpartition(":")
    if not separator or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"bad listen address {listen!r}", 'write it as "HOST:PORT", e.g. "127.0.0.1:8080"')
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise UsageError(f"bad upstream port {port}", "use a TCP port between 1 and 65535")


def ensure_listen_free(host: str, port: int, server: str) -> None:
    """Fail early, and clearly, when something already listens where the proxy should."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = "another program already listens there" if error.errno == errno.EADDRINUSE else error.strerror
            raise LockstepError(
                f"{server} cannot listen on {host}:{port}: {reason}",
                "stop that program or set another [traffic] listen address",
            ) from error


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return ""


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_gracefully(pid: int, graceful_signal: signal.Signals, drain_timeout: float) -> None:
    """Ask a server to finish its requests and exit; after `drain_timeout`, SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, graceful_signal)
    if wait_for_exit(pid, drain_timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_for_exit(pid, 10.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, 10.0)


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def require_executable(binary: str, server: str, package: str) -> None:
    """Raise when `binary` is not an executable here: said as such, not as a config that failed
    validation, which would send the user looking at a config."""
    if shutil.which(binary) is None:
        raise LockstepError(
            f"{server} is not installed here: no executable {binary!r}",
            f"install it (e.g. apt-get install {package}) or set [traffic] binary to its path",
        )
