"""The nginx traffic switch against a real nginx on loopback: switches under load drop nothing,
a config that fails `nginx -t` is never loaded, a running instance is adopted, stop is graceful,
and system mode drives a user's own nginx through an include file."""

from __future__ import annotations

import asyncio
import os
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
from lockstep.traffic.nginx import NginxSwitch
from tests.conftest import require_binary
from tests.traffic.backend import BackendProcess
from tests.traffic.load import LoadGenerator
from tests.traffic.probes import assert_forwarded_headers_are_the_proxys, free_port, get, process_gone, wait_until

SWITCHES = 10


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return require_binary("nginx", "apt-get install nginx")


@pytest.fixture
def managed(tmp_path: Path, nginx_binary: str) -> Iterator[NginxSwitch]:
    """A managed switch on a free loopback port; its nginx is stopped afterwards whatever happens."""
    switch = NginxSwitch(f"127.0.0.1:{free_port()}", tmp_path / "nginx-state", binary=nginx_binary, drain_timeout=20)
    try:
        yield switch
    finally:
        switch.stop()


def test_ten_switches_under_load_drop_no_request(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """Continuous GET/POST load over keep-alive and fresh connections sees zero failures through
    ten alternating switches, both backends serve, and each switch is in effect when it returns."""
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
    counted = {counter.port: counter for counter in state.upstreams}
    assert counted[blue.port].requests > 0 and counted[green.port].requests > 0
    assert counted[blue.port].errors == 0 and counted[green.port].errors == 0


def test_forwarded_headers_are_set_not_taken_from_the_client(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """nginx passed a client's own X-Forwarded-Host on to the app (see the HAProxy test)."""
    managed.ensure_running(backends[0].port)
    assert_forwarded_headers_are_the_proxys(managed.listen_port)


def test_in_flight_request_finishes_on_old_upstream_and_drains(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """A slow request begun before a switch is answered by the old backend; wait_drained is False
    while it runs and True once the old worker has exited."""
    blue, green = backends
    managed.ensure_running(blue.port)
    result: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: result.append(get(managed.listen_port, "/slow?ms=4000")))
    slow.start()
    try:
        time.sleep(1.0)  # nginx does not report in-flight requests: give this one time to arrive
        managed.switch_to(green.port)
        assert get(managed.listen_port) == (200, "green")
        assert not managed.wait_drained(blue.port, timeout=0.2)
        assert managed.wait_drained(blue.port, timeout=30)
    finally:
        slow.join(30)
    assert result == [(200, "blue")]


def test_websocket_stays_on_old_upstream_across_a_switch(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess]
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
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess]
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
        return (
            blue.port in counters
            and counters[blue.port].requests >= 3
            and dead in counters
            and counters[dead].requests >= 2
        )

    assert wait_until(counted)
    assert counters[dead].errors >= 2
    assert counters[blue.port].errors == 0


def test_config_failing_validation_is_never_loaded(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess], nginx_binary: str
) -> None:
    """A switch whose config nginx -t rejects raises LockstepError, leaves the written config and
    the served upstream as they were."""
    blue, green = backends
    managed.ensure_running(blue.port)
    before = managed.managed_config.read_text()
    broken = NginxSwitch(managed.listen, managed.state_directory, binary=nginx_binary, upstream_name="two words")
    with pytest.raises(LockstepError, match="failed validation"):
        broken.switch_to(green.port)
    assert managed.managed_config.read_text() == before
    assert get(managed.listen_port) == (200, "blue")
    assert managed.state().active_port == blue.port
    assert not list(managed.state_directory.glob(".*.next"))


def test_running_instance_is_adopted_with_its_upstream(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess], nginx_binary: str
) -> None:
    """A second switch on the same state directory (a later lockstep run) adopts the running
    nginx: same master, upstream kept, not the `initial_port` it was given."""
    blue, green = backends
    managed.ensure_running(blue.port)
    managed.switch_to(green.port)
    master = int((managed.state_directory / "nginx.pid").read_text())
    later = NginxSwitch(managed.listen, managed.state_directory, binary=nginx_binary)
    later.ensure_running(blue.port)
    assert int((managed.state_directory / "nginx.pid").read_text()) == master
    assert later.state().active_port == green.port
    assert get(managed.listen_port) == (200, "green")


def test_active_upstream_survives_a_restart(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess], nginx_binary: str
) -> None:
    """nginx restarted from the generated config (e.g. after a reboot) serves the last switched-to
    upstream, because it is in the config file."""
    blue, green = backends
    managed.ensure_running(blue.port)
    managed.switch_to(green.port)
    managed.stop()
    subprocess.run(
        [
            nginx_binary,
            "-p",
            str(managed.state_directory),
            "-e",
            str(managed.error_log),
            "-c",
            str(managed.managed_config),
        ],
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 30
    while not managed.state().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get(managed.listen_port) == (200, "green")


def test_a_master_killed_alone_is_replaced_and_its_orphaned_workers_stopped(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """kill -9 of the master (the OOM killer's choice) leaves its workers holding the listening
    socket: ensure_running stops them and starts a new master on the active upstream, instead
    of refusing because "another program already listens there"."""
    blue, green = backends
    managed.ensure_running(blue.port)
    managed.switch_to(green.port)
    master = int(managed.pid_file.read_text())
    workers = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _parent(int(entry)) == master]
    assert workers
    os.kill(master, signal.SIGKILL)
    assert wait_until(lambda: not managed.state().running)
    assert get(managed.listen_port) == (200, "green")  # the orphans still serve, unreachable by switches
    managed.ensure_running(green.port)
    assert all(process_gone(pid) for pid in workers)
    new_master = int(managed.pid_file.read_text())
    assert new_master != master and managed.state().running
    assert get(managed.listen_port) == (200, "green")
    managed.switch_to(blue.port)
    assert get(managed.listen_port) == (200, "blue")


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_stop_lets_in_flight_requests_finish(
    managed: NginxSwitch, backends: tuple[BackendProcess, BackendProcess]
) -> None:
    """stop() is a graceful shutdown: a request in flight is answered, then nginx is gone."""
    blue, _ = backends
    managed.ensure_running(blue.port)
    result: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: result.append(get(managed.listen_port, "/slow?ms=3000")))
    slow.start()
    time.sleep(1.0)  # nginx does not report in-flight requests: give this one time to arrive
    managed.stop()
    slow.join(30)
    assert result == [(200, "blue")]
    assert not managed.state().running
    with pytest.raises(OSError):
        get(managed.listen_port, timeout=5)


