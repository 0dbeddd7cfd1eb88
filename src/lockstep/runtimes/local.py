"""Application processes on this machine: start them detached, tell whether they run, stop them.

Processes get their own session (and so their own process group) so they outlive the agent and
the CLI that started them; a restarted agent adopts them again from `RunningProcess` records.
A PID alone is not an identity (the kernel reuses PIDs), so every record also carries the
process's start time in clock ticks from /proc/PID/stat, and a PID whose start time differs is
a different process. Only Linux is supported: the /proc files are the source of truth.

Starting follows the conventions of `lockstep.process` (argv lists, never a shell; lockstep's
own secrets withheld from the child's environment); it lives here because a detached,
long-lived child with its output appended to a log file is not a primitive that module has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from lockstep.errors import LockstepError
from lockstep.process import WITHHELD_VARIABLES, process_alive

PORT_PLACEHOLDER = "{port}"
_POLL_INTERVAL = 0.02
_KILL_GRACE = 5.0  # how long to wait for the kernel to remove a SIGKILLed group


class RuntimeStartError(LockstepError):
    """An application process could not be started (or died while starting); nothing was left running."""


class RuntimeStopError(LockstepError):
    """A process could not be signalled (it belongs to another user)."""


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one application process (one slot of one service, e.g. "web@blue")."""

    name: str
    argv: tuple[str, ...]  # "{port}" in any argument is replaced by the port
    cwd: Path
    env: Mapping[str, str]  # added to lockstep's environment (minus WITHHELD_VARIABLES)
    port: int | None  # exported as PORT; checked to be free before starting
    log_path: Path  # stdout and stderr are appended here
    stop_timeout: float = 10.0  # SIGTERM, then SIGKILL after this many seconds

    def resolved_argv(self) -> tuple[str, ...]:
        """The argv with the port filled in."""
        if self.port is None:
            return self.argv
        return tuple(argument.replace(PORT_PLACEHOLDER, str(self.port)) for argument in self.argv)

    def environment(self) -> dict[str, str]:
        """lockstep's environment without its own secrets, plus the spec's additions and PORT."""
        inherited = {name: value for name, value in os.environ.items() if name not in WITHHELD_VARIABLES}
        environment = {**inherited, **self.env}
        if self.port is not None:
            environment["PORT"] = str(self.port)
        return environment

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "cwd": str(self.cwd),
            "env": dict(self.env),
            "port": self.port,
            "log_path": str(self.log_path),
            "stop_timeout": self.stop_timeout,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProcessSpec:
        return cls(
            name=str(record["name"]),
            argv=tuple(str(argument) for argument in record["argv"]),
            cwd=Path(record["cwd"]),
            env={str(key): str(value) for key, value in dict(record.get("env") or {}).items()},
            port=None if record.get("port") is None else int(record["port"]),
            log_path=Path(record["log_path"]),
            stop_timeout=float(record.get("stop_timeout", 10.0)),
        )


