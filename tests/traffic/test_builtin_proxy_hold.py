"""Holds in the built-in proxy, against real backend processes: requests wait, then go to the
upstream active at the release; past the deadline they get 503 + Retry-After; a dead owner ends it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.traffic.builtin import BuiltinProxy
from lockstep.traffic.hold import HoldOwner, process_start_ticks
from tests.traffic.backend import BackendProcess
from tests.traffic.test_builtin_proxy import free_port, wait_until


def exchange(port: int, path: str = "/") -> tuple[int, bytes, dict[str, str], float]:
    """One GET on a fresh connection: status, body, headers and when (monotonic) it was answered."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, {name.lower(): value for name, value in response.getheaders()}, time.monotonic()
    finally:
        connection.close()


@pytest.fixture
def proxy(backends: tuple[BackendProcess, BackendProcess]) -> Iterator[BuiltinProxy]:
    directory = Path(tempfile.mkdtemp(prefix="lsh-", dir="/tmp"))
    switch = BuiltinProxy(f"127.0.0.1:{free_port()}", directory, drain_timeout=5.0)
    switch.ensure_running(backends[0].port)
    try:
        yield switch
    finally:
        pid = switch.pid()
        switch.stop()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def owner() -> Iterator[tuple[subprocess.Popen[bytes], HoldOwner]]:
    """A stand-in for the rollback process that holds the traffic: a real process we can kill -9."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process, HoldOwner(process.pid, process_start_ticks(process.pid))
    finally:
        process.kill()
        process.wait()


def test_held_requests_wait_then_go_to_the_slot_active_at_release(
    proxy: BuiltinProxy, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """In-flight requests finish on blue; requests sent during the hold are answered by green
    (switched to while held) once released, not before, and none by blue."""
    blue, green = backends
    port = proxy.port
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        in_flight = pool.submit(exchange, port, "/slow?ms=1500")
        wait_until(lambda: any(upstream.in_flight for upstream in proxy.state().upstreams))
        assert proxy.hold(HoldOwner.this_process(), timeout=30.0) == "queue"
        held = [pool.submit(exchange, port, "/") for _ in range(8)]
        wait_until(lambda: (proxy.hold_state() or {}).get("waiting") == 8)
        assert (proxy.state().hold or {}).get("waiting") == 8
        assert proxy.wait_drained(blue.port, timeout=10.0)
        assert in_flight.result()[:2] == (200, b"blue")  # drained: it finished where it started
        assert not any(future.done() for future in held)
        proxy.switch_to(green.port)
        time.sleep(0.3)
        assert not any(future.done() for future in held), "a held request was answered before the release"
        released_at = time.monotonic()
        summary = proxy.release()
        answers = [future.result(timeout=30) for future in held]
    assert [(status, body) for status, body, _, _ in answers] == [(200, b"green")] * 8
    assert all(answered >= released_at for _, _, _, answered in answers)
    assert summary is not None and summary["held"] + summary["waiting"] == 8 and summary["refused"] == 0
    assert float(summary["seconds"]) >= 0.3
    assert proxy.hold_state() is None
    assert exchange(port)[:2] == (200, b"green")


def test_a_hold_past_its_deadline_answers_503_with_retry_after(proxy: BuiltinProxy) -> None:
    proxy.hold(HoldOwner.this_process(), timeout=1.0)
    try:
        started = time.monotonic()
        status, body, headers, answered = exchange(proxy.port)
        assert status == 503
        assert headers.get("retry-after") == "5"
        assert b"paused for maintenance" in body
        assert 0.8 <= answered - started < 5.0  # it waited for the deadline, not forever, not at all
        # Past the deadline, new requests are answered at once: no one hangs on an expired hold.
        status, _, headers, answered_later = exchange(proxy.port)
        assert status == 503 and "retry-after" in headers
        assert answered_later - answered < 0.5
    finally:
        summary = proxy.release()
    assert summary is not None and summary["refused"] == 2 and summary["expired"] is True
    assert exchange(proxy.port)[:2] == (200, b"blue")


def test_a_hold_ends_when_its_owner_is_killed(
    proxy: BuiltinProxy, owner: tuple[subprocess.Popen[bytes], HoldOwner]
) -> None:
    """kill -9 of the process that held the traffic: the proxy releases the waiting requests."""
    process, identity = owner
    proxy.hold(identity, timeout=60.0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        held = pool.submit(exchange, proxy.port, "/")
        wait_until(lambda: (proxy.hold_state() or {}).get("waiting") == 1)
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at = time.monotonic()
        status, body, _, answered = held.result(timeout=10)
    assert (status, body) == (200, b"blue")
    assert answered - killed_at < 2.0
    assert proxy.hold_state() is None


def test_a_second_owner_cannot_take_a_live_hold(
    proxy: BuiltinProxy, owner: tuple[subprocess.Popen[bytes], HoldOwner]
) -> None:
    _, identity = owner
    proxy.hold(identity, timeout=30.0)
    try:
        with pytest.raises(Exception, match=f"already held by pid {identity.pid}"):
            proxy.hold(HoldOwner.this_process(), timeout=30.0)
        assert proxy.hold(identity, timeout=30.0) == "queue"  # the owner retrying keeps its hold
    finally:
        proxy.release()
    assert proxy.release() is None


def test_a_hold_owner_is_its_pid_and_start_time(owner: tuple[subprocess.Popen[bytes], HoldOwner]) -> None:
    """A reused PID (same number, another start time) is not the owner; a zombie is not alive."""
    process, identity = owner
    assert identity.alive() and identity.start_ticks is not None
    assert not HoldOwner(process.pid, identity.start_ticks + 1).alive()
    process.kill()
    time.sleep(0.2)  # killed, not reaped yet: a zombie
    assert not identity.alive()
    process.wait()
    assert not identity.alive()
    with pytest.raises(ValueError):
        HoldOwner.from_document({"pid": "1"})


def kill_proxy(proxy: BuiltinProxy) -> None:
    """kill -9 of the proxy process (as the OOM killer would), waiting until it is gone."""
    pid = proxy.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: proxy.pid() is None)


def test_a_proxy_killed_mid_hold_resumes_the_hold_when_started_again(
    proxy: BuiltinProxy, owner: tuple[subprocess.Popen[bytes], HoldOwner]
) -> None:
    """kill -9 of the proxy while a rollback holds the traffic, started again as the agent does:
    a request sent then waits until the release, and is not answered by the upstream before."""
    _, identity = owner
    proxy.hold(identity, timeout=60.0)
    kill_proxy(proxy)
    proxy.ensure_running(proxy.persisted_port() or 0)
    resumed = proxy.hold_state()
    assert resumed is not None and resumed["owner"]["pid"] == identity.pid and resumed["resumed"] is True
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(exchange, proxy.port, "/")
        wait_until(lambda: (proxy.hold_state() or {}).get("waiting") == 1)
        time.sleep(0.5)
        assert not held.done(), "a restarted proxy served a request while the traffic was held"
        released_at = time.monotonic()
        summary = proxy.release()
        status, body, _, answered = held.result(timeout=10)
    assert (status, body) == (200, b"blue") and answered >= released_at
    assert summary is not None and summary["held"] + summary["waiting"] == 1
    assert not (proxy.state_directory / "hold.json").exists()


def test_a_restarted_proxy_keeps_the_hold_deadline(proxy: BuiltinProxy) -> None:
    """The deadline counts from when the hold began, not from the restart: past it, 503 at once."""
    proxy.hold(HoldOwner.this_process(), timeout=1.0)
    kill_proxy(proxy)
    time.sleep(1.2)
    proxy.ensure_running(proxy.persisted_port() or 0)
    started = time.monotonic()
    status, _, headers, answered = exchange(proxy.port)
    assert (status, headers.get("retry-after")) == (503, "5") and answered - started < 0.5
    proxy.release()
    assert exchange(proxy.port)[:2] == (200, b"blue")


def test_a_restarted_proxy_whose_hold_owner_died_serves_at_once(
    proxy: BuiltinProxy, owner: tuple[subprocess.Popen[bytes], HoldOwner]
) -> None:
    process, identity = owner
    proxy.hold(identity, timeout=60.0)
    kill_proxy(proxy)
    process.kill()
    process.wait()
    proxy.ensure_running(proxy.persisted_port() or 0)
    started = time.monotonic()
    status, body, _, answered = exchange(proxy.port)
    assert (status, body) == (200, b"blue") and answered - started < 1.0
    assert proxy.hold_state() is None
    assert not (proxy.state_directory / "hold.json").exists()


def test_a_release_while_the_proxy_is_down_is_not_resumed(
    proxy: BuiltinProxy, owner: tuple[subprocess.Popen[bytes], HoldOwner]
) -> None:
    """The owner releases while the proxy is dead: the proxy started after that must not hold."""
    _, identity = owner
    proxy.hold(identity, timeout=60.0)
    kill_proxy(proxy)
    summary = proxy.release()
    assert summary is not None and summary["owner"] == identity.to_document()
    proxy.ensure_running(proxy.persisted_port() or 0)
    assert proxy.hold_state() is None
    assert exchange(proxy.port)[:2] == (200, b"blue")


def test_a_stopping_proxy_refuses_its_held_requests_and_keeps_the_hold(
    proxy: BuiltinProxy, owner: tuple[subprocess.Popen[bytes], HoldOwner]
) -> None:
    """A graceful stop mid-hold: the waiting requests get 503 + Retry-After (not the upstream,
    whose data may be half restored), and the proxy started again holds on."""
    _, identity = owner
    proxy.hold(identity, timeout=60.0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(exchange, proxy.port, "/")
        wait_until(lambda: (proxy.hold_state() or {}).get("waiting") == 1)
        proxy.stop()
        status, _, headers, _ = held.result(timeout=10)
    assert (status, headers.get("retry-after")) == (503, "5")
    proxy.ensure_running(proxy.persisted_port() or 0)
    assert (proxy.hold_state() or {}).get("resumed") is True
    proxy.release()
    assert exchange(proxy.port)[:2] == (200, b"blue")
