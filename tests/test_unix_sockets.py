"""Unix sockets at paths longer than sockaddr_un holds, and the short stand-in locations."""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.unix_sockets import (
    SOCKET_PATH_LIMIT,
    UnixHTTPConnection,
    fits_in_socket_address,
    short_socket_location,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello over a long path"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = super().get_request()
        return request, ("unix", 0)  # BaseHTTPRequestHandler wants a (host, port) address


@pytest.fixture
def deep_directory(tmp_path: Path) -> Path:
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def server_at_long_path(deep_directory: Path) -> Iterator[Path]:
    """An HTTP server bound (through a relative path) where the absolute path is too long."""
    path = deep_directory / "admin.sock"
    assert not fits_in_socket_address(path)
    previous = Path.cwd()
    os.chdir(deep_directory)
    try:
        server = _UnixHTTPServer("admin.sock", _Handler)
    finally:
        os.chdir(previous)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


def test_http_over_a_socket_path_longer_than_sockaddr_un(server_at_long_path: Path) -> None:
    assert len(str(server_at_long_path)) > SOCKET_PATH_LIMIT
    connection = UnixHTTPConnection(server_at_long_path, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b"hello over a long path"
    finally:
        connection.close()


def test_short_location_is_stable_short_and_distinct(deep_directory: Path, tmp_path: Path) -> None:
    first = short_socket_location(deep_directory, "agent")
    assert first == short_socket_location(deep_directory, "agent")
    assert first != short_socket_location(tmp_path, "agent")
    assert first != short_socket_location(deep_directory, "haproxy")
    assert fits_in_socket_address(first.with_suffix(".sock"), margin=7)


def test_margin_counts_against_the_limit(tmp_path: Path) -> None:
    exactly = Path("/" + "x" * (SOCKET_PATH_LIMIT - 1))
    assert fits_in_socket_address(exactly)
    assert not fits_in_socket_address(exactly, margin=1)
