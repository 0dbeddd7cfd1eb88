"""The supervisor against real processes: restarts with backoff, crash loops, log rotation, persistence.

Time for the backoff is passed to `poll(now=...)` explicitly, so the tests do not sleep through
the delays; processes die for real and are restarted for real.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockstep.process import process_alive
from lockstep.runtimes.local import (
    ProcessSpec,
    RunningProcess,
    is_running,
    log_tail,
    start_process,
    stop_process,
)
from lockstep.runtimes.supervisor import Supervisor, SupervisorEvent

SLEEPER = """
import time
print("started", flush=True)
while True:
    time.sleep(0.1)
"""

# Runs for a moment, then crashes: slower than settle_seconds so each restart itself succeeds.
CRASHER = """
import sys, time
time.sleep(0.4)
print("crashing: database connection refused", flush=True)
sys.exit(7)
"""

# Starts fine the first time; every later start fails at once (a config broken underneath it).
FAILS_AFTER_FIRST_RUN = """
import os, sys, time
if os.path.exists("ran-once"):
    print("fatal: config changed under me", flush=True)
    sys.exit(4)
open("ran-once", "w").close()
while True:
    time.sleep(0.1)
"""


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def make_spec(tmp_path: Path, source: str, name: str = "worker@blue") -> ProcessSpec:
    script = tmp_path / f"{name.replace('@', '-')}.py"
    script.write_text(textwrap.dedent(source))
    return ProcessSpec(
        name=name,
        argv=(sys.executable, str(script)),
        cwd=tmp_path,
        env={},
        port=None,
        log_path=tmp_path / f"{name}.log",
        stop_timeout=5.0,
    )


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    """Stops every process the test's supervisors hold at the end."""
    created: list[Supervisor] = []
    yield created
    for supervisor in created:
        for name in supervisor.names():
            process = supervisor.remove(name)
            if process is not None:
                stop_process(process)


def kill(process: RunningProcess) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    wait_for(lambda: not is_running(process), what="the process to die")


def kinds(events: list[SupervisorEvent]) -> list[str]:
    return [event.kind for event in events]


