"""process: a dump tool's output read as a stream; users' commands and their process groups."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.errors import SourceError
from lockstep.process import (
    STREAM_PIPE_BYTES,
    BatchingPipeReader,
    Command,
    CommandGroup,
    StreamingProcess,
    command_group_members,
    groups_marked_with,
    process_alive,
    run_user_command,
    stop_command_group,
)


def test_the_stream_comes_through_a_large_pipe_whole() -> None:
    process = StreamingProcess(Command(("sh", "-c", "head -c 3000000 /dev/zero")))
    # Fewer wake-ups between the dump tool and lockstep than with the default 64 KiB.
    assert fcntl.fcntl(process.stdout.fileno(), fcntl.F_GETPIPE_SZ) == STREAM_PIPE_BYTES
    assert len(process.stdout.read()) == 3_000_000
    process.finish()


WRITE_4_KIB_PIECES = """
import os, sys, time
for number in range(2000):
    os.write(1, number.to_bytes(4, "big") * 1024)
    time.sleep(0.0002)
"""


def test_a_tool_writing_4_kib_at_a_time_is_read_in_large_pieces() -> None:
    """pg_dump writes 4 KiB per write; read as it comes, each piece cost a trip through the
    stream layers above (~250,000 per GB)."""
    process = StreamingProcess(Command((sys.executable, "-c", WRITE_4_KIB_PIECES)))
    buffer = memoryview(bytearray(1 << 20))
    received = bytearray()
    reads = 0
    while count := process.stdout.readinto(buffer):  # type: ignore[attr-defined]
        received += buffer[:count]
        reads += 1
    process.finish()
    assert received == b"".join(number.to_bytes(4, "big") * 1024 for number in range(2000))
    assert reads <= 8_192_000 // BatchingPipeReader.BATCH_BYTES + 2


def test_a_failing_command_is_named_with_its_last_words() -> None:
    process = StreamingProcess(Command(("sh", "-c", "echo partial; echo 'disk full' >&2; exit 4")))
    assert process.stdout.read() == b"partial\n"
    with pytest.raises(SourceError, match=r"exited with code 4.*disk full"):
        process.finish()


def test_a_user_command_that_times_out_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    """A hook like `sh -c 'sleep 1000; notify'` left its `sleep` running when only the shell was
    killed at the timeout (an orphan, for as long as it liked). The whole group is killed now."""
    pid_file = tmp_path / "sleep.pid"
    script = f"sleep 1000 & echo $! > {pid_file}; echo started; wait"
    outcome = run_user_command(Command(("sh", "-c", script)), timeout=1.0)
    assert not outcome.ok and outcome.problem == "did not finish within 1 s"
    assert "started" in outcome.output
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while process_alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(sleeper)


def test_a_user_command_runs_to_completion_with_its_output() -> None:
    outcome = run_user_command(Command(("sh", "-c", "echo one; echo two >&2; exit 3")), timeout=30)
    assert (outcome.returncode, outcome.output) == (3, "one\ntwo\n")


def test_a_user_command_reports_its_process_group_and_it_can_be_stopped_from_elsewhere(tmp_path: Path) -> None:
    """What the clean-up of a killed deploy does to the migration it orphaned: the group named by
    PID and start time is stopped whole (SIGTERM first), a reused PID is left alone."""
    import threading

    groups: list[CommandGroup] = []
    marker = tmp_path / "finished"
    script = f"sleep 30 & wait; touch {marker}"
    runner = threading.Thread(
        target=run_user_command, args=(Command(("sh", "-c", script)), 60.0, groups.append), daemon=True
    )
    runner.start()
    deadline = time.monotonic() + 10
    while (not groups or len(command_group_members(groups[0])) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    group = groups[0]
    assert group.start_ticks is not None and len(command_group_members(group)) == 2  # sh and its sleep
    assert CommandGroup.from_document(group.to_document()) == group
    # The same PID with another start time is another process: not ours to stop.
    reused = CommandGroup(group.pid, group.start_ticks + 1)
    assert command_group_members(reused) == [] and stop_command_group(reused) is False
    assert len(command_group_members(group)) == 2

    assert stop_command_group(group, grace=5.0) is True
    assert command_group_members(group) == []
    runner.join(timeout=10)
    assert not marker.exists()
    assert stop_command_group(group) is False  # ended: nothing to stop


def test_a_user_command_is_found_by_the_mark_in_its_environment(tmp_path: Path) -> None:
    """A deploy killed after its command started but before it saved the command's process group
    left only the mark it gave the command: the groups of every process carrying it are found,
    children in a session of their own included, and never the searcher's own group."""
    import subprocess
    import uuid

    mark = uuid.uuid4().hex
    script = "setsid sleep 30 & sleep 30"
    environment = {**os.environ, "LOCKSTEP_COMMAND_MARK": mark}
    command = subprocess.Popen(["sh", "-c", script], env=environment, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(groups_marked_with("LOCKSTEP_COMMAND_MARK", mark)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        groups = groups_marked_with("LOCKSTEP_COMMAND_MARK", mark)
        assert command.pid in [group.pid for group in groups] and len(groups) == 2, groups
        assert groups_marked_with("LOCKSTEP_COMMAND_MARK", uuid.uuid4().hex) == []
        for group in groups:
            assert stop_command_group(group) is True
        assert groups_marked_with("LOCKSTEP_COMMAND_MARK", mark) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)
        command.wait()

    # A process of the searcher's own group with the mark (a `lockstep status` a hook ran): left alone.
    same_group = subprocess.Popen(["sleep", "30"], env=environment)
    try:
        environ = Path(f"/proc/{same_group.pid}/environ")
        deadline = time.monotonic() + 10
        while mark.encode() not in environ.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)  # until it runs sleep, with the mark
        assert groups_marked_with("LOCKSTEP_COMMAND_MARK", mark) == []
    finally:
        same_group.kill()
        same_group.wait()


