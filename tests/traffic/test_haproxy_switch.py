"""The HAProxy traffic switch against a real HAProxy (master-worker) on loopback: switches under
load drop nothing, a config that fails `haproxy -c` is never loaded, a running instance is
adopted, stop is graceful, and system mode drives a user's own HAProxy through an extra -f file."""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from lockstep.errors import LockstepError
from lockstep.traffic.base import UpstreamCounters
from lockstep.traffic.haproxy import HaproxySwitch
from tests.conftest import require_binary
from tests.traffic.backend import BackendProcess
from tests.traffic.load import LoadGenerator, WrkLoad
from tests.traffic.probes import assert_forwarded_headers_are_the_proxys, free_port, get, process_gone, wait_until

SWITCHES = 10


@pytest.fixture(scope="module")
def haproxy_binary() -> str:
    return require_binary("haproxy", "apt-get install haproxy")


@pytest.fixture
def managed(tmp_path: Path, haproxy_binary: str) -> Iterator[HaproxySwitch]:
    """A managed switch on a free loopback port; its HAProxy is stopped afterwards whatever happens."""
    switch = HaproxySwitch(f"127.0.0.1:{free_port()}", tmp_path / "st", binary=haproxy_binary, drain_timeout=20)
    try:
        yield switch
    finally:
        switch.stop()


