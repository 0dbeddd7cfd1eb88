"""The proxy itself: accept client connections, forward each request to the active upstream.

The active port is read once per request, at the moment its head arrives, so a switch is one
assignment on the event loop: requests already forwarding finish where they started, the next
request (even on the same client keep-alive connection) goes to the new upstream.

Connections start on the callback fast path (fast.py); the stream code here handles everything
else (large or chunked bodies, upgrades, HTTP/1.0, unusual headers) once a connection needs it.

A hold (`start_hold`, for a data rollback) makes every request that arrives wait before it picks
its upstream; `release_hold` lets them go to whichever port is active then. Requests in flight
when the hold starts finish where they are. Past the hold's deadline a waiting request gets 503
with Retry-After, and a hold whose owner process died ends by itself. The hold is kept on disk
while it lasts (hold_file.py): a proxy restarted mid-hold resumes it before it accepts anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockstep.traffic.builtin_proxy.hold_file import PersistedHold, read_hold_file, remove_hold_file, write_hold_file
from lockstep.traffic.builtin_proxy.http1 import (
    BUFFERED_BODY_LIMIT,
    FORWARDED_HEADERS,
    HEAD_LIMIT,
    Head,
    Headers,
    ProtocolError,
    copy_chunked,
    copy_exactly,
    copy_until_closed,
    forwardable,
    parse_head,
    serialize,
)
from lockstep.traffic.builtin_proxy.upstream_file import write_upstream_file
from lockstep.traffic.hold import RETRY_AFTER_SECONDS, HoldOwner

if TYPE_CHECKING:
    from lockstep.traffic.builtin_proxy.fast import ClientProtocol, UpstreamProtocol

log = logging.getLogger("lockstep.proxy")

POOL_LIMIT = 512  # idle upstream connections kept per upstream
CONNECT_TIMEOUT = 10.0
NO_BODY_STATUSES = frozenset({204, 304})
REASONS = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
HOLD_CHECK_INTERVAL = 0.2  # how often a hold's owner and deadline are checked

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Upstream:
    """Counters and idle keep-alive connections for one upstream port."""

    port: int
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    idle: list[Connection] = field(default_factory=list)  # stream connections (the careful path)
    fast_idle: list[UpstreamProtocol] = field(default_factory=list)  # protocol connections (the fast path)
    server: ProxyServer | None = None

    def as_json(self) -> dict[str, int]:
        return {"port": self.port, "requests": self.requests, "errors": self.errors, "in_flight": self.in_flight}


@dataclass(eq=False)
class ClientConnection:
    writer: asyncio.StreamWriter
    idle: bool = True

    def close(self) -> None:
        self.writer.close()


@dataclass(eq=False)
class Hold:
    """New requests wait until `released` is set, or until `deadline` (event loop time) passes."""

    owner: HoldOwner
    timeout: float
    started: float
    released: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0  # requests waiting now
    held: int = 0  # requests that waited and then went on to an upstream
    refused: int = 0  # requests answered 503 because the deadline passed
    expired: bool = False  # the deadline passed and was logged
    resumed: bool = False  # taken over from the hold file by a restarted proxy
    stopping: bool = False  # the proxy stops: waiting requests get 503, not the upstream

    @property
    def deadline(self) -> float:
        return self.started + self.timeout

    def as_json(self, now: float) -> dict[str, object]:
        return {
            "owner": self.owner.to_document(),
            "timeout": self.timeout,
            "seconds": round(now - self.started, 3),
            "waiting": self.waiting,
            "held": self.held,
            "refused": self.refused,
            "expired": self.expired or now >= self.deadline,
            "resumed": self.resumed,
        }


class HoldRefused(Exception):
    """A hold cannot start: another live process holds the traffic."""


class UpstreamFailed(Exception):
    """The upstream could not produce a response head; `status` is what the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, keep_alive: bool) -> bytes:
    body = f"lockstep proxy: {message}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if not keep_alive:
        headers.append(("Connection", "close"))
    return serialize(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", headers) + body


def hold_refusal() -> bytes:
    """What a request gets when a hold outlasts its deadline: come back later, not a hang."""
    body = b"lockstep proxy: the site is paused for maintenance (a data rollback); try again shortly\n"
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Retry-After", str(RETRY_AFTER_SECONDS)),
        ("Connection", "close"),
    ]
    return serialize("HTTP/1.1 503 Service Unavailable", headers) + body