# -- process_alive: the one "is it still there?" test -------------------------------------------


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@contextlib.contextmanager
def _zombie() -> Iterator[int]:
    """A child that has exited and that nobody has collected yet."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        yield child.pid
    finally:
        child.wait()


def test_a_running_process_is_alive_and_a_collected_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(os.getpid()) and process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


def test_a_zombie_is_not_alive() -> None:
    """It runs nothing and never releases a lock; the repository and environment locks' own tests
    (kill(pid, 0) alone) counted it alive, so its locks never went stale."""

    with _zombie() as pid:
        assert not process_alive(pid)


def test_a_pid_of_zero_or_below_is_never_alive() -> None:
    """kill(0, 0) reaches our own process group and kill(-1, 0) every process: both succeed,
    and a lock or record with PID 0 counted as held by a live process."""

    assert not process_alive(0)
    assert not process_alive(-1)
    assert not process_alive(-os.getpgrp())


def test_a_process_whose_main_thread_exited_is_alive_while_its_threads_run(tmp_path: Path) -> None:
    """Its PID shows state "Z" once the main thread has ended, yet the other threads still run."""

    script = tmp_path / "leader.py"
    script.write_text(
        "import ctypes, os, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(30), os._exit(0))).start()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    child = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the main thread never exited"
            time.sleep(0.01)
        assert process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
CHECK_TWO_PIDS = (
    "import sys; from lockstep.process import process_alive;"
    " print(process_alive(int(sys.argv[1])), process_alive(int(sys.argv[2])))"
)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_another_users_process_is_alive_to_a_user_who_may_not_signal_it() -> None:
    """As nobody, a root process answers kill(pid, 0) with EPERM: it exists. A root zombie is
    still not alive (EPERM answered before /proc was asked)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with _zombie() as zombie:
            checked = subprocess.run(
                [*AS_NOBODY, sys.executable, "-c", CHECK_TWO_PIDS, str(child.pid), str(zombie)],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
                capture_output=True,
                text=True,
                timeout=60,
            )
    finally:
        child.kill()
        child.wait()
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.split() == ["True", "False"]


def test_a_repository_lock_and_an_environment_lock_held_by_a_zombie_are_stale() -> None:
    from datetime import UTC, datetime

    from lockstep.pipeline.environment_lock import LockHolder, judge_staleness
    from lockstep.repository.gojson import format_time_ns
    from lockstep.repository.locks import LockInfo

    with _zombie() as pid:
        lock = LockInfo("ab" * 32, format_time_ns(time.time_ns()), True, socket.gethostname(), "root", pid)
        assert lock.is_stale()
        now = datetime.now(UTC)
        holder = LockHolder("d1", "production", "root", socket.gethostname(), pid, None, now, now, "deploy")
        stale, reason = judge_staleness(holder, stale_after=3600, now=now)
        assert stale and reason == f"process {pid} no longer runs on {socket.gethostname()}"