def test_ten_switches_under_load_drop_no_request(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """Continuous GET/POST load over keep-alive and fresh connections sees zero failures through
    ten alternating reloads, both backends serve, and each switch is in effect when it returns."""
    blue, green = backends
    managed.ensure_running(blue.port)
    assert get(managed.listen_port) == (200, "blue")
    load = LoadGenerator(f"http://{managed.listen}", threads=4).start()
    try:
        for number in range(SWITCHES):
            load.wait_for_requests(load._report.requests + 40, timeout=60)
            target = green if number % 2 == 0 else blue
            managed.switch_to(target.port)
            assert get(managed.listen_port) == (200, target.name)
            assert managed.state().active_port == target.port
        load.wait_for_requests(load._report.requests + 40, timeout=60)
    finally:
        report = load.stop()
    assert report.failures == 0, report.failure_reasons
    assert report.bodies_seen["blue"] > 0 and report.bodies_seen["green"] > 0, report.bodies_seen
    assert managed.wait_drained(green.port, timeout=30)
    state = managed.state()
    assert state.running and state.active_port == blue.port
    counters = {counter.port: counter for counter in state.upstreams}
    assert counters[blue.port].requests > 0 and counters[blue.port].errors == 0
    assert green.port not in counters  # the new worker only knows the active server


def test_switches_under_wrk_keep_alive_load_fail_no_request(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """wrk never retries a request on a kept-alive connection that closes under it (no client may
    for a POST): an old worker must not close idle client connections when a reload stops it,
    or requests sent on them at that moment get no answer."""
    wrk = require_binary("wrk", "apt-get install wrk")
    blue, green = backends
    managed.ensure_running(blue.port)
    load = WrkLoad(wrk, f"http://{managed.listen}/", seconds=6, connections=32)
    switches = 0
    time.sleep(0.5)
    while load.running():
        managed.switch_to(green.port if switches % 2 == 0 else blue.port)
        switches += 1
        time.sleep(0.3)
    report = load.wait()
    assert switches >= 6 and report.requests > 1000, report.output
    assert report.failures == 0, report.output


def test_an_idle_kept_alive_client_does_not_hold_up_draining(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """The old worker keeps an idle client connection open across a reload (closing it could lose
    a request), but with nothing in flight the old upstream counts as drained; the client's next
    request is answered, with "Connection: close"."""
    blue, green = backends
    managed.ensure_running(blue.port)
    idle = http.client.HTTPConnection("127.0.0.1", managed.listen_port, timeout=30)
    try:
        idle.request("GET", "/")
        assert idle.getresponse().read() == b"blue"
        managed.switch_to(green.port)
        assert managed.wait_drained(blue.port, timeout=5)
        idle.request("GET", "/")
        response = idle.getresponse()
        assert (response.status, response.read()) == (200, b"blue")
        assert response.getheader("Connection", "").lower() == "close"
    finally:
        idle.close()
    assert get(managed.listen_port) == (200, "green")


def test_forwarded_headers_are_set_not_taken_from_the_client(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """X-Forwarded-Proto and -Host are what the proxy saw, as the built-in proxy sets them: a
    client's own "X-Forwarded-Proto: https" must not reach an app that trusts its proxy (secure
    cookies, HTTPS redirects), nor its X-Forwarded-Host (links built from it, password resets)."""
    blue, _ = backends
    managed.ensure_running(blue.port)
    assert_forwarded_headers_are_the_proxys(managed.listen_port)


def test_in_flight_request_finishes_on_old_upstream_and_drains(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """A slow request begun before a switch is answered by the old backend; wait_drained is False
    while the old worker still serves it and True once that worker has exited."""
    blue, green = backends
    managed.ensure_running(blue.port)
    result: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: result.append(get(managed.listen_port, "/slow?ms=2500")))
    slow.start()
    try:
        assert wait_until(lambda: any(counter.in_flight for counter in managed.state().upstreams))
        managed.switch_to(green.port)
        assert get(managed.listen_port) == (200, "green")
        assert not managed.wait_drained(blue.port, timeout=0.2)
        assert managed.wait_drained(blue.port, timeout=30)
    finally:
        slow.join(30)
    assert result == [(200, "blue")]


def test_websocket_stays_on_old_upstream_across_a_switch(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """An open WebSocket keeps talking to the old backend after a switch (the old worker keeps it)
    while new requests go to the new one; wait_drained reports it until it closes."""
    blue, green = backends
    managed.ensure_running(blue.port)

    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://{managed.listen}/ws") as websocket,
        ):
            await websocket.send_str("before")
            assert (await websocket.receive(timeout=30)).data == "before"
            await asyncio.to_thread(managed.switch_to, green.port)
            assert await asyncio.to_thread(get, managed.listen_port) == (200, "green")
            await websocket.send_str("after")
            assert (await websocket.receive(timeout=30)).data == "after"
            assert not await asyncio.to_thread(managed.wait_drained, blue.port, 0.2)

    asyncio.run(scenario())
    assert managed.wait_drained(blue.port, timeout=30)


def test_counters_count_requests_and_errors_per_port(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """state() counts requests per upstream port, and a dead upstream's 502/503 answers as errors."""
    blue, _ = backends
    managed.ensure_running(blue.port)
    for _ in range(3):
        assert get(managed.listen_port) == (200, "blue")
    dead = free_port()
    managed.switch_to(dead)
    for _ in range(2):
        assert get(managed.listen_port)[0] in (502, 503)
    counters: dict[int, UpstreamCounters] = {}

    def counted() -> bool:
        counters.update({counter.port: counter for counter in managed.state().upstreams})
        return dead in counters and counters[dead].requests >= 2

    assert wait_until(counted)
    assert counters[dead].errors >= 2


def test_config_failing_validation_is_never_loaded(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess], haproxy_binary: str
) -> None:
    """A switch whose config haproxy -c rejects raises LockstepError and leaves the written config
    and the served backend as they were."""
    blue, green = backends
    managed.ensure_running(blue.port)
    before = managed.managed_config.read_text()
    broken = HaproxySwitch(managed.listen, managed.state_directory, binary=haproxy_binary, upstream_host="two words")
    with pytest.raises(LockstepError, match="failed validation"):
        broken.switch_to(green.port)
    assert managed.managed_config.read_text() == before
    assert get(managed.listen_port) == (200, "blue")
    assert managed.state().active_port == blue.port
    assert not list(managed.state_directory.glob(".*.next"))


def test_running_instance_is_adopted_with_its_upstream(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess], haproxy_binary: str
) -> None:
    """A second switch on the same state directory adopts the running HAProxy: same master,
    backend kept, not the `initial_port` it was given."""
    blue, green = backends
    managed.ensure_running(blue.port)
    managed.switch_to(green.port)
    master = managed.pid_file.read_text()
    later = HaproxySwitch(managed.listen, managed.state_directory, binary=haproxy_binary)
    later.ensure_running(blue.port)
    assert managed.pid_file.read_text() == master
    assert later.state().active_port == green.port
    assert get(managed.listen_port) == (200, "green")


def test_active_upstream_survives_a_restart(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess], haproxy_binary: str
) -> None:
    """HAProxy restarted from the generated config serves the last switched-to backend."""
    blue, green = backends
    managed.ensure_running(blue.port)
    managed.switch_to(green.port)
    managed.stop()
    assert not managed.state().running
    subprocess.run(
        [haproxy_binary, "-W", "-D", "-p", str(managed.pid_file), "-f", str(managed.managed_config)],
        check=True,
        timeout=30,
    )
    assert wait_until(lambda: managed.state().running)
    assert wait_until(lambda: get(managed.listen_port) == (200, "green"))


def test_stop_lets_in_flight_requests_finish(
    managed: HaproxySwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """stop() is graceful: a request in flight is answered, then HAProxy is gone."""
    blue, _ = backends
    managed.ensure_running(blue.port)
    result: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: result.append(get(managed.listen_port, "/slow?ms=1500")))
    slow.start()
    assert wait_until(lambda: any(counter.in_flight for counter in managed.state().upstreams))
    managed.stop()
    slow.join(30)
    assert result == [(200, "blue")]
    assert not managed.state().running
    with pytest.raises(OSError):
        get(managed.listen_port, timeout=5)


def test_listen_address_taken_gives_a_clear_error(tmp_path: Path, haproxy_binary: str) -> None:
    """When another program listens on the configured address, ensure_running says so."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        switch = HaproxySwitch(f"127.0.0.1:{port}", tmp_path / "st", binary=haproxy_binary)
        with pytest.raises(LockstepError, match="already listens") as raised:
            switch.ensure_running(free_port())
        assert raised.value.hint and "listen" in raised.value.hint
        assert not switch.state().running


def test_system_mode_writes_backend_validates_and_reloads(
    tmp_path: Path, backends: tuple[BackendProcess, BackendProcess], haproxy_binary: str
) -> None:
    """A user's own HAProxy that loads lockstep's backend file with an extra -f: switch_to rewrites
    it, validates the user's config with it, runs the reload command and sees the new worker; a
    backend that fails validation is put back and the old backend keeps serving."""
    blue, green = backends
    listen_port = free_port()
    include = tmp_path / "lockstep-backend.cfg"
    main = tmp_path / "haproxy.cfg"
    pid_file = tmp_path / "haproxy.pid"
    master_socket = tmp_path / "master.sock"
    stats_socket = tmp_path / "stats.sock"
    main.write_text(
        "global\n"
        f"    stats socket {stats_socket} mode 600 level admin expose-fd listeners\n"
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        f"frontend web\n    bind 127.0.0.1:{listen_port}\n    default_backend app\n"
    )
    switch = HaproxySwitch(
        f"127.0.0.1:{listen_port}",
        tmp_path / "lockstep-state",
        binary=haproxy_binary,
        mode="system",
        include_path=include,
        config_path=main,
        master_socket=master_socket,
        stats_socket=stats_socket,
        backend_name="app",
    )
    with pytest.raises(LockstepError, match="not running"):
        switch.ensure_running(blue.port)  # writes the include, then finds no HAProxy to reload
    assert switch.active_port() == blue.port
    subprocess.run(
        [
            haproxy_binary,
            "-W",
            "-D",
            "-S",
            str(master_socket),
            "-p",
            str(pid_file),
            "-f",
            str(main),
            "-f",
            str(include),
        ],
        check=True,
        timeout=30,
    )
    master = int(pid_file.read_text().split()[0])
    try:
        assert wait_until(lambda: switch.state().running)
        switch.ensure_running(green.port)  # running, include present: nothing changes
        assert get(listen_port) == (200, "blue")
        # what `systemctl reload haproxy` does under Debian's unit file
        switch.reload_command = ("kill", "-USR2", str(master))
        switch.switch_to(green.port)
        assert f"server port_{green.port} 127.0.0.1:{green.port}" in include.read_text()
        assert get(listen_port) == (200, "green")
        assert switch.state().active_port == green.port
        assert switch.wait_drained(blue.port, timeout=30)

        before = include.read_text()
        broken = HaproxySwitch(
            switch.listen,
            tmp_path / "lockstep-state",
            binary=haproxy_binary,
            mode="system",
            include_path=include,
            config_path=main,
            reload_command=("false",),
            backend_name="app",
            upstream_host="two words",
        )
        with pytest.raises(LockstepError, match="failed validation"):
            broken.switch_to(blue.port)
        assert include.read_text() == before
        assert get(listen_port) == (200, "green")

        failing_reload = HaproxySwitch(
            switch.listen,
            tmp_path / "lockstep-state",
            binary=haproxy_binary,
            mode="system",
            include_path=include,
            config_path=main,
            reload_command=("false",),
            backend_name="app",
        )
        with pytest.raises(LockstepError, match="reload command failed"):
            failing_reload.switch_to(blue.port)
        switch.stop()  # system mode: never stops the user's HAProxy
        assert get(listen_port) == (200, "green")
    finally:
        os.kill(master, signal.SIGUSR1)
        assert wait_until(lambda: process_gone(master))


def test_a_socket_directory_another_user_made_in_tmp_is_refused(tmp_path: Path, haproxy_binary: str) -> None:
    """A deep state directory puts HAProxy's sockets in /tmp/lockstep-haproxy-<hash>, a name any
    user can compute: one made by someone else (who could swap the master socket for their own)
    is refused, and the real one still works."""
    from lockstep.config.deploy_model import TrafficConfig
    from lockstep.traffic.factory import switch_for
    from lockstep.unix_sockets import short_socket_location

    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    state = tmp_path / ("deep-directory-" * 6)
    config = TrafficConfig(kind="haproxy", listen=f"127.0.0.1:{free_port()}", binary=haproxy_binary)
    planted = short_socket_location(state / "haproxy", "haproxy")
    planted.mkdir(mode=0o777)
    try:
        os.chown(planted, 65534, 65534)
        with pytest.raises(LockstepError, match="not a private directory"):
            switch_for(config, state)
    finally:
        planted.rmdir()
    switch = switch_for(config, state)
    assert isinstance(switch, HaproxySwitch) and switch.master_socket is not None
    assert switch.master_socket.parent == planted
    try:
        switch.ensure_running(free_port())
        assert switch.state().running
    finally:
        switch.stop()
        shutil.rmtree(planted, ignore_errors=True)


def test_a_missing_binary_is_named_as_such(tmp_path: Path) -> None:
    """Not "the new config failed validation ... the previous upstream keeps serving", which
    sends the user looking at a config when the server is simply not installed."""
    switch = HaproxySwitch(f"127.0.0.1:{free_port()}", tmp_path / "state", binary=str(tmp_path / "no-such-binary"))
    with pytest.raises(LockstepError, match="is not installed here") as raised:
        switch.ensure_running(free_port())
    assert raised.value.hint and "binary" in raised.value.hint
