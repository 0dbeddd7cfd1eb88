"""The proxy's admin channel: a tiny HTTP API on a unix socket in the state directory.

A unix socket (mode 0600 via the process umask) means only the deploying user can switch traffic;
nothing admin is reachable over TCP. Endpoints: GET /state, POST /switch?port=N, POST /stop,
POST /hold?timeout=S&pid=N[&start_ticks=T] (new requests wait; the hold ends by itself when
process N dies) and POST /release (they go on to the port active then).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from lockstep.traffic.builtin_proxy.http1 import ProtocolError, parse_head, serialize
from lockstep.traffic.builtin_proxy.server import HoldRefused, ProxyServer
from lockstep.traffic.hold import HoldOwner

log = logging.getLogger("lockstep.proxy.admin")


def json_response(status: int, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}.get(status, "Error")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
    return serialize(f"HTTP/1.1 {status} {reason}", headers) + body


class AdminServer:
    def __init__(self, proxy: ProxyServer, socket_path: Path) -> None:
        self.proxy = proxy
        self.socket_path = socket_path
        self._server: asyncio.Server | None = None
        self._stop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, str(self.socket_path))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.socket_path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = parse_head(await reader.readuntil(b"\r\n\r\n"))
            writer.write(self._handle(head.first, head.second))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError):
            pass
        finally:
            writer.close()

    def _handle(self, method: str, target: str) -> bytes:
        parts = urlsplit(target)
        if method == "GET" and parts.path == "/state":
            return json_response(200, self.proxy.state())
        if method == "POST" and parts.path == "/switch":
            values = parse_qs(parts.query).get("port", [])
            if len(values) != 1 or not values[0].isdigit() or not 0 < int(values[0]) < 65536:
                return json_response(400, {"error": "POST /switch needs ?port=N with 0 < N < 65536"})
            self.proxy.switch_to(int(values[0]))
            return json_response(200, self.proxy.state())
        if method == "POST" and parts.path == "/hold":
            return self._hold(parse_qs(parts.query))
        if method == "POST" and parts.path == "/release":
            summary = self.proxy.release_hold()
            return json_response(200, {"released": summary is not None, "hold": summary})
        if method == "POST" and parts.path == "/stop":
            if self._stop_task is None:
                self._stop_task = asyncio.get_running_loop().create_task(self.proxy.shutdown())
            return json_response(202, {"stopping": True})
        return json_response(404, {"error": f"no admin endpoint {method} {parts.path}"})

    def _hold(self, query: dict[str, list[str]]) -> bytes:
        usage = "POST /hold needs ?timeout=S (seconds > 0) and ?pid=N (the owner), optionally &start_ticks=T"
        try:
            timeout = float(query["timeout"][0])
            ticks = query.get("start_ticks")
            owner = HoldOwner.from_document(
                {"pid": int(query["pid"][0]), "start_ticks": int(ticks[0]) if ticks else None}
            )
        except (KeyError, IndexError, ValueError):
            return json_response(400, {"error": usage})
        if not 0 < timeout < 86400:
            return json_response(400, {"error": usage})
        try:
            return json_response(200, {"hold": self.proxy.start_hold(owner, timeout)})
        except HoldRefused as error:
            return json_response(409, {"error": str(error)})
