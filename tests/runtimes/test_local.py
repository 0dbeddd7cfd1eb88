"""The local runtime against real processes: start, adopt, stop, logs, ports and start errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockstep.errors import LockstepError
from lockstep.exit_codes import ExitCode
from lockstep.process import process_alive
from lockstep.runtimes.local import (
    ProcessSpec,
    RunningProcess,
    RuntimeStartError,
    exit_code,
    is_running,
    log_tail,
    port_holder,
    port_is_free,
    reap,
    rotate_log,
    start_process,
    stop_process,
)

# A server that listens on $PORT and exits cleanly on SIGTERM, saying so in its log.
SERVER = """
import os, signal, socket, sys, time
def terminate(number, frame):
    print("got SIGTERM, shutting down", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, terminate)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen()
print("listening on", os.environ["PORT"], flush=True)
while True:
    time.sleep(0.1)
"""

IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready and ignoring SIGTERM", flush=True)
while True:
    time.sleep(0.1)
"""

SLEEPER = """
import time
print("sleeping", flush=True)
while True:
    time.sleep(0.1)
"""


def free_port() -> int:
    """A free loopback port from this worker's LOCKSTEP_TEST_PORTS block, never the kernel's
    ephemeral range, where an outgoing connection could take it before the server binds it."""
    from tests.deploy.conftest import free_ports

    return free_ports(1)[0]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def started() -> Iterator[list[RunningProcess]]:
    """Collects processes a test starts and stops whatever is still running afterwards."""
    processes: list[RunningProcess] = []
    yield processes
    for process in processes:
        if is_running(process):
            os.killpg(process.pid, signal.SIGKILL)
        stop_process(process)


def make_spec(
    tmp_path: Path,
    source: str,
    *,
    name: str = "web@blue",
    port: int | None = None,
    stop_timeout: float = 10.0,
    argv: tuple[str, ...] | None = None,
    env: dict[str, str] | None = None,
) -> ProcessSpec:
    """A spec running `source` as a Python script in tmp_path, logging to tmp_path/logs."""
    script = tmp_path / f"{name.replace('@', '-')}.py"
    script.write_text(textwrap.dedent(source))
    return ProcessSpec(
        name=name,
        argv=argv or (sys.executable, str(script)),
        cwd=tmp_path,
        env=env or {},
        port=port,
        log_path=tmp_path / "logs" / f"{name}.log",
        stop_timeout=stop_timeout,
    )


def test_start_serves_on_port_and_stop_is_graceful(tmp_path: Path, started: list[RunningProcess]) -> None:
    """A started server listens on its PORT, runs detached in its own session, and SIGTERM stops it cleanly."""
    port = free_port()
    spec = make_spec(tmp_path, SERVER, port=port)
    process = start_process(spec)
    started.append(process)
    assert is_running(process)
    wait_for(lambda: not port_is_free(port), what="the server to listen")
    assert os.getsid(process.pid) == process.pid  # its own session, so it outlives the agent
    assert os.getpgid(process.pid) == process.pid
    begun = time.monotonic()
    stop_process(process)
    assert time.monotonic() - begun < spec.stop_timeout
    assert not is_running(process)
    assert exit_code(process) is None  # reaped and forgotten
    assert not process_alive(process.pid)
    assert "got SIGTERM, shutting down" in log_tail(spec.log_path)
    assert port_is_free(port)


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path, started: list[RunningProcess]) -> None:
    """A process ignoring SIGTERM gets SIGKILL once stop_timeout has passed, and is reaped (no zombie)."""
    spec = make_spec(tmp_path, IGNORES_SIGTERM, stop_timeout=1.0)
    process = start_process(spec)
    started.append(process)
    wait_for(lambda: "ignoring SIGTERM" in log_tail(spec.log_path), what="the handler to be installed")
    begun = time.monotonic()
    stop_process(process)
    elapsed = time.monotonic() - begun
    assert 1.0 <= elapsed < 8.0
    assert not is_running(process)
    assert not Path(f"/proc/{process.pid}").exists() or not process_alive(process.pid)


def test_stop_ends_the_whole_process_group(tmp_path: Path, started: list[RunningProcess]) -> None:
    """Children the application forked (workers) are stopped with it, not orphaned."""
    source = """
    import subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open("worker.pid", "w").write(str(worker.pid))
    while True:
        time.sleep(0.1)
    """
    spec = make_spec(tmp_path, source)
    process = start_process(spec)
    started.append(process)
    wait_for(lambda: (tmp_path / "worker.pid").exists() and (tmp_path / "worker.pid").read_text() != "")
    worker = int((tmp_path / "worker.pid").read_text())
    assert process_alive(worker)
    stop_process(process)
    wait_for(lambda: not process_alive(worker), timeout=10, what="the worker to die")