def test_restarts_a_dead_process_with_doubling_delays(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    """A killed process is reported with its signal and log tail, then restarted after 1 s, then 2 s."""
    supervisor = Supervisor(settle_seconds=0.1)
    supervisors.append(supervisor)
    spec = make_spec(tmp_path, SLEEPER)
    supervisor.add(start_process(spec, settle_seconds=0.1))
    t = 1000.0
    assert supervisor.poll(now=t) == []

    first = supervisor.get(spec.name)
    assert first is not None
    wait_for(lambda: "started" in log_tail(spec.log_path), what="the process to get going")
    kill(first)
    events = supervisor.poll(now=t)
    assert kinds(events) == ["exited"]
    assert "killed by signal SIGKILL" in events[0].detail
    assert "restarting in 1 s" in events[0].detail
    assert "started" in events[0].detail  # the log tail
    assert events[0].name == spec.name and events[0].at == t
    assert supervisor.poll(now=t + 0.5) == []
    events = supervisor.poll(now=t + 1.0)
    assert kinds(events) == ["restarted"]
    second = supervisor.get(spec.name)
    assert second is not None and second.pid != first.pid and is_running(second)

    kill(second)
    events = supervisor.poll(now=t + 2.0)
    assert kinds(events) == ["exited"] and "restarting in 2 s" in events[0].detail
    assert supervisor.poll(now=t + 3.9) == []
    assert kinds(supervisor.poll(now=t + 4.0)) == ["restarted"]
    third = supervisor.get(spec.name)
    assert third is not None and is_running(third)

    # After a whole quiet window the delay starts from 1 s again.
    kill(third)
    events = supervisor.poll(now=t + 100.0)
    assert "restarting in 1 s" in events[0].detail


def test_crash_loop_stops_restarting(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    """After crash_loop_restarts restarts within the window, the next crash is a crash-loop and no restart."""
    supervisor = Supervisor(crash_loop_restarts=2, crash_loop_window=60.0, settle_seconds=0.1)
    supervisors.append(supervisor)
    spec = make_spec(tmp_path, CRASHER)
    supervisor.add(start_process(spec, settle_seconds=0.1))
    t = 5000.0
    seen: list[SupervisorEvent] = []
    for _ in range(3):
        process = supervisor.get(spec.name)
        assert process is not None
        wait_for(lambda process=process: not is_running(process), what="the crash")  # type: ignore[misc]
        events = supervisor.poll(now=t)
        seen += events
        if events and events[-1].kind == "crash-loop":
            break
        t += 60.0 / 4  # within the window, past any backoff
        seen += supervisor.poll(now=t)
    assert kinds(seen) == ["exited", "restarted", "exited", "restarted", "crash-loop"]
    assert "exited with code 7" in seen[0].detail
    assert "crashing: database connection refused" in seen[-1].detail
    assert "restarted 2 times in the last 60 s" in seen[-1].detail
    assert supervisor.is_crash_looped(spec.name)
    assert supervisor.poll(now=t + 1000) == []
    process = supervisor.get(spec.name)
    assert process is not None and not is_running(process)


def test_failed_restarts_back_off_then_crash_loop(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    """Restarts that fail while settling are reported with the start error and count towards the crash loop."""
    supervisor = Supervisor(crash_loop_restarts=3, settle_seconds=2.0)
    supervisors.append(supervisor)
    spec = make_spec(tmp_path, FAILS_AFTER_FIRST_RUN)
    process = start_process(spec, settle_seconds=0.1)
    supervisor.add(process)
    wait_for(lambda: (tmp_path / "ran-once").exists(), what="the first run to get going")
    kill(process)
    t = 0.0
    events = supervisor.poll(now=t)
    assert kinds(events) == ["exited"]
    events = supervisor.poll(now=t + 1)
    assert kinds(events) == ["restart-failed"]
    assert "exited with code 4" in events[0].detail and "fatal: config changed under me" in events[0].detail
    assert "trying again in 2 s" in events[0].detail
    assert supervisor.poll(now=t + 2.5) == []
    events = supervisor.poll(now=t + 3)
    assert kinds(events) == ["restart-failed"] and "trying again in 4 s" in events[0].detail
    events = supervisor.poll(now=t + 7)
    assert kinds(events) == ["crash-loop"]
    assert supervisor.poll(now=t + 100) == []


def test_workers_left_by_a_crashed_master_are_killed_before_the_restart(
    tmp_path: Path, supervisors: list[Supervisor]
) -> None:
    """A master that dies leaving a worker on its port: the worker is killed so the restart can bind the port."""
    source = """
    import os, socket, subprocess, sys, time
    if not os.path.exists("ran-once"):
        open("ran-once", "w").close()
        worker = subprocess.Popen([sys.executable, "-c", "import os, socket, time\\n"
            "s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen()\\n"
            "open('worker.pid', 'w').write(str(os.getpid()))\\n"
            "time.sleep(600)"])
        while not os.path.exists("worker.pid") or not open("worker.pid").read():
            time.sleep(0.02)
        time.sleep(0.3)
        print("master crashing", flush=True)
        os._exit(9)
    server = socket.socket()
    server.bind(("127.0.0.1", int(os.environ["PORT"])))
    server.listen()
    print("second run listening", flush=True)
    while True:
        time.sleep(0.1)
    """
    from tests.deploy.conftest import free_ports

    port = free_ports(1)[0]  # the worker's block, not the ephemeral range
    spec = ProcessSpec(**{**vars(make_spec(tmp_path, source)), "port": port})
    supervisor = Supervisor(settle_seconds=0.2)
    supervisors.append(supervisor)
    first = start_process(spec, settle_seconds=0.1)
    supervisor.add(first)
    wait_for(lambda: not is_running(first), what="the master to crash")
    worker = int((tmp_path / "worker.pid").read_text())
    events = supervisor.poll(now=0.0)
    assert kinds(events) == ["exited"] and "exited with code 9" in events[0].detail
    assert not process_alive(worker), "poll() must kill the worker the master left behind"
    events = supervisor.poll(now=1.0)
    assert kinds(events) == ["restarted"], events
    wait_for(lambda: "second run listening" in log_tail(spec.log_path), what="the second run to listen")


def test_remove_stops_supervision(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    """A removed process is returned and no longer restarted (the deploy pipeline stops old slots this way)."""
    supervisor = Supervisor(settle_seconds=0.1)
    supervisors.append(supervisor)
    process = start_process(make_spec(tmp_path, SLEEPER), settle_seconds=0.1)
    supervisor.add(process)
    assert supervisor.remove("worker@blue") == process
    assert supervisor.remove("worker@blue") is None
    stop_process(process)
    assert supervisor.poll(now=1.0) == []
    assert supervisor.names() == []


def test_rotates_logs_that_grow_too_big(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    """poll() rotates a log above log_max_bytes, keeping log_keep old copies, while the process writes on."""
    source = """
    import itertools, time
    for number in itertools.count():
        print("x" * 60, number, flush=True)
        time.sleep(0.002)
    """
    supervisor = Supervisor(log_max_bytes=4096, log_keep=2, settle_seconds=0.1)
    supervisors.append(supervisor)
    spec = make_spec(tmp_path, source)
    supervisor.add(start_process(spec, settle_seconds=0.1))
    for copy in (1, 2):
        wait_for(lambda: spec.log_path.stat().st_size > 4096, what="the log to grow")
        assert supervisor.poll() == []
        assert Path(f"{spec.log_path}.{copy}").stat().st_size > 4096
    wait_for(lambda: spec.log_path.stat().st_size > 4096, what="the log to grow")
    supervisor.poll()
    assert not Path(f"{spec.log_path}.3").exists()
    process = supervisor.get(spec.name)
    assert process is not None and is_running(process)


def test_persistence_round_trip(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    """records() survive JSON; from_records restores processes, restart history and crash-loop state."""
    supervisor = Supervisor(settle_seconds=0.1)
    supervisors.append(supervisor)
    blue = start_process(make_spec(tmp_path, SLEEPER, "web@blue"), settle_seconds=0.1)
    worker = start_process(make_spec(tmp_path, SLEEPER, "worker@blue"), settle_seconds=0.1)
    supervisor.add(blue)
    supervisor.add(worker)
    kill(worker)
    supervisor.poll(now=10.0)  # worker: exited, restart due at 11
    stored = json.loads(json.dumps(supervisor.records()))
    assert [record["name"] for record in stored] == ["web@blue", "worker@blue"]
    assert RunningProcess.from_record(stored[0]) == blue  # plain records still load

    restored = Supervisor.from_records(stored, settle_seconds=0.1)
    supervisors.append(restored)
    supervisor.remove("web@blue")  # the restored supervisor owns the processes now
    supervisor.remove("worker@blue")
    assert restored.names() == ["web@blue", "worker@blue"]
    assert restored.get("web@blue") == blue
    assert restored.poll(now=10.5) == []  # the pending restart's time was kept
    events = restored.poll(now=11.0)
    assert kinds(events) == ["restarted"] and events[0].name == "worker@blue"
    assert restored.records()[1]["supervision"]["restarts"] == [11.0]

    plain = Supervisor.from_records([blue.to_record()])
    assert plain.get("web@blue") == blue and not plain.is_crash_looped("web@blue")
