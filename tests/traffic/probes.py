"""Small probes the traffic-switch tests share: free ports, one GET, waiting, process checks."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A free loopback port from this worker's LOCKSTEP_TEST_PORTS block, below the ephemeral
    range: a port the kernel picked there could become an outgoing connection's local port while
    a killed nginx or HAProxy is started again on it (CI saw "another program already listens")."""
    from tests.deploy.conftest import free_ports

    return free_ports(1)[0]


def get(port: int, path: str = "/", timeout: float = 30.0) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def process_gone(pid: int) -> bool:
    """Exited (a zombie counts: a container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def assert_forwarded_headers_are_the_proxys(port: int) -> None:
    """X-Forwarded-Proto and -Host are what the proxy on `port` saw, whatever the client sent;
    the backend's /headers echoes what reached it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "GET",
            "/headers",
            headers={
                "Host": "shop.example",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-For": "203.0.113.7",
            },
        )
        response = connection.getresponse()
        seen = {name.lower(): value for name, value in json.loads(response.read()).items()}
    finally:
        connection.close()
    assert response.status == 200
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.example"
    assert seen["host"] == "shop.example"
    assert seen["x-forwarded-for"].endswith("127.0.0.1")
