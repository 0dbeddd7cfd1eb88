"""A small real HTTP backend for traffic-switch tests: one process per slot, named so a test can
tell which slot answered.

Run as `python -m tests.traffic.backend --port N --name NAME` from the repository root
(`--port 0` picks a free port; the first stdout line is `listening on PORT` either way).
SIGTERM stops accepting and lets in-flight requests finish, like a well-behaved application.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from aiohttp import WSMsgType, web

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def build_application(name: str) -> web.Application:
    body = name.encode()

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    async def echo(request: web.Request) -> web.StreamResponse:
        # Streams the body back as it arrives, so a large POST never sits in memory here either.
        response = web.StreamResponse(status=200)
        response.content_type = request.content_type or "application/octet-stream"
        if request.content_length is not None:
            response.content_length = request.content_length
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(256 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def count(request: web.Request) -> web.Response:
        """Reads a large body and answers only with its size (for streaming-upload tests)."""
        total = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            total += len(chunk)
        return web.Response(text=str(total))

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.query.get("ms", "1000")) / 1000)
        return web.Response(body=body, content_type="text/plain")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index_number in range(int(request.query.get("chunks", "5"))):
            await response.write(f"{name} chunk {index_number}\n".encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def many_bytes(request: web.Request) -> web.StreamResponse:
        """Streams `n` bytes of a repeating pattern with a Content-Length (for download tests)."""
        total = int(request.query.get("n", "1048576"))
        response = web.StreamResponse(status=200)
        response.content_type = "application/octet-stream"
        response.content_length = total
        await response.prepare(request)
        piece = bytes(range(256)) * 1024
        remaining = total
        while remaining > 0:
            await response.write(piece[: min(len(piece), remaining)])
            remaining -= min(len(piece), remaining)
        await response.write_eof()
        return response

    async def headers(request: web.Request) -> web.Response:
        """Echoes the request headers, so tests can see what the proxy forwarded."""
        return web.json_response({key: value for key, value in request.headers.items()})

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text=name)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        return socket

    application = web.Application(client_max_size=1024**3)
    application.router.add_get("/", index)
    application.router.add_post("/echo", echo)
    application.router.add_post("/count", count)
    application.router.add_get("/slow", slow)
    application.router.add_get("/stream", stream)
    application.router.add_get("/bytes", many_bytes)
    application.router.add_get("/headers", headers)
    application.router.add_get("/status/{code}", status)
    application.router.add_get("/ws", websocket)
    return application


async def serve(port: int, name: str) -> None:
    runner = web.AppRunner(build_application(name), access_log=None, shutdown_timeout=60.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None and isinstance(server, asyncio.base_events.Server)
    actual_port = server.sockets[0].getsockname()[1]
    print(f"listening on {actual_port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    await stopping.wait()
    await runner.cleanup()  # stops listening, then waits for in-flight handlers


def main() -> None:
    parser = argparse.ArgumentParser(description="lockstep test backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.port, arguments.name))


class BackendProcess:
    """A running backend process; a context manager that stops it on exit."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, name: str) -> None:
        self.process = process
        self.port = port
        self.name = name

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit within `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> BackendProcess:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_backend(name: str, port: int = 0, timeout: float = 30.0) -> BackendProcess:
    """Start a backend process and return once it answers GET / with `name`."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.traffic.backend", "--port", str(port), "--name", name],
        cwd=REPOSITORY_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"backend {name} did not start (exit code {process.poll()})")
    backend = BackendProcess(process, int(line.split()[-1]), name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
            connection.request("GET", "/")
            if connection.getresponse().read() == name.encode():
                connection.close()
                return backend
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            backend.stop()
            raise RuntimeError(f"backend {name} on port {backend.port} never answered")
        with contextlib.suppress(Exception):
            connection.close()
        time.sleep(0.05)


if __name__ == "__main__":
    main()