def test_listen_address_taken_gives_a_clear_error(tmp_path: Path, nginx_binary: str) -> None:
    """When another program listens on the configured address, ensure_running says so."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        switch = NginxSwitch(f"127.0.0.1:{port}", tmp_path / "state", binary=nginx_binary)
        with pytest.raises(LockstepError, match="already listens") as raised:
            switch.ensure_running(free_port())
        assert raised.value.hint and "listen" in raised.value.hint
        assert not switch.state().running


def test_system_mode_writes_include_validates_and_reloads(
    tmp_path: Path, backends: tuple[BackendProcess, BackendProcess], nginx_binary: str
) -> None:
    """A user's own nginx whose config includes lockstep's upstream file: switch_to rewrites the
    include, validates the user's whole config and runs the reload command; an include that fails
    validation is put back and the old upstream keeps serving."""
    blue, green = backends
    listen_port = free_port()
    include = tmp_path / "conf.d" / "lockstep-upstream.conf"
    main = tmp_path / "nginx.conf"
    pid_file = tmp_path / "nginx.pid"
    main.write_text(
        f"pid {pid_file};\n"
        f"error_log {tmp_path / 'error.log'};\n"
        "events {}\n"
        "http {\n"
        f"    access_log off;\n"
        f"    client_body_temp_path {tmp_path / 'client'};\n"
        f"    proxy_temp_path {tmp_path / 'proxy'};\n"
        f"    include {include};\n"
        f"    server {{ listen 127.0.0.1:{listen_port}; location / {{ proxy_pass http://app_upstream; }} }}\n"
        "}\n"
    )
    base = (nginx_binary, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(main))
    switch = NginxSwitch(
        f"127.0.0.1:{listen_port}",
        tmp_path / "lockstep-state",
        binary=nginx_binary,
        mode="system",
        include_path=include,
        config_path=main,
        reload_command=(*base, "-s", "reload"),
        pid_file=pid_file,
        upstream_name="app_upstream",
    )
    with pytest.raises(LockstepError, match="not running"):
        switch.ensure_running(blue.port)  # writes the include, then finds no nginx to reload
    assert switch.active_port() == blue.port
    subprocess.run(base, check=True, timeout=30)
    try:
        switch.ensure_running(green.port)  # the include already names blue: kept
        assert get(listen_port) == (200, "blue")
        switch.switch_to(green.port)
        assert f"server 127.0.0.1:{green.port};" in include.read_text()
        assert get(listen_port) == (200, "green")
        assert switch.state().active_port == green.port
        assert switch.wait_drained(blue.port, timeout=30)

        before = include.read_text()
        broken = NginxSwitch(
            switch.listen,
            tmp_path / "lockstep-state",
            binary=nginx_binary,
            mode="system",
            include_path=include,
            config_path=main,
            reload_command=("false",),
            pid_file=pid_file,
            upstream_name="two words",
        )
        with pytest.raises(LockstepError, match="failed validation"):
            broken.switch_to(blue.port)
        assert include.read_text() == before
        assert get(listen_port) == (200, "green")
        switch.stop()  # system mode: never stops the user's nginx
        assert get(listen_port) == (200, "green")
    finally:
        master = int(pid_file.read_text())
        os.kill(master, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while not process_gone(master) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(master)


def test_system_mode_reload_failure_is_reported(
    tmp_path: Path, backends: tuple[BackendProcess, BackendProcess], nginx_binary: str
) -> None:
    """A reload command that fails raises LockstepError naming the command (nothing runs here)."""
    blue, _ = backends
    main = tmp_path / "nginx.conf"
    include = tmp_path / "upstream.conf"
    main.write_text(f"pid {tmp_path / 'nginx.pid'};\nevents {{}}\nhttp {{ include {include}; }}\n")
    switch = NginxSwitch(
        "127.0.0.1:1",
        tmp_path / "state",
        binary=nginx_binary,
        mode="system",
        include_path=include,
        config_path=main,
        reload_command=("false",),
        pid_file=tmp_path / "nginx.pid",
    )
    with pytest.raises(LockstepError, match="reload command failed"):
        switch.switch_to(blue.port)


def test_a_missing_binary_is_named_as_such(tmp_path: Path) -> None:
    """Not "the new config failed validation ... the previous upstream keeps serving", which
    sends the user looking at a config when the server is simply not installed."""
    switch = NginxSwitch(f"127.0.0.1:{free_port()}", tmp_path / "state", binary=str(tmp_path / "no-such-binary"))
    with pytest.raises(LockstepError, match="is not installed here") as raised:
        switch.ensure_running(free_port())
    assert raised.value.hint and "binary" in raised.value.hint
