"""The built-in proxy against real backend processes on loopback: switching, streaming, failures."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockstep.errors import LockstepError
from lockstep.traffic.builtin import BuiltinProxy
from tests.traffic import probes
from tests.traffic.backend import BackendProcess, start_backend
from tests.traffic.load import LoadGenerator


def free_port() -> int:
    return probes.free_port()  # from this worker's port block, never the kernel's ephemeral range


def get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def peak_memory_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, so a brief spike cannot hide."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def blue() -> Iterator[BackendProcess]:
    with start_backend("blue") as backend:
        yield backend


@pytest.fixture(scope="module")
def green() -> Iterator[BackendProcess]:
    with start_backend("green") as backend:
        yield backend


@pytest.fixture
def state_directory() -> Iterator[Path]:
    # Short, so the admin socket path stays under the 107-byte unix socket limit.
    directory = Path(tempfile.mkdtemp(prefix="lsp-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


MakeProxy = Callable[..., BuiltinProxy]


@pytest.fixture
def make_proxy(state_directory: Path) -> Iterator[MakeProxy]:
    """Builds proxies on one state directory and stops (or kills) whatever one started by the end."""
    started: list[BuiltinProxy] = []

    def build(listen_port: int | None = None, **options: float) -> BuiltinProxy:
        proxy = BuiltinProxy(f"127.0.0.1:{listen_port or free_port()}", state_directory, **options)
        started.append(proxy)
        return proxy

    try:
        yield build
    finally:
        for proxy in started:
            pid = proxy.pid()
            proxy.stop()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_zero_failures_through_ten_alternating_switches(
    make_proxy: MakeProxy, blue: BackendProcess, green: BackendProcess
) -> None:
    """Continuous keep-alive and fresh-connection load, GET and POST, sees no failure across 12 switches."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    load = LoadGenerator(f"http://{proxy.listen}/", threads=4).start()
    try:
        load.wait_for_requests(200)
        for number in range(12):
            target = green if number % 2 == 0 else blue
            before = load.requests_so_far
            proxy.switch_to(target.port)
            assert proxy.state().active_port == target.port
            load.wait_for_requests(before + 150)
    finally:
        report = load.stop()
    assert report.failures == 0, report.failure_reasons
    assert report.stale_retries == 0
    assert report.bodies_seen["blue"] > 0 and report.bodies_seen["green"] > 0, report.bodies_seen
    state = proxy.state()
    assert sum(upstream.errors for upstream in state.upstreams) == 0
    assert sum(upstream.requests for upstream in state.upstreams) >= report.requests


def test_next_request_on_a_kept_alive_connection_goes_to_the_new_upstream(
    make_proxy: MakeProxy, blue: BackendProcess, green: BackendProcess
) -> None:
    """A client keep-alive connection is not pinned to the upstream it started on."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"blue"
        proxy.switch_to(green.port)
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"green"
    finally:
        connection.close()


def test_in_flight_request_finishes_on_the_old_upstream_and_then_it_drains(
    make_proxy: MakeProxy, blue: BackendProcess, green: BackendProcess
) -> None:
    """A slow request started before a switch completes on blue; wait_drained(blue) reports it."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    result: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: result.append(get(proxy.port, "/slow?ms=3000")))
    slow.start()
    try:
        wait_until(lambda: any(u.port == blue.port and u.in_flight == 1 for u in proxy.state().upstreams))
        proxy.switch_to(green.port)
        assert get(proxy.port) == (200, b"green")
        assert proxy.wait_drained(blue.port, timeout=0.05) is False
        assert proxy.wait_drained(blue.port, timeout=30) is True
    finally:
        slow.join(30)
    assert result == [(200, b"blue")]


