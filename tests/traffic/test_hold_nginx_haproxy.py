"""Holds with a real nginx and a real HAProxy: their upstream becomes a relay that keeps requests
waiting, released to the port active at that moment; 503 + Retry-After past the deadline; a dead
owner lets the requests through and `check_hold` points the server back."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.traffic.haproxy import HaproxySwitch
from lockstep.traffic.hold import HoldOwner, process_start_ticks
from lockstep.traffic.holding import HOLD_FILE
from lockstep.traffic.nginx import NginxSwitch
from tests.conftest import require_binary
from tests.traffic.backend import BackendProcess
from tests.traffic.probes import free_port, get, wait_until

Switch = NginxSwitch | HaproxySwitch


@pytest.fixture(params=["nginx", "haproxy"])
def switch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Switch]:
    binary = require_binary(request.param, f"apt-get install {request.param}")
    listen = f"127.0.0.1:{free_port()}"
    made: Switch = (
        NginxSwitch(listen, tmp_path / "st", binary=binary, drain_timeout=10)
        if request.param == "nginx"
        else HaproxySwitch(listen, tmp_path / "st", binary=binary, drain_timeout=10)
    )
    try:
        yield made
    finally:
        made.stop()


def answer(port: int) -> tuple[int, str, str | None, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read().decode(), response.getheader("Retry-After"), time.monotonic()
    finally:
        connection.close()


def held_count(switch: Switch) -> int:
    hold = switch.holding.current()
    if hold is None:
        return -1
    relay = switch.holding._relay(int(hold["relay_port"]))
    return int((relay.hold_state() or {}).get("waiting", -1))


def test_held_requests_wait_and_go_to_the_port_active_at_release(
    switch: Switch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    blue, green = backends
    switch.ensure_running(blue.port)
    assert get(switch.listen_port) == (200, "blue")
    assert switch.hold(HoldOwner.this_process(), timeout=30.0) == "queue"
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        held = [pool.submit(answer, switch.listen_port) for _ in range(5)]
        assert wait_until(lambda: held_count(switch) == 5)
        switch.switch_to(green.port)  # while held: where the requests go once released
        assert switch.state().active_port == green.port
        assert (switch.state().hold or {}).get("waiting") == 5
        time.sleep(0.3)
        assert not any(future.done() for future in held)
        released_at = time.monotonic()
        summary = switch.release()
        answers = [future.result(timeout=30) for future in held]
    assert [(status, body) for status, body, _, _ in answers] == [(200, "green")] * 5
    assert all(answered >= released_at for *_, answered in answers)
    assert summary is not None and float(str(summary["seconds"])) >= 0.3
    assert switch.active_port() == green.port  # pointed back at the slot itself, relay gone
    assert not (switch.state_directory / HOLD_FILE).exists()
    assert switch.state().hold is None
    assert get(switch.listen_port) == (200, "green")


def test_past_the_deadline_the_relay_answers_503_with_retry_after(
    switch: Switch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    switch.ensure_running(backends[0].port)
    switch.hold(HoldOwner.this_process(), timeout=1.0)
    try:
        status, body, retry_after, _ = answer(switch.listen_port)
    finally:
        switch.release()
    assert (status, retry_after) == (503, "5") and "paused for maintenance" in body
    assert get(switch.listen_port) == (200, "blue")


def test_a_dead_owner_does_not_leave_the_traffic_held(
    switch: Switch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    blue, _ = backends
    switch.ensure_running(blue.port)
    owner = subprocess.Popen(["sleep", "300"])
    try:
        switch.hold(HoldOwner(owner.pid, process_start_ticks(owner.pid)), timeout=120.0)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(answer, switch.listen_port)
            assert wait_until(lambda: held_count(switch) == 1)
            owner.kill()
            owner.wait()
            killed = time.monotonic()
            status, body, _, answered = held.result(timeout=30)
        assert (status, body) == (200, "blue") and answered - killed < 3.0  # the relay let it through
        reason = switch.check_hold()  # what the agent's supervision loop does next
        assert reason is not None and str(owner.pid) in reason
        assert switch.active_port() == blue.port
        assert switch.check_hold() is None
    finally:
        owner.kill()
        owner.wait()


def kill_with_children(pid: int) -> None:
    """kill -9 of a process and its children (an nginx or HAProxy master and its workers)."""
    children = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    for victim in (pid, *children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: all(process_gone(victim) for victim in (pid, *children)))


def process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def owner() -> Iterator[HoldOwner]:
    """A stand-in for the rollback that holds the traffic."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield HoldOwner(process.pid, process_start_ticks(process.pid))
    finally:
        process.kill()
        process.wait()


def assert_held_until_release(switch: Switch, expected: str) -> None:
    """A request sent now waits (the upstream does not answer it) until the release, then is answered."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(answer, switch.listen_port)
        assert wait_until(lambda: held_count(switch) == 1)
        time.sleep(0.5)
        assert not held.done(), f"answered while the traffic was held: {held.result()}"
        released_at = time.monotonic()
        switch.release()
        status, body, _, answered = held.result(timeout=30)
    assert (status, body) == (200, expected) and answered >= released_at


def test_a_relay_killed_mid_hold_is_started_again_and_holds_on(
    switch: Switch, backends: tuple[BackendProcess, BackendProcess], owner: HoldOwner
) -> None:
    """kill -9 of the relay while its owner lives: `check_hold` (the agent's supervision) starts
    it again with the hold it persisted, instead of ending the hold and pointing the server back."""
    blue, _ = backends
    switch.ensure_running(blue.port)
    switch.hold(owner, timeout=60.0)
    relay = switch.holding._relay(int((switch.holding.current() or {})["relay_port"]))
    relay_pid = relay.pid()
    assert relay_pid is not None
    os.kill(relay_pid, signal.SIGKILL)
    assert wait_until(lambda: relay.pid() is None)
    assert switch.check_hold() is None  # not ended: its owner lives
    assert (switch.state().hold or {}).get("resumed") is True
    assert_held_until_release(switch, "blue")
    assert switch.active_port() == blue.port and switch.state().hold is None


def test_a_server_killed_mid_hold_starts_again_pointed_at_the_relay(
    switch: Switch, backends: tuple[BackendProcess, BackendProcess], owner: HoldOwner
) -> None:
    """kill -9 of nginx/HAProxy while held, started again as the agent does (on the active slot's
    port): it starts pointed at the relay, so the hold goes on."""
    blue, _ = backends
    switch.ensure_running(blue.port)
    switch.hold(owner, timeout=60.0)
    master = switch._master_pid()
    assert master is not None
    kill_with_children(master)
    switch.ensure_running(blue.port)
    assert_held_until_release(switch, "blue")
    assert get(switch.listen_port) == (200, "blue")