def test_port_placeholder_env_and_withheld_password(
    tmp_path: Path, started: list[RunningProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "{port}" is filled into argv, PORT and the spec's env are set, LOCKSTEP_PASSWORD is not inherited."""
    monkeypatch.setenv("LOCKSTEP_PASSWORD", "super secret")
    monkeypatch.setenv("INHERITED_VARIABLE", "from lockstep")
    source = """
    import json, os, sys, time
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}, open("seen.json.tmp", "w"))
    os.rename("seen.json.tmp", "seen.json")
    while True:
        time.sleep(0.1)
    """
    port = free_port()
    script_argv = (sys.executable, str(tmp_path / "web-blue.py"), "--bind=127.0.0.1:{port}", "{port}")
    spec = make_spec(tmp_path, source, port=port, env={"APP_MODE": "green"}, argv=script_argv)
    started.append(start_process(spec))
    wait_for(lambda: (tmp_path / "seen.json").exists())
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == [f"--bind=127.0.0.1:{port}", str(port)]
    assert seen["env"]["PORT"] == str(port)
    assert seen["env"]["APP_MODE"] == "green"
    assert seen["env"]["INHERITED_VARIABLE"] == "from lockstep"
    assert "LOCKSTEP_PASSWORD" not in seen["env"]
    assert Path(seen["cwd"]) == tmp_path


def test_output_and_errors_are_appended_to_the_log(tmp_path: Path, started: list[RunningProcess]) -> None:
    """stdout and stderr both land in the log, appended after what was already there; log_tail returns the end."""
    source = """
    import sys, time
    for number in range(50):
        print("out line", number, flush=True)
    print("an error line", file=sys.stderr, flush=True)
    while True:
        time.sleep(0.1)
    """
    spec = make_spec(tmp_path, source)
    spec.log_path.parent.mkdir(parents=True)
    spec.log_path.write_text("from an earlier run\n")
    started.append(start_process(spec))
    wait_for(lambda: "an error line" in log_tail(spec.log_path))
    text = spec.log_path.read_text()
    assert text.startswith("from an earlier run\n")
    assert "out line 0\n" in text
    assert log_tail(spec.log_path, 2) == "out line 49\nan error line"
    assert log_tail(tmp_path / "no-such.log") == ""


def test_rotation_while_the_process_keeps_writing(tmp_path: Path, started: list[RunningProcess]) -> None:
    """Copy-then-truncate keeps the writer writing into the same (now small) file; old copies are capped at keep."""
    source = """
    import itertools, time
    for number in itertools.count():
        print(f"line {number:08d}", flush=True)
        time.sleep(0.002)
    """
    spec = make_spec(tmp_path, source)
    started.append(start_process(spec))
    log = spec.log_path

    def size() -> int:
        return log.stat().st_size if log.exists() else 0

    assert not rotate_log(log, 10**9, keep=2)
    for rotation in range(3):
        wait_for(lambda: size() > 2000, what="the log to grow")
        assert rotate_log(log, 2000, keep=2)
        before = Path(f"{log}.1").read_text()
        assert before.count("\n") > 50, f"rotation {rotation}"
    assert Path(f"{log}.2").exists()
    assert not Path(f"{log}.3").exists()
    last_rotated = int(Path(f"{log}.1").read_text().strip().splitlines()[-1].split()[1])
    wait_for(lambda: size() > 200, what="new lines after the truncation")
    current = log.read_bytes()
    assert not current.startswith(b"\0"), "the writer must append at the new end, not at its old offset"
    first_line = current.decode().splitlines()[0]
    assert int(first_line.split()[1]) > last_rotated


def test_record_round_trip_and_adopt_in_another_python_process(tmp_path: Path, started: list[RunningProcess]) -> None:
    """A process started by one Python process is adopted from its JSON record by another and stopped there."""
    port = free_port()
    spec = make_spec(tmp_path, SERVER, port=port)
    starter = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from lockstep.runtimes.local import ProcessSpec, start_process
        spec = ProcessSpec.from_record(json.loads({json.dumps(json.dumps(spec.to_record()))}))
        print(json.dumps(start_process(spec).to_record()))
        """
    )
    completed = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, check=True)
    record = json.loads(completed.stdout)
    process = RunningProcess.from_record(record)
    started.append(process)
    assert process.spec == spec
    assert RunningProcess.from_record(json.loads(json.dumps(process.to_record()))) == process
    assert is_running(process), "the process must outlive the Python process that started it"
    wait_for(lambda: not port_is_free(port), what="the adopted server to listen")
    assert exit_code(process) is None  # not our child: its exit code is unknowable
    stop_process(process)
    wait_for(lambda: not is_running(process), timeout=5, what="the adopted process to be gone")
    assert "got SIGTERM" in log_tail(spec.log_path)


def test_another_python_process_stops_our_child(tmp_path: Path, started: list[RunningProcess]) -> None:
    """Stopping from a record works from a different process (a CLI), and we then reap our child."""
    spec = make_spec(tmp_path, SERVER, port=free_port())
    process = start_process(spec)
    started.append(process)
    wait_for(lambda: "listening on" in log_tail(spec.log_path), what="the SIGTERM handler to be installed")
    stopper = textwrap.dedent(
        f"""
        import json
        from lockstep.runtimes.local import RunningProcess, stop_process
        stop_process(RunningProcess.from_record(json.loads({json.dumps(json.dumps(process.to_record()))})))
        """
    )
    subprocess.run([sys.executable, "-c", stopper], timeout=60, check=True)
    assert not is_running(process)
    assert exit_code(process) == 0  # its SIGTERM handler exits 0
    stop_process(process)
    assert not Path(f"/proc/{process.pid}").exists() or not process_alive(process.pid)


def test_a_reused_pid_is_not_mistaken_for_the_process(tmp_path: Path, started: list[RunningProcess]) -> None:
    """A record whose start time does not match the PID's is dead, and stopping it signals nothing."""
    process = start_process(make_spec(tmp_path, SLEEPER))
    started.append(process)
    impostor = RunningProcess(process.spec, process.pid, process.start_ticks + 1, process.started_at)
    assert not is_running(impostor)
    stop_process(impostor)
    assert is_running(process)


def test_a_zombie_counts_as_dead(tmp_path: Path) -> None:
    """An exited but unreaped process (not ours to reap here) is reported as not running."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(stat[19])
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z")
        spec = make_spec(tmp_path, SLEEPER)
        assert not is_running(RunningProcess(spec, child.pid, ticks, time.time()))
    finally:
        child.wait()


def test_a_dead_child_stays_unreaped_until_reap(tmp_path: Path, started: list[RunningProcess]) -> None:
    """is_running and exit_code do not reap (so the PID and group stay ours); reap collects the zombie."""
    source = """
    import sys, time
    time.sleep(0.5)
    sys.exit(6)
    """
    process = start_process(make_spec(tmp_path, source), settle_seconds=0.1)
    started.append(process)
    wait_for(lambda: not is_running(process), what="the exit")
    stat_path = Path(f"/proc/{process.pid}/stat")
    assert stat_path.read_text().rpartition(")")[2].split()[0] == "Z"
    assert exit_code(process) == 6
    assert reap(process) == 6
    assert not stat_path.exists()
    assert reap(process) is None  # forgotten


def test_reap_collects_a_dead_adopted_child(tmp_path: Path) -> None:
    """An adopted process that is still our child (an agent that re-executed itself) is reaped with its code."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(5)"])
    stat_path = Path(f"/proc/{child.pid}/stat")
    ticks = int(stat_path.read_text().rpartition(")")[2].split()[19])
    wait_for(lambda: stat_path.read_text().rpartition(")")[2].split()[0] == "Z", what="the zombie")
    adopted = RunningProcess(make_spec(tmp_path, SLEEPER), child.pid, ticks, time.time())
    assert reap(RunningProcess(adopted.spec, child.pid, ticks + 1, 0.0)) is None  # not that process
    assert reap(adopted) == 5
    assert not stat_path.exists()
    child.wait()


