"""Run moto's S3 server in a subprocess on a free loopback port, for tests against real HTTP.

    endpoint, stop = start_moto_server()   # endpoint is like http://127.0.0.1:PORT
    try:
        ...
    finally:
        stop()

moto does not check credentials unless asked to (see `start_moto_server(enforce_auth=True)`),
so any AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY pair works against it.
"""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

INSTALL_HINT = "install the test extras: pip install 'moto[s3]>=5' flask flask-cors"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


class MotoUnavailable(RuntimeError):
    """moto's server cannot run here: a module it needs is not installed."""


def moto_missing_reason() -> str | None:
    """Why moto's server cannot run here, or None when it can."""
    missing = [name for name in ("moto", "flask", "flask_cors") if importlib.util.find_spec(name) is None]
    if missing:
        return f"moto server needs {', '.join(missing)}: {INSTALL_HINT}"
    return None


def free_port() -> int:
    """A loopback port nobody listens on right now: the OS picks it, or it comes from
    LOCKSTEP_TEST_PORTS ("26000-26999") when a shared machine gives each run its own range
    (as tests/deploy does)."""
    wanted = os.environ.get("LOCKSTEP_TEST_PORTS")
    candidates = [0]
    if wanted:
        low, high = (int(part) for part in wanted.split("-"))
        candidates = random.sample(range(low, high + 1), high - low + 1)
    for candidate in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise RuntimeError(f"no free port in LOCKSTEP_TEST_PORTS={wanted}")


def _moto_answers(endpoint: str) -> bool:
    """True once moto (not some other server that grabbed the port) answers on `endpoint`."""
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1) as response:
            return bool(response.status == 200 and response.read(1) == b"{")
    except OSError:  # refused while starting, or an HTTP error from another server
        return False


def start_moto_server(*, enforce_auth: bool = False) -> tuple[str, Callable[[], None]]:
    """Start `python -m moto.server` on 127.0.0.1 and wait until it answers HTTP.

    Returns the endpoint URL and a function that stops the server (safe to call twice).
    With `enforce_auth`, moto checks every request's credentials against its (empty) IAM,
    so all of them are refused with InvalidAccessKeyId.
    Raises MotoUnavailable when moto or flask is missing, RuntimeError when it does not start.
    """
    reason = moto_missing_reason()
    if reason:
        raise MotoUnavailable(reason)
    environment = dict(os.environ)
    environment.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
    if enforce_auth:
        environment["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    last_output = ""
    for _attempt in range(3):  # the port can be taken between picking and binding it
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        # The log is read only if the server fails to start; the server keeps its own descriptor.
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
            deadline = time.monotonic() + _START_TIMEOUT
            while time.monotonic() < deadline and process.poll() is None:
                if _moto_answers(endpoint) and process.poll() is None:
                    return endpoint, _stopper(process)
                time.sleep(0.05)
            _stopper(process)()
            log.seek(0)
            last_output = log.read().decode(errors="replace")[-2000:]
    raise RuntimeError(f"moto server did not start; its last output:\n{last_output}")


def _stopper(process: subprocess.Popen[bytes]) -> Callable[[], None]:
    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    return stop
