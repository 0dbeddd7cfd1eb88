"""An HTTP proxy in front of the moto server that breaks chosen requests, as a flaky network or
an overloaded S3 server would: answers cut off after their headers, or 5xx errors.

    with FaultProxy(moto_endpoint) as proxy:    # proxy.endpoint is like http://127.0.0.1:PORT
        proxy.cut_bodies(2, method="GET", path_contains="/data/")
        ...

Everything else is passed through unchanged. Runs on a thread of the test process, on a port
from LOCKSTEP_TEST_PORTS when that is set.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import threading
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from tests.s3_server import free_port

_ERROR_DOCUMENT = b"<?xml version='1.0'?><Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "server", "date"}


@dataclass
class _Fault:
    kind: str  # "cut" (headers, then half the body, then the connection closes) or "status"
    remaining: int
    method: str
    path_contains: str
    status: int = 503


class FaultProxy:
    """Forwards HTTP/1.1 requests to `upstream`, breaking the ones a fault rule matches."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream_host = parts.hostname or "127.0.0.1"
        self._upstream_port = parts.port or 80
        self._faults: list[_Fault] = []
        self._mutex = threading.Lock()
        self.broken: list[str] = []  # "METHOD PATH" of every request a fault hit
        self.requests: list[str] = []  # "METHOD PATH" of every request seen
        self.endpoint = ""
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    def cut_bodies(self, count: int, method: str = "GET", path_contains: str = "") -> None:
        """The next `count` matching answers stop half-way through their body."""
        with self._mutex:
            self._faults.append(_Fault("cut", count, method, path_contains))

    def fail(self, count: int, method: str, path_contains: str = "", status: int = 503) -> None:
        """The next `count` matching requests get `status` with an S3 error document."""
        with self._mutex:
            self._faults.append(_Fault("status", count, method, path_contains, status))

    def clear(self) -> None:
        with self._mutex:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._mutex:
            self.requests.append(f"{method} {path}")
            for fault in self._faults:
                if fault.remaining > 0 and fault.method == method and fault.path_contains in path:
                    fault.remaining -= 1
                    self.broken.append(f"{method} {path}")
                    return fault
        return None

    def __enter__(self) -> FaultProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None and fault.kind == "status":
                    message = _ERROR_DOCUMENT
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                connection = http.client.HTTPConnection(proxy._upstream_host, proxy._upstream_port, timeout=60)
                try:
                    headers = {name: value for name, value in self.headers.items()}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP_BY_HOP:
                            self.send_header(name, value)
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if fault is not None and fault.kind == "cut":
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(data)
                finally:
                    connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