def test_unwritable_log_is_reported(tmp_path: Path) -> None:
    """A log that cannot be opened fails the start with the path and what to do."""
    (tmp_path / "not-a-directory").write_text("")
    spec = make_spec(tmp_path, SLEEPER)
    spec = ProcessSpec(**{**vars(spec), "log_path": tmp_path / "not-a-directory" / "app.log"})
    with pytest.raises(RuntimeStartError, match="cannot open its log"):
        start_process(spec)


def test_missing_command_is_named(tmp_path: Path) -> None:
    """A command that does not exist fails before starting, naming it."""
    spec = make_spec(tmp_path, SLEEPER, argv=("no-such-program-lockstep", "--serve"))
    with pytest.raises(RuntimeStartError, match="command not found: no-such-program-lockstep") as caught:
        start_process(spec)
    assert caught.value.exit_code == ExitCode.FAILED
    assert caught.value.hint


def test_missing_working_directory_is_named(tmp_path: Path) -> None:
    """A release directory that does not exist is named in the error."""
    spec = make_spec(tmp_path, SLEEPER)
    spec = ProcessSpec(**{**vars(spec), "cwd": tmp_path / "releases" / "gone"})
    with pytest.raises(RuntimeStartError, match=r"working directory .*releases/gone does not exist"):
        start_process(spec)