@dataclass(frozen=True)
class RunningProcess:
    """A started process, identified by PID *and* start time so a reused PID is not mistaken for it."""

    spec: ProcessSpec
    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat: clock ticks after boot when it started
    started_at: float  # epoch seconds, for people and for uptime

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict (the agent stores it); note it includes the spec's env additions."""
        return {
            **self.spec.to_record(),
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "started_at": self.started_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunningProcess:
        """Rebuild from `to_record()` output; unknown keys are ignored so callers may add their own."""
        return cls(
            spec=ProcessSpec.from_record(record),
            pid=int(record["pid"]),
            start_ticks=int(record["start_ticks"]),
            started_at=float(record["started_at"]),
        )


# Our own children, so we can reap them (no zombies) and know their exit codes. Adopted
# processes are not here: their parent (init or a subreaper) reaps them.
_children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
_children_lock = threading.Lock()


@dataclass(frozen=True)
class _ProcStat:
    state: str
    parent: int
    pgrp: int
    start_ticks: int


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces and ")".
    fields = text.rpartition(")")[2].split()
    try:
        return _ProcStat(state=fields[0], parent=int(fields[1]), pgrp=int(fields[2]), start_ticks=int(fields[19]))
    except (IndexError, ValueError):
        return None


def _own_child(process: RunningProcess) -> subprocess.Popen[bytes] | None:
    with _children_lock:
        entry = _children.get(process.pid)
    if entry is None or entry[0] != process.start_ticks:
        return None
    return entry[1]


def _is_alive(pid: int, start_ticks: int) -> bool:
    """This very process runs: its PID with the start time it was recorded with (not a reused
    PID), alive as process_alive means it (a zombie is not; a process whose main thread ended
    while its other threads run is)."""
    stat = _read_stat(pid)
    return stat is not None and stat.start_ticks == start_ticks and process_alive(pid)


def _ended_child_status(child: subprocess.Popen[bytes]) -> int | None:
    """An ended child's exit status *without reaping it*: while it is an unreaped zombie its PID,
    and so its process group ID, cannot be reused, which keeps signalling that group safe."""
    if child.returncode is not None:
        return child.returncode
    try:
        result = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return child.poll()  # reaped behind our back (e.g. os.wait() elsewhere)
    if result is None:
        return None
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


def is_running(process: RunningProcess) -> bool:
    """Whether this very process (PID and start time) is alive; a zombie counts as dead."""
    child = _own_child(process)
    if child is not None:
        return _ended_child_status(child) is None
    return _is_alive(process.pid, process.start_ticks)


def exit_code(process: RunningProcess) -> int | None:
    """The exit status of one of our own children once it has ended (negative: killed by that
    signal); None while it runs or when we did not start it (an adopted process)."""
    child = _own_child(process)
    return None if child is None else _ended_child_status(child)


def _kill_leftovers(process: RunningProcess) -> None:
    """SIGKILL what is left of a dead process's group (workers a crashed master left behind still
    hold its port). Skipped when its PID now belongs to another process."""
    stat = _read_stat(process.pid)
    if stat is not None and stat.state not in ("Z", "X", "x"):
        return  # alive: either still our process (not leftovers) or a different one (not ours)
    if _group_members(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        _wait_gone(process, _KILL_GRACE)


def reap(process: RunningProcess) -> int | None:
    """For a process that has ended: kill what is left of its process group, collect it if it is
    our child (no zombie) and return its exit status (None when unknown or still running). The
    supervisor calls this when it finds a process dead.

    Also collects a dead adopted process that is still our child (an agent that re-executed
    itself keeps its PID and so its children), which would otherwise stay a zombie forever."""
    if is_running(process):
        return None
    _kill_leftovers(process)
    child = _own_child(process)
    if child is not None:
        code = child.wait()
        with _children_lock:
            _children.pop(process.pid, None)
        return code
    stat = _read_stat(process.pid)
    if stat is None or stat.state != "Z" or stat.parent != os.getpid() or stat.start_ticks != process.start_ticks:
        return None
    try:
        collected, status = os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if collected == process.pid else None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown (not started by this agent)"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X", "x"):
            members.append(int(entry.name))
    return members


def _signal_group(pid: int, signal_number: int) -> None:
    try:
        os.killpg(pid, signal_number)
    except ProcessLookupError:
        # The process left its group (setpgid) or the group is gone: signal the process itself.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal_number)
    except PermissionError as error:
        raise RuntimeStopError(
            f"not allowed to signal process {pid}", "stop it as the user that started it (or root)"
        ) from error


def _wait_gone(process: RunningProcess, timeout: float) -> bool:
    """Wait until the process and every live member of its group have ended."""
    deadline = time.monotonic() + timeout
    while True:
        if not is_running(process) and not _group_members(process.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)


def stop_process(process: RunningProcess) -> None:
    """Stop the process and everything in its process group: SIGTERM, then SIGKILL after
    `spec.stop_timeout`. Works for adopted processes too; our own children are reaped. A process
    that has already ended only has the leftovers of its group killed."""
    if is_running(process):
        _signal_group(process.pid, signal.SIGTERM)
        if not _wait_gone(process, process.spec.stop_timeout):
            _signal_group(process.pid, signal.SIGKILL)
            _wait_gone(process, _KILL_GRACE)
    reap(process)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log ("" when there is none); reads only the end of big files."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""
    return "\n".join(data.decode("utf-8", "replace").rstrip("\n").splitlines()[-lines:]) if lines > 0 else ""


def rotate_log(path: Path, max_bytes: int, keep: int) -> bool:
    """When `path` is bigger than `max_bytes`, shift path.1..path.{keep-1} up, copy it to path.1
    and truncate it in place. Copy-then-truncate because the process holds the file open (in
    append mode, so it keeps writing at the new end); lines written between the copy and the
    truncation are lost. Returns whether it rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if keep > 0:
        Path(f"{path}.{keep}").unlink(missing_ok=True)
        for number in range(keep - 1, 0, -1):
            older = Path(f"{path}.{number}")
            if older.exists():
                older.replace(Path(f"{path}.{number + 1}"))
        shutil.copyfile(path, Path(f"{path}.1"))
    os.truncate(path, 0)
    return True


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `host:port` now (SO_REUSEADDR, as servers do, so connections
    lingering in TIME_WAIT do not count as taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()
            if len(columns) > 9 and columns[3] == "0A" and int(columns[1].rpartition(":")[2], 16) == port:
                inodes.add(columns[9])
    return inodes


def port_holder(port: int) -> str | None:
    """Which process listens on `port` ("pid 123 (python3 -m http.server)"), when /proc tells us."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            descriptors = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue  # gone, or another user's process
        for descriptor in descriptors:
            try:
                if os.readlink(f"/proc/{entry.name}/fd/{descriptor}") in targets:
                    command = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                    return f"pid {entry.name} ({command.decode('utf-8', 'replace')[:80]})"
            except OSError:
                continue
    return "a process this user cannot see (another user's, or in another container)"


def _check_command(spec: ProcessSpec, argv: tuple[str, ...], environment: Mapping[str, str]) -> None:
    if not argv:
        raise RuntimeStartError(f"{spec.name}: the command is empty", "set the service's command")
    if not spec.cwd.is_dir():
        raise RuntimeStartError(
            f"{spec.name}: working directory {spec.cwd} does not exist", "create it or fix the service's directory"
        )
    program = argv[0]
    if "/" in program:
        path = spec.cwd / program
        if not path.exists():
            raise RuntimeStartError(
                f"{spec.name}: command not found: {program}", f"no such file (relative to {spec.cwd})"
            )
        if path.is_dir() or not os.access(path, os.X_OK):
            raise RuntimeStartError(f"{spec.name}: {program} is not executable", f"chmod +x {program}")
    elif shutil.which(program, path=environment.get("PATH", os.defpath)) is None:
        raise RuntimeStartError(
            f"{spec.name}: command not found: {program}", "install it or use its full path in the service's command"
        )


def _check_port(spec: ProcessSpec) -> None:
    if spec.port is None or port_is_free(spec.port, "0.0.0.0"):
        return
    holder = port_holder(spec.port)
    raise RuntimeStartError(
        f"{spec.name}: port {spec.port} is already in use" + (f" by {holder}" if holder else ""),
        "stop whatever holds it or choose another port for this slot",
    )


def start_process(spec: ProcessSpec, settle_seconds: float = 0.3) -> RunningProcess:
    """Start `spec` detached (own session and process group), its output appended to its log, and
    make sure it survives `settle_seconds`. Raises RuntimeStartError, leaving nothing running, when
    the command is missing, the port is taken or the process dies while settling."""
    argv = spec.resolved_argv()
    environment = spec.environment()
    _check_command(spec, argv, environment)
    _check_port(spec)
    try:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = spec.log_path.open("ab")
    except OSError as error:
        raise RuntimeStartError(
            f"{spec.name}: cannot open its log {spec.log_path}: {error.strerror}",
            "make the log directory writable by the user lockstep runs as",
        ) from error
    with log:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.write(f"--- lockstep: starting {spec.name} at {stamp} ---\n".encode())
        log.flush()
        own_output_from = log.tell()
        try:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=spec.cwd,
                start_new_session=True,
            )
        except FileNotFoundError as error:
            raise RuntimeStartError(
                f"{spec.name}: command not found: {argv[0]}", "install it or fix the path"
            ) from error
        except PermissionError as error:
            raise RuntimeStartError(f"{spec.name}: {argv[0]} is not executable", f"chmod +x {argv[0]}") from error
    started_at = time.time()
    stat = _read_stat(child.pid)
    process = RunningProcess(spec, child.pid, stat.start_ticks if stat else 0, started_at)
    with _children_lock:
        _children[child.pid] = (process.start_ticks, child)
    deadline = time.monotonic() + settle_seconds
    try:
        while settle_seconds > 0:
            if _ended_child_status(child) is not None:
                _fail_settling(spec, child, settle_seconds, own_output_from)
            if time.monotonic() >= deadline:
                break
            time.sleep(min(_POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
    except BaseException as error:
        if not isinstance(error, RuntimeStartError):  # interrupted (Ctrl-C): leave nothing running
            _kill_group_and_wait(child)
        raise
    return process


def _kill_group_and_wait(child: subprocess.Popen[bytes]) -> int:
    """SIGKILL a child's whole group (safe: the child is not reaped yet) and collect the child."""
    _signal_group(child.pid, signal.SIGKILL)
    code = child.wait()
    with _children_lock:
        _children.pop(child.pid, None)
    return code


def _fail_settling(spec: ProcessSpec, child: subprocess.Popen[bytes], settle_seconds: float, offset: int) -> NoReturn:
    # Children it forked would keep running in its group: end them before reporting.
    code = _kill_group_and_wait(child)
    tail = _output_since(spec.log_path, offset, 10)
    shown = "\n".join("    " + line for line in tail.splitlines())
    raise RuntimeStartError(
        f"{spec.name}: {describe_exit(code)} within {settle_seconds:g} s of starting (log: {spec.log_path})",
        "fix the cause shown in its last log lines, or run the command by hand in "
        f"{spec.cwd} to see why it stops" + (f":\n{shown}" if shown else " (it wrote nothing)"),
    )


def _output_since(path: Path, offset: int, lines: int) -> str:
    """The last `lines` lines written to `path` after `offset` (this run's output, not earlier runs')."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").rstrip("\n").splitlines()[-lines:])