class ProxyServer:
    """One listening socket, one active upstream, counters per upstream."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream_port: int,
        state_directory: Path,
        drain_timeout: float,
        request_timeout: float,
        idle_timeout: float = 75.0,
    ) -> None:
        self.host = host
        self.port = port
        self.state_directory = state_directory
        self.drain_timeout = drain_timeout
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.active_port = upstream_port
        self.upstreams: dict[int, Upstream] = {upstream_port: Upstream(upstream_port, server=self)}
        self.connections: set[ClientConnection | ClientProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.stopped = asyncio.Event()
        self.hold: Hold | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        from lockstep.traffic.builtin_proxy.fast import ClientProtocol

        self._resume_hold()  # before the first connection: nothing may slip past a hold
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ClientProtocol(self), self.host, self.port, reuse_address=True, backlog=1024
        )
        write_upstream_file(self.state_directory, self.active_port)
        log.info("listening on %s:%d, forwarding to port %d", self.host, self.port, self.active_port)

    def listen_address(self) -> str:
        """HOST:PORT as configured: an IPv6 host in brackets ("[::1]:8080")."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def switch_to(self, port: int) -> None:
        """Persist first, then switch: a crash in between resumes on the new upstream, never an older one."""
        write_upstream_file(self.state_directory, port)
        previous = self.active_port
        self.active_port = port
        self.upstreams.setdefault(port, Upstream(port, server=self))
        for upstream in self.upstreams.values():
            if upstream.port != port:
                self._close_idle(upstream)
        log.info("switched from port %d to port %d", previous, port)

    def state(self) -> dict[str, object]:
        now = asyncio.get_running_loop().time()
        return {
            "running": True,
            "listen": self.listen_address(),
            "active_port": self.active_port,
            "upstreams": [upstream.as_json() for upstream in self.upstreams.values()],
            "pid": os.getpid(),
            "hold": None if self.hold is None else self.hold.as_json(now),
        }

    # -- holds -------------------------------------------------------------------------------------

    def start_hold(self, owner: HoldOwner, timeout: float) -> dict[str, object]:
        """Make new requests wait. The same owner asking again keeps its hold (a retried call);
        another owner is refused while the holder lives, since two rollbacks cannot share one."""
        loop = asyncio.get_running_loop()
        current = self.hold
        if current is not None:
            if current.owner == owner:
                return current.as_json(loop.time())
            if current.owner.alive():
                raise HoldRefused(f"the traffic is already held by pid {current.owner.pid}")
            self.release_hold(f"its owner pid {current.owner.pid} is gone")
        # On disk before it takes effect: a proxy restarted from here on holds too.
        write_hold_file(self.state_directory, PersistedHold(owner, timeout, time.time()))
        hold = Hold(owner, timeout, loop.time())
        self.hold = hold
        self.spawn(self._watch_hold(hold))
        log.info("holding new requests for pid %d (deadline %g s)", owner.pid, timeout)
        return hold.as_json(loop.time())

    def release_hold(self, reason: str = "released") -> dict[str, object] | None:
        """Let the waiting requests go, each to the port active now; the hold's summary, or None."""
        hold, self.hold = self.hold, None
        if hold is None:
            return None
        remove_hold_file(self.state_directory)
        hold.released.set()
        summary = hold.as_json(asyncio.get_running_loop().time())
        log.info(
            "hold of pid %d ended after %.3f s (%s): %d requests held, %d refused",
            hold.owner.pid,
            summary["seconds"],
            reason,
            hold.held + hold.waiting,
            hold.refused,
        )
        return summary

    async def wait_for_hold(self) -> bool:
        """Wait while traffic is held; True to go on to the upstream, False to answer 503."""
        hold = self.hold
        if hold is None:
            return True
        hold.waiting += 1
        try:
            remaining = hold.deadline - asyncio.get_running_loop().time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await hold.released.wait()
        finally:
            hold.waiting -= 1
        if hold.released.is_set() and not hold.stopping:
            hold.held += 1
            return True
        hold.refused += 1
        return False

    def _resume_hold(self) -> None:
        """Take over the hold a previous proxy process left on disk, under the same rules: it
        ends when released or when its owner is gone, and its deadline still counts from when
        it began (past it, requests get 503 + Retry-After at once)."""
        persisted = read_hold_file(self.state_directory)
        if persisted is None:
            remove_hold_file(self.state_directory)  # an unreadable leftover describes no hold
            return
        if not persisted.owner.alive():
            remove_hold_file(self.state_directory)
            log.info("not resuming the hold of pid %d: its owner is gone", persisted.owner.pid)
            return
        loop = asyncio.get_running_loop()
        elapsed = max(0.0, time.time() - persisted.started_at)
        hold = Hold(persisted.owner, persisted.timeout, loop.time() - elapsed, resumed=True)
        self.hold = hold
        self.spawn(self._watch_hold(hold))
        log.info(
            "resumed the hold of pid %d after a restart (%.3f s held so far, deadline %g s)",
            persisted.owner.pid,
            elapsed,
            persisted.timeout,
        )

    def _drop_hold_for_shutdown(self) -> None:
        """A stopping proxy answers its waiting requests 503 + Retry-After: letting them through
        could reach a release on data being restored. The hold stays on disk, so a proxy started
        again while its owner still runs resumes it."""
        hold, self.hold = self.hold, None
        if hold is None:
            return
        hold.stopping = True
        hold.released.set()
        log.info("stopping while holding for pid %d: %d waiting requests get 503", hold.owner.pid, hold.waiting)

    async def _watch_hold(self, hold: Hold) -> None:
        """End the hold when its owner dies; note (once) when its deadline passes."""
        loop = asyncio.get_running_loop()
        while self.hold is hold:
            if not hold.owner.alive():
                self.release_hold(f"its owner pid {hold.owner.pid} is gone")
                return
            if not hold.expired and loop.time() >= hold.deadline:
                hold.expired = True
                log.warning(
                    "hold of pid %d passed its %g s deadline: requests get 503 until it is released",
                    hold.owner.pid,
                    hold.timeout,
                )
            await asyncio.sleep(HOLD_CHECK_INTERVAL)

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the drain timeout), then close all."""
        if self.stopping:
            return
        self.stopping = True
        self._drop_hold_for_shutdown()
        log.info("stopping: %d client connections open", len(self.connections))
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.idle:
                connection.close()
        deadline = asyncio.get_running_loop().time() + self.drain_timeout
        while (self.connections or self.tasks) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.close()
        for upstream in self.upstreams.values():
            self._close_idle(upstream)
        log.info("stopped")
        self.stopped.set()

    @staticmethod
    def _close_idle(upstream: Upstream) -> None:
        for _, writer in upstream.idle:
            writer.close()
        upstream.idle.clear()
        for connection in upstream.fast_idle:
            connection.close()
        upstream.fast_idle.clear()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a connection's coroutine, holding a reference so it is not collected mid-way."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def relay_then_serve(
        self,
        method: str,
        upstream_streams: Connection,
        client_streams: Connection,
        upstream: Upstream,
    ) -> None:
        from lockstep.traffic.builtin_proxy.fast import relay_then_serve_impl

        await relay_then_serve_impl(self, method, upstream_streams, client_streams, upstream)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client_address = peer[0] if isinstance(peer, tuple) else "unknown"
        connection = ClientConnection(writer)
        self.connections.add(connection)
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping:
                connection.idle = True
                idle_timer = loop.call_later(self.idle_timeout, writer.close)
                try:
                    raw_head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    writer.write(error_response(431, "the request head is larger than 64 KiB", keep_alive=False))
                    break
                finally:
                    idle_timer.cancel()
                connection.idle = False
                if not await self._forward(raw_head, reader, writer, client_address):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ProtocolError, TimeoutError):
            pass
        except Exception:
            log.exception("unexpected error serving %s", client_address)
        finally:
            self.connections.discard(connection)
            writer.close()

    async def _forward(
        self, raw_head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_address: str
    ) -> bool:
        """Forward one request and its response; True when the client connection may carry another."""
        try:
            request = parse_head(raw_head)
        except ProtocolError as error:
            writer.write(error_response(400, str(error), keep_alive=False))
            return False
        if not request.third.startswith("HTTP/1."):
            writer.write(error_response(400, "only HTTP/1.x is supported", keep_alive=False))
            return False
        if self.hold is not None and not await self.wait_for_hold():
            writer.write(hold_refusal())
            return False
        port = self.active_port  # the one read that decides where this request goes
        upstream = self.upstreams[port]
        upstream.requests += 1
        upstream.in_flight += 1
        try:
            return await self._exchange(request, reader, writer, client_address, upstream)
        except UpstreamFailed as failure:
            upstream.errors += 1
            log.warning("%s %s -> port %d: %d %s", request.first, request.second[:200], port, failure.status, failure)
            with contextlib.suppress(ConnectionError):
                writer.write(error_response(failure.status, failure.message, keep_alive=False))
            return False
        finally:
            upstream.in_flight -= 1

    def _upstream_request(self, request: Head, client_address: str, upgrade: str | None) -> bytes:
        tokens = request.connection_tokens
        headers = forwardable(request.headers, tokens, FORWARDED_HEADERS | {"expect"})
        if request.chunked:
            headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
            headers.append(("Transfer-Encoding", "chunked"))
        previous_for = request.header("x-forwarded-for")
        headers.append(("X-Forwarded-For", f"{previous_for}, {client_address}" if previous_for else client_address))
        headers.append(("X-Forwarded-Proto", "http"))
        host = request.header("host")
        if host is not None:
            headers.append(("X-Forwarded-Host", host))
        if upgrade is not None:
            headers.append(("Connection", "Upgrade"))
            headers.append(("Upgrade", upgrade))
        return serialize(f"{request.first} {request.second} HTTP/1.1", headers)

    async def _acquire(self, upstream: Upstream) -> tuple[Connection, bool]:
        """An idle pooled connection (reused=True) or a new one; refusal becomes a 502."""
        while upstream.idle:
            pooled = upstream.idle.pop()
            if not pooled[0].at_eof() and not pooled[1].is_closing():
                return pooled, True
            pooled[1].close()
        try:
            async with asyncio.timeout(min(CONNECT_TIMEOUT, self.request_timeout)):
                opened = await asyncio.open_connection("127.0.0.1", upstream.port, limit=HEAD_LIMIT)
        except TimeoutError as error:
            raise UpstreamFailed(504, f"connecting to the upstream on port {upstream.port} timed out") from error
        except OSError as error:
            raise UpstreamFailed(
                502, f"the upstream on port {upstream.port} refused the connection ({error.strerror or error})"
            ) from error
        return opened, False

    def _release(self, upstream: Upstream, connection: Connection) -> None:
        if upstream.port == self.active_port and not self.stopping and len(upstream.idle) < POOL_LIMIT:
            upstream.idle.append(connection)
        else:
            connection[1].close()

    async def _exchange(
        self,
        request: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_address: str,
        upstream: Upstream,
    ) -> bool:
        http10 = request.third == "HTTP/1.0"
        tokens = request.connection_tokens
        client_keep_alive = ("keep-alive" in tokens) if http10 else ("close" not in tokens)
        upgrade = request.header("upgrade") if "upgrade" in tokens else None
        expect = request.header("expect")
        if expect is not None and expect.lower() == "100-continue" and (request.chunked or request.content_length):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = self._upstream_request(request, client_address, upgrade)
        body = b""
        streamed_body = request.chunked or (request.content_length or 0) > BUFFERED_BODY_LIMIT
        if not streamed_body and request.content_length:
            async with asyncio.timeout(self.request_timeout):
                body = await reader.readexactly(request.content_length)

        body_task: asyncio.Task[None] | None = None
        for attempt in range(2):
            connection, reused = await self._acquire(upstream)
            upstream_reader, upstream_writer = connection
            try:
                upstream_writer.write(head + body if body else head)
                if streamed_body:
                    # Full duplex: an upstream may answer (or stream its answer) before the body ends.
                    body_task = asyncio.ensure_future(self._send_streamed_body(request, reader, upstream_writer))
                    response = await self._response_head_while_sending(upstream_reader, body_task)
                else:
                    async with asyncio.timeout(self.request_timeout):
                        response = await self._response_head(upstream_reader)
                break
            except TimeoutError as error:
                upstream_writer.close()
                raise UpstreamFailed(
                    504, f"the upstream on port {upstream.port} did not answer within {self.request_timeout:g} s"
                ) from error
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError) as error:
                upstream_writer.close()
                if isinstance(error, ClientGone):
                    raise
                if reused and not streamed_body and attempt == 0:
                    continue  # the upstream closed an idle pooled connection just as we used it
                raise UpstreamFailed(
                    502, f"the upstream on port {upstream.port} closed the connection without a valid response"
                ) from error
            finally:
                if body_task is not None and body_task.done() and not body_task.cancelled():
                    body_task.exception()  # retrieved here; raised above when it mattered
        else:  # pragma: no cover - the loop always breaks or raises
            raise UpstreamFailed(502, "no response")

        return await self._relay_response(
            response, request.first, http10, client_keep_alive, upgrade, body_task, reader, writer, connection, upstream
        )

    async def _relay_response(
        self,
        response: Head,
        method: str,
        http10: bool,
        client_keep_alive: bool,
        upgrade: str | None,
        body_task: asyncio.Task[None] | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: Connection,
        upstream: Upstream,
    ) -> bool:
        """Send the response to the client, reframed where needed; True when the client may send another."""
        upstream_reader, upstream_writer = connection
        status = int(response.second) if response.second.isdigit() else 0
        if status == 101:
            if upgrade is None:
                upstream_writer.close()
                raise UpstreamFailed(502, "the upstream switched protocols without being asked")
            await self._tunnel(response, reader, writer, connection)
            return False
        if status >= 500 or status < 100:
            upstream.errors += 1

        response_tokens = response.connection_tokens
        upstream_keep_alive = "close" not in response_tokens and response.first == "HTTP/1.1"
        headers = forwardable(response.headers, response_tokens, frozenset())
        no_body = method == "HEAD" or status in NO_BODY_STATUSES
        if no_body:
            mode = "none"
        elif response.chunked:
            mode = "chunked"
        else:
            mode = "length" if response.content_length is not None else "close"
        if mode == "close":
            upstream_keep_alive = False
            client_keep_alive = False
        elif mode == "chunked":
            if http10:
                client_keep_alive = False
            else:
                headers.append(("Transfer-Encoding", "chunked"))
        if self.stopping:
            client_keep_alive = False
        if body_task is not None and not body_task.done():
            # Answered before the whole body arrived: neither connection is at a message boundary for sure.
            client_keep_alive = False
            upstream_keep_alive = False
        if not client_keep_alive:
            headers.append(("Connection", "close"))
        elif http10:
            headers.append(("Connection", "keep-alive"))
        response_bytes = serialize(f"HTTP/1.1 {response.second} {response.third}", headers)

        try:
            if mode == "length" and (response.content_length or 0) <= BUFFERED_BODY_LIMIT:
                async with asyncio.timeout(self.request_timeout):
                    response_body = await upstream_reader.readexactly(response.content_length or 0)
                writer.write(response_bytes + response_body)
            else:
                writer.write(response_bytes)
                if mode == "length":
                    await copy_exactly(upstream_reader, writer, response.content_length or 0, self.request_timeout)
                elif mode == "chunked":
                    await copy_chunked(upstream_reader, writer, not http10, self.request_timeout)
                elif mode == "close":
                    await copy_until_closed(upstream_reader, writer, self.request_timeout)
        except BaseException:
            upstream_writer.close()
            if body_task is not None:
                body_task.cancel()
            raise
        if body_task is not None and not body_task.done():
            await asyncio.wait([body_task], timeout=1.0)
            if not body_task.done():
                body_task.cancel()
                upstream_keep_alive = False
            elif body_task.exception() is not None:
                upstream_keep_alive = False
        if upstream_keep_alive:
            self._release(upstream, connection)
        else:
            upstream_writer.close()
        if writer.transport.get_write_buffer_size() > 0:
            await writer.drain()
        return client_keep_alive

    async def _response_head(self, upstream_reader: asyncio.StreamReader) -> Head:
        response = parse_head(await upstream_reader.readuntil(b"\r\n\r\n"))
        while response.second.startswith("1") and response.second != "101":
            response = parse_head(await upstream_reader.readuntil(b"\r\n\r\n"))  # drop interim responses
        return response

    async def _response_head_while_sending(
        self, upstream_reader: asyncio.StreamReader, body_task: asyncio.Task[None]
    ) -> Head:
        """The response head, with the request timeout counted from the end of the body, as nginx does."""
        head_task = asyncio.ensure_future(self._response_head(upstream_reader))
        try:
            await asyncio.wait([head_task, body_task], return_when=asyncio.FIRST_COMPLETED)
            if not head_task.done():
                body_task.result()  # the body failed: raise why
                async with asyncio.timeout(self.request_timeout):
                    return await head_task
            return head_task.result()
        finally:
            if not head_task.done():
                head_task.cancel()

    async def _send_streamed_body(
        self, request: Head, reader: asyncio.StreamReader, upstream_writer: asyncio.StreamWriter
    ) -> None:
        """Copy a large or chunked request body; a client failure is marked so it is not blamed on the upstream."""
        try:
            if request.chunked:
                await copy_chunked(reader, upstream_writer, True, self.request_timeout)
            else:
                await copy_exactly(reader, upstream_writer, request.content_length or 0, self.request_timeout)
        except (ConnectionError, asyncio.IncompleteReadError, ProtocolError) as error:
            if upstream_writer.is_closing():
                raise
            raise ClientGone() from error
        except TimeoutError as error:
            if upstream_writer.transport.get_write_buffer_size() > 0:
                raise  # the upstream stopped reading: a 504 is its fault
            raise ClientGone() from error  # the client stopped sending

    async def _tunnel(
        self, response: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: Connection
    ) -> None:
        """After 101 Switching Protocols, copy bytes both ways until either side closes."""
        upstream_reader, upstream_writer = connection
        headers: Headers = forwardable(response.headers, response.connection_tokens, frozenset())
        headers += [("Connection", "Upgrade"), ("Upgrade", response.header("upgrade") or "websocket")]
        writer.write(serialize(f"HTTP/1.1 101 {response.third}", headers))
        directions = [
            asyncio.ensure_future(copy_until_closed(reader, upstream_writer)),
            asyncio.ensure_future(copy_until_closed(upstream_reader, writer)),
        ]
        try:
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for direction in directions:
                direction.cancel()
            upstream_writer.close()
            writer.close()


class ClientGone(ConnectionError):
    """The client went away while sending its body; not the upstream's fault."""