def test_relative_command_that_is_not_executable(tmp_path: Path) -> None:
    """A path to a file without the execute bit says so and how to fix it."""
    (tmp_path / "run.sh").write_text("#!/bin/sh\nsleep 100\n")
    spec = make_spec(tmp_path, SLEEPER, argv=("./run.sh",))
    with pytest.raises(RuntimeStartError, match=r"\./run\.sh is not executable") as caught:
        start_process(spec)
    assert "chmod +x" in str(caught.value)


def test_taken_port_names_the_port_and_its_holder(tmp_path: Path) -> None:
    """A port already in use is refused before starting, naming the port and the process listening on it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not port_is_free(port)
        assert port_holder(port) is not None and f"pid {os.getpid()}" in (port_holder(port) or "")
        spec = make_spec(tmp_path, SERVER, port=port)
        with pytest.raises(RuntimeStartError) as caught:
            start_process(spec)
    message = str(caught.value)
    assert f"port {port} is already in use by pid {os.getpid()}" in message
    assert not spec.log_path.exists(), "nothing was started"


def test_exit_while_settling_reports_code_and_log_and_leaves_nothing_running(tmp_path: Path) -> None:
    """A process that dies during settle_seconds raises with its exit code and log tail; its children die too."""
    source = """
    import subprocess, sys
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open("worker.pid", "w").write(str(worker.pid))
    print("fatal: cannot read config/app.toml", flush=True)
    sys.exit(3)
    """
    spec = make_spec(tmp_path, source)
    spec.log_path.parent.mkdir(parents=True)
    spec.log_path.write_text("a line from an earlier, healthy run\n")
    with pytest.raises(RuntimeStartError) as caught:
        start_process(spec, settle_seconds=5.0)
    message = str(caught.value)
    assert "exited with code 3 within 5 s of starting" in message
    assert "fatal: cannot read config/app.toml" in message
    assert "earlier, healthy run" not in message, "only this run's output explains this failure"
    assert isinstance(caught.value, LockstepError)
    worker = int((tmp_path / "worker.pid").read_text())
    wait_for(lambda: not process_alive(worker), timeout=10, what="the worker to be killed")


def test_silent_exit_while_settling_says_it_wrote_nothing(tmp_path: Path) -> None:
    """A process that exits without a word is reported as such, so nobody hunts for a log line."""
    with pytest.raises(RuntimeStartError, match=r"exited with code 0 .*it wrote nothing"):
        start_process(make_spec(tmp_path, "pass\n"), settle_seconds=5.0)


def test_killed_while_settling_names_the_signal(tmp_path: Path) -> None:
    """Death by a signal is reported as the signal's name, not a negative exit code."""
    source = """
    import os, signal
    print("about to crash", flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)
    """
    with pytest.raises(RuntimeStartError, match="killed by signal SIGSEGV"):
        start_process(make_spec(tmp_path, source), settle_seconds=5.0)


def test_port_is_free_ignores_time_wait_but_not_listeners() -> None:
    """A port with a listener is taken; once a server (with SO_REUSEADDR, as servers do) closes it, its
    connections left in TIME_WAIT do not make it look taken."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    assert not port_is_free(port)
    assert not port_is_free(port, "0.0.0.0")
    accepted.close()  # the server side closes first: its end sits in TIME_WAIT
    client.close()
    listener.close()
    assert port_is_free(port)


MAIN_THREAD_EXITS = """
import ctypes, threading, time
def serve():
    print("the worker thread runs on", flush=True)
    while True:
        time.sleep(0.1)
threading.Thread(target=serve).start()
time.sleep(0.2)
ctypes.CDLL(None).pthread_exit(None)
"""


def test_an_adopted_process_whose_main_thread_exited_still_runs(tmp_path: Path) -> None:
    """Its PID shows state "Z" once the main thread has ended while the other threads serve on:
    an adopted process (the agent restarted) was taken for dead, so the supervisor would restart
    it beside the one still running. Liveness is process_alive's now, which counts the threads;
    the start time still tells a reused PID apart."""
    spec = make_spec(tmp_path, MAIN_THREAD_EXITS)
    child = subprocess.Popen(spec.argv, cwd=spec.cwd, start_new_session=True)
    try:
        start_ticks = int(Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[19])
        adopted = RunningProcess(spec, child.pid, start_ticks, time.time())
        wait_for(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z",
            what="the main thread to exit",
        )
        assert is_running(adopted)
        assert not is_running(RunningProcess(spec, child.pid, start_ticks + 1, time.time()))
    finally:
        child.kill()
        child.wait()
    assert not is_running(adopted)