def test_websocket_echo_passes_through(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """An Upgrade: websocket request is tunnelled both ways."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)

    async def talk() -> list[str | bytes]:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://{proxy.listen}/ws") as socket_:
            await socket_.send_str("hello through the proxy")
            first = await socket_.receive_str(timeout=10)
            await socket_.send_bytes(b"\x00\x01binary")
            second = await socket_.receive_bytes(timeout=10)
            return [first, second]

    assert asyncio.run(talk()) == ["hello through the proxy", b"\x00\x01binary"]


def test_large_upload_and_download_are_streamed_not_buffered(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """50 MB up (fixed length and chunked) and 50 MB down grow the proxy's peak memory by far less than 50 MB."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    pid = proxy.pid()
    assert pid is not None
    assert get(proxy.port) == (200, b"blue")
    baseline = peak_memory_kib(pid)
    size = 50 * 1024 * 1024
    piece = os.urandom(1024 * 1024)

    def pieces() -> Iterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    for chunked in (False, True):
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        headers = {} if chunked else {"Content-Length": str(size)}
        connection.request("POST", "/count", body=pieces(), headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, str(size).encode())
        connection.close()

    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    connection.request("GET", f"/bytes?n={size}")
    response = connection.getresponse()
    digest, received = hashlib.sha256(), 0
    while block := response.read(1024 * 1024):
        digest.update(block)
        received += len(block)
    connection.close()
    expected = hashlib.sha256((bytes(range(256)) * 1024) * (size // (256 * 1024))).hexdigest()
    assert (received, digest.hexdigest()) == (size, expected)
    growth_mib = (peak_memory_kib(pid) - baseline) / 1024
    assert growth_mib < 16, f"proxy peak memory grew by {growth_mib:.1f} MiB moving 150 MB"


def test_streamed_chunked_response_and_http10_client(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """A chunked response reaches HTTP/1.1 clients chunked and HTTP/1.0 clients de-chunked, then closed."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    expected = b"".join(f"blue chunk {number}\n".encode() for number in range(5))
    assert get(proxy.port, "/stream") == (200, expected)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n")
        received = b""
        while block := raw.recv(65536):
            received += block
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert body == expected


def test_forwarded_headers_are_added_and_hop_by_hop_headers_dropped(
    make_proxy: MakeProxy, blue: BackendProcess
) -> None:
    """X-Forwarded-For appends the client, -Proto and -Host are set; Connection-listed headers stay behind."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    status, body = get(
        proxy.port,
        "/headers",
        headers={
            "Host": "shop.example",
            "X-Forwarded-For": "203.0.113.7",
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "X-Kept": "yes",
        },
    )
    assert status == 200
    seen = {name.lower(): value for name, value in json.loads(body).items()}
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.example"
    assert seen["host"] == "shop.example"
    assert seen["x-kept"] == "yes"
    assert "x-private-hop" not in seen and "keep-alive" not in seen


def test_dead_upstream_gives_502_with_a_clear_message(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """Switching to a port nobody listens on yields 502 naming the port, counted as an error."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    dead_port = free_port()
    proxy.switch_to(dead_port)
    status, body = get(proxy.port)
    assert status == 502
    assert f"upstream on port {dead_port} refused the connection".encode() in body
    counters = {upstream.port: upstream for upstream in proxy.state().upstreams}
    assert counters[dead_port].errors == 1 and counters[dead_port].requests == 1


def test_slow_upstream_gives_504_after_the_request_timeout(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """A response head later than request_timeout becomes a 504 that says so."""
    proxy = make_proxy(request_timeout=0.5)
    proxy.ensure_running(blue.port)
    status, body = get(proxy.port, "/slow?ms=5000")
    assert status == 504
    assert b"did not answer within 0.5 s" in body
    assert get(proxy.port) == (200, b"blue")


def test_second_adapter_adopts_the_running_proxy(
    make_proxy: MakeProxy, blue: BackendProcess, green: BackendProcess
) -> None:
    """ensure_running on the same state directory adopts the proxy and keeps its upstream."""
    first = make_proxy()
    first.ensure_running(blue.port)
    pid = first.pid()
    second = BuiltinProxy(first.listen, first.state_directory)
    second.ensure_running(green.port)
    assert second.pid() == pid
    assert second.state().active_port == blue.port
    assert get(first.port) == (200, b"blue")


def test_restarted_proxy_resumes_the_persisted_upstream(
    make_proxy: MakeProxy, blue: BackendProcess, green: BackendProcess, state_directory: Path
) -> None:
    """After a crash (SIGKILL) the next ensure_running starts a proxy that still sends to green."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    proxy.switch_to(green.port)
    pid = proxy.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: proxy.pid() is None and not proxy.state().running)
    assert proxy.state().active_port == green.port  # read from the state file while stopped
    proxy.ensure_running(blue.port)
    assert proxy.pid() not in (None, pid)
    assert proxy.state().active_port == green.port
    assert get(proxy.port) == (200, b"green")
    assert (state_directory / "proxy.log").read_text().count("listening on") == 2


def test_stop_lets_in_flight_requests_finish(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """stop() is graceful: a request in flight when it is called still gets its response."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    result: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: result.append(get(proxy.port, "/slow?ms=1500")))
    slow.start()
    wait_until(lambda: any(u.in_flight == 1 for u in proxy.state().upstreams))
    proxy.stop()
    slow.join(30)
    assert result == [(200, b"blue")]
    assert not proxy.state().running
    with pytest.raises(OSError):
        get(proxy.port)


def test_listen_address_in_use_is_a_clear_error(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """A taken listen port gives a LockstepError naming the address, and no proxy process stays behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proxy = make_proxy(taken.getsockname()[1])
        with pytest.raises(LockstepError, match="already in use"):
            proxy.ensure_running(blue.port)
        assert proxy.pid() is None


class _SharedFile:
    """Lets several http.client responses read one after another from one buffered socket file
    (http.client closes its file after each response; this one ignores that)."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def makefile(self, *arguments: Any, **options: Any) -> Any:
        return self

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def test_pipelined_plain_and_special_requests_on_one_connection(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """Pipelined GET, HEAD, a chunked answer and a closing GET come back in order on one connection."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    requests = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /stream?chunks=2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(b"".join(requests))
        shared = _SharedFile(raw.makefile("rb"))
        answers = []
        for method in ("GET", "HEAD", "GET", "GET"):
            response = http.client.HTTPResponse(shared, method=method)  # type: ignore[arg-type]
            response.begin()
            answers.append((response.status, response.read()))
        assert raw.recv(1) == b""  # closed after the Connection: close request
    assert answers == [(200, b"blue"), (200, b""), (200, b"blue chunk 0\nblue chunk 1\n"), (200, b"blue")]


def test_expect_100_continue_is_answered_by_the_proxy(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """A client waiting for 100 Continue gets it, then its body is forwarded."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        file = raw.makefile("rb")
        assert file.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert file.readline() == b"\r\n"
        raw.sendall(b"hello")
        response = http.client.HTTPResponse(_SharedFile(file), method="POST")  # type: ignore[arg-type]
        response.begin()
        assert (response.status, response.read()) == (200, b"hello")


def test_ambiguous_heads_are_rejected_not_forwarded(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """A bare LF that could smuggle a Transfer-Encoding past the proxy gets a 400, nothing reaches blue."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nX: a\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"
        )
        answer = raw.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert proxy.state().upstreams[0].requests == 0


def test_upstream_server_errors_pass_through_and_count(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """A 503 from the upstream reaches the client unchanged and counts as an error for the watch window."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    assert get(proxy.port, "/status/503") == (503, b"blue")
    assert get(proxy.port, "/status/404") == (404, b"blue")
    (counters,) = proxy.state().upstreams
    assert (counters.requests, counters.errors) == (2, 1)


def test_zero_failures_when_old_slots_are_drained_and_stopped(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """Real deploys: start a new slot, switch, wait for the old one to drain, SIGTERM it; load sees nothing."""
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    load = LoadGenerator(f"http://{proxy.listen}/", threads=4).start()
    slots: list[BackendProcess] = []
    try:
        load.wait_for_requests(100)
        for number in range(4):
            slots.append(start_backend(f"release-{number}"))
            before = load.requests_so_far
            old_port = slots[-2].port if len(slots) > 1 else blue.port
            proxy.switch_to(slots[-1].port)
            assert proxy.wait_drained(old_port, timeout=30)
            if len(slots) > 1:
                slots[-2].stop()
            load.wait_for_requests(before + 150)
    finally:
        report = load.stop()
        for slot in slots:
            slot.stop()
    assert report.failures == 0, report.failure_reasons
    assert {f"release-{number}" for number in range(4)} <= set(report.bodies_seen)


def test_state_directory_longer_than_a_unix_socket_path(state_directory: Path, blue: BackendProcess) -> None:
    """A deep project path (over sockaddr_un's 107 bytes) still gets a working admin socket."""
    deep = state_directory / ("d" * 60) / ("e" * 60)
    proxy = BuiltinProxy(f"127.0.0.1:{free_port()}", deep)
    try:
        proxy.ensure_running(blue.port)
        assert len(str(deep / "admin.sock")) > 107
        assert proxy.state().running
        assert get(proxy.port) == (200, b"blue")
    finally:
        proxy.stop()
    assert proxy.pid() is None


def test_adopting_a_proxy_on_another_address_is_a_clear_error(make_proxy: MakeProxy, blue: BackendProcess) -> None:
    """If the configured listen address changed, ensure_running says so instead of silently adopting."""
    first = make_proxy()
    first.ensure_running(blue.port)
    moved = BuiltinProxy(f"127.0.0.1:{free_port()}", first.state_directory)
    with pytest.raises(LockstepError, match=f"listens on {first.listen}"):
        moved.ensure_running(blue.port)


def test_an_ipv6_listen_address_is_adopted_and_switched(
    state_directory: Path, blue: BackendProcess, green: BackendProcess
) -> None:
    """With `listen = "[::1]:PORT"` the proxy reported "::1:PORT", so every ensure_running after
    the first (the agent calls it before each switch, and on adoption) refused the proxy as
    "listening elsewhere": every deploy after the first failed."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        port = probe.getsockname()[1]
    proxy = BuiltinProxy(f"[::1]:{port}", state_directory)
    try:
        proxy.ensure_running(blue.port)
        assert proxy.state().listen == f"[::1]:{port}"
        BuiltinProxy(f"[::1]:{port}", state_directory).ensure_running(green.port)
        proxy.switch_to(green.port)
        connection = http.client.HTTPConnection("::1", port, timeout=30)
        try:
            connection.request("GET", "/")
            assert connection.getresponse().read() == b"green"
        finally:
            connection.close()
    finally:
        pid = proxy.pid()
        proxy.stop()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_proxy_process_keeps_no_secrets_in_its_environment(
    make_proxy: MakeProxy, blue: BackendProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy outlives the deploy that starts it; its environment, readable in /proc for as
    long as it runs, held the repository and database passwords it never needs."""
    monkeypatch.setenv("LOCKSTEP_PASSWORD", "repository-secret-4711")
    monkeypatch.setenv("SHOP_DATABASE_PASSWORD", "database-secret-4711")
    monkeypatch.setenv("STRIPE_API_TOKEN", "token-secret-4711")
    monkeypatch.setenv("LOCKSTEP_PROXY_TEST_PLAIN", "kept")
    proxy = make_proxy()
    proxy.ensure_running(blue.port)
    pid = proxy.pid()
    assert pid is not None
    environment = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"secret-4711" not in environment
    assert b"LOCKSTEP_PROXY_TEST_PLAIN=kept" in environment
    assert get(int(proxy.listen.rsplit(":", 1)[1]))[0] == 200
