"""The one place lockstep starts other programs.

Commands are argv lists (never a shell), so they can be printed in a plan and asserted in
tests; secrets travel in the environment or on stdin, never in argv.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from lockstep.errors import SourceError, UsageError

# The repository password is lockstep's alone: a backup source such as `env` or a misbehaving
# dump tool must not be able to copy it into a snapshot or a log, nor run the command (or read the
# file) that gives it.
WITHHELD_VARIABLES = frozenset(
    {
        "LOCKSTEP_PASSWORD",
        "LOCKSTEP_PASSWORD_FILE",
        "LOCKSTEP_PASSWORD_COMMAND",
        # `repo copy`'s source repository (restic's RESTIC_FROM_* set).
        "LOCKSTEP_FROM_PASSWORD",
        "LOCKSTEP_FROM_PASSWORD_FILE",
        "LOCKSTEP_FROM_PASSWORD_COMMAND",
    }
)


@dataclass(frozen=True)
class Command:
    """An external command as data."""

    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None  # added to lockstep's own environment
    cwd: str | None = None

    @classmethod
    def parse(cls, text: str) -> Command:
        """Split a command line the way a shell would, without running a shell."""
        try:
            argv = shlex.split(text)
        except ValueError as error:
            raise UsageError(f"cannot parse command {text!r}: {error}") from error
        if not argv:
            raise UsageError("the command is empty")
        return cls(tuple(argv))

    def display(self) -> str:
        return shlex.join(self.argv)

    def _environment(self) -> dict[str, str]:
        """lockstep's environment without its own secrets, plus the command's additions; HOME
        from the password database when lockstep has none (see `home_when_unset`)."""
        inherited = {name: value for name, value in os.environ.items() if name not in WITHHELD_VARIABLES}
        if "HOME" not in inherited and (home := home_when_unset()) is not None:
            inherited["HOME"] = home
        return {**inherited, **(self.env or {})}


def home_when_unset() -> str | None:
    """The user's home directory from the password database.

    Some schedulers start jobs without HOME (systemd system services without User=, `env -i`
    wrappers, some crons). lockstep itself copes, but the tools it runs read their per-user
    settings from $HOME: `pass` its store and gpg its keys (a password command), git its
    ~/.gitconfig, the MariaDB client ~/.my.cnf. Without HOME they fail, or silently behave
    otherwise than in the user's shell; with the login's home they behave as there."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir or None
    except (ImportError, KeyError):
        return None


def run_capture(command: Command, timeout: float = 60.0, errors: str = "replace") -> str:
    """Run to completion and return stdout (bytes that are not UTF-8 handled as `errors` says);
    a non-zero exit raises SourceError with stderr's end."""
    try:
        completed = subprocess.run(
            list(command.argv),
            capture_output=True,
            timeout=timeout,
            env=command._environment(),
            cwd=command.cwd,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as error:
        raise SourceError(f"command not found: {command.argv[0]}", "install it or fix the path") from error
    except subprocess.TimeoutExpired as error:
        raise SourceError(f"{command.argv[0]} did not finish within {timeout:.0f} s") from error
    if completed.returncode != 0:
        detail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise SourceError(
            f"{command.argv[0]} exited with code {completed.returncode}" + (": " + " / ".join(detail) if detail else "")
        )
    return completed.stdout.decode("utf-8", errors)


def _popen(command: Command, stdin: int, hint: str, bufsize: int) -> subprocess.Popen[bytes]:
    """Start `command` with stdout and stderr as pipes; a missing or non-executable program is a
    SourceError that names it."""
    try:
        return subprocess.Popen(
            list(command.argv),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=command._environment(),
            cwd=command.cwd,
            bufsize=bufsize,
        )
    except FileNotFoundError as error:
        raise SourceError(f"command not found: {command.argv[0]}", hint) from error
    except PermissionError as error:
        raise SourceError(f"command is not executable: {command.argv[0]}") from error


def start_piped(
    command: Command, hint: str = "install it or fix the path", buffered: bool = True
) -> subprocess.Popen[bytes]:
    """Start a command with stdin, stdout and stderr all pipes, for callers that talk to it
    both ways (a `mariadb` session, pg_restore turning an archive into COPY text)."""
    return _popen(command, subprocess.PIPE, hint, -1 if buffered else 0)


def enlarge_pipe(pipe: IO[bytes], size: int) -> None:
    """Ask for a pipe buffer of `size` bytes instead of 64 KiB, so a writer and its reader wake
    each other less often. Linux-only and best effort: elsewhere the pipe stays as it was."""
    with contextlib.suppress(AttributeError, OSError):
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, size)


STREAM_PIPE_BYTES = 1 << 20  # at most /proc/sys/fs/pipe-max-size for unprivileged users (1 MiB)


class BatchingPipeReader(io.RawIOBase):
    """A pipe read in pieces of at least BATCH_BYTES (or up to its end), not as the writer wrote.

    pg_dump writes its archive 4 KiB at a time, and a reader that takes whatever is there takes
    4 KiB per read: ~250,000 reads per GB, each through the stream layers above in Python. After
    a short read this waits a moment for the pipe (1 MiB, a few milliseconds of a dump) to fill
    instead, so the layers above see a few thousand reads."""

    BATCH_BYTES = 256 << 10
    WAIT_SECONDS = 0.001

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__()
        self._pipe = pipe

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._pipe.fileno()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self.BATCH_BYTES)
        filled = 0
        while True:
            count: int = self._pipe.readinto(view[filled:]) or 0  # type: ignore[attr-defined]
            if not count:
                return filled
            filled += count
            if filled >= wanted:
                return filled
            time.sleep(self.WAIT_SECONDS)

    def close(self) -> None:
        self._pipe.close()
        super().close()


class StreamingProcess:
    """A command whose stdout is read as a stream; `finish()` checks how it ended.

    `failure_hint` is what its failure tells the user to do: for a command the user wrote
    (`repo backup --stdin-from-command`), fix it; a database adapter's dump tool says what to check
    of the database instead, since the user wrote no command."""

    failure_hint = "fix the command and run the backup again"

    def __init__(self, command: Command, failure_hint: str | None = None) -> None:
        self.command = command
        if failure_hint is not None:
            self.failure_hint = failure_hint
        self._process = _popen(command, subprocess.DEVNULL, "install it or fix the path", 0)
        assert self._process.stdout is not None
        # A dump tool and its reader wake each other 16 times less than through 64 KiB (about
        # 8 % less system time for `snapshot create`).
        enlarge_pipe(self._process.stdout, STREAM_PIPE_BYTES)
        self.stdout: IO[bytes] = BatchingPipeReader(self._process.stdout)  # type: ignore[assignment]
        self._stderr_tail = b""
        import threading

        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()

    def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr_tail = (self._stderr_tail + line)[-4096:]

    def finish(self) -> None:
        """Wait for the command; a non-zero exit raises SourceError naming it and its last words."""
        code = self._process.wait()
        self._stderr_reader.join(timeout=5)
        if code != 0:
            lines = self._stderr_tail.decode("utf-8", "replace").strip().splitlines()[-3:]
            reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise SourceError(
                f"{self.command.argv[0]} {reason}; no snapshot was written"
                + (": " + " / ".join(lines) if lines else ""),
                self.failure_hint,
            )

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def run_with_input(command: Command, source: IO[bytes], hint: str | None = None) -> None:
    """Run to completion feeding `source` to its stdin (a restore: `pg_restore`, `mariadb`).

    stdout is discarded; a non-zero exit raises SourceError with stderr's end. If reading
    `source` fails, the command is killed rather than shown an end of input, so it cannot take
    a truncated dump for a whole one (what it already applied stays applied).
    """
    import threading

    try:
        process = subprocess.Popen(
            list(command.argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=command._environment(),
            cwd=command.cwd,
        )
    except FileNotFoundError as error:
        raise SourceError(f"command not found: {command.argv[0]}", "install it or fix the path") from error
    assert process.stdin is not None and process.stderr is not None
    stderr = process.stderr
    tail: list[bytes] = [b""]

    def drain() -> None:
        for line in stderr:
            tail[0] = (tail[0] + line)[-4096:]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        while block := source.read(1024 * 1024):
            process.stdin.write(block)
    except BrokenPipeError:
        pass  # the command stopped reading: its exit code and stderr say why
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    code = process.wait()
    reader.join(timeout=5)
    if code != 0:
        lines = tail[0].decode("utf-8", "replace").strip().splitlines()[-3:]
        reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise SourceError(f"{command.argv[0]} {reason}" + (": " + " / ".join(lines) if lines else ""), hint)


def command_from_argv(argv: Sequence[str]) -> Command:
    if not argv:
        raise UsageError(
            "--stdin-from-command needs a command after --",
            "e.g. lockstep repo backup --stdin-from-command -- pg_dump shop",
        )
    return Command(tuple(argv))


def run_to_file(command: Command, path: str | os.PathLike[str], timeout: float = 600.0) -> None:
    """Run to completion with stdout written to `path` (e.g. `git archive`); failure raises SourceError."""
    with open(path, "wb") as output:
        try:
            completed = subprocess.run(
                list(command.argv),
                stdout=output,
                stderr=subprocess.PIPE,
                timeout=timeout,
                env=command._environment(),
                cwd=command.cwd,
                check=False,
            )
        except FileNotFoundError as error:
            raise SourceError(f"command not found: {command.argv[0]}", "install it or fix the path") from error
        except subprocess.TimeoutExpired as error:
            raise SourceError(f"{command.argv[0]} did not finish within {timeout:.0f} s") from error
    if completed.returncode != 0:
        lines = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise SourceError(f"{command.argv[0]} exited with code {completed.returncode}: " + " / ".join(lines))


@dataclass(frozen=True)
class CommandOutcome:
    """How a user's command (build, migration, hook, smoke test) ended, with its combined output."""

    returncode: int | None  # None: it did not start, or timed out
    output: str  # stdout and stderr interleaved, the last 64 KiB
    seconds: float
    problem: str | None = None  # why it did not run or finish

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe_failure(self, lines: int = 10) -> str:
        """One paragraph: what went wrong and the end of the output."""
        reason = self.problem if self.problem is not None else f"exited with code {self.returncode}"
        tail = "\n".join(self.output.strip().splitlines()[-lines:])
        return reason + (f"; its last output:\n{tail}" if tail else "")


@dataclass(frozen=True)
class CommandGroup:
    """A user's command running in a process group of its own: the leader's PID, which is the
    group's ID, and its start time in clock ticks after boot (/proc/PID/stat), so a PID reused
    by an unrelated process is never taken for it. A deploy stores it while the command runs:
    if the deploy is killed (SIGKILL, no unwinding), whoever cleans up can stop the orphan."""

    pid: int
    start_ticks: int | None

    def to_document(self) -> dict[str, int | None]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_document(cls, document: Mapping[str, object]) -> CommandGroup:
        pid, ticks = document.get("pid"), document.get("start_ticks")
        if not isinstance(pid, int) or pid <= 1:
            raise ValueError(f"not a process group: {document!r}")
        return cls(pid, ticks if isinstance(ticks, int) else None)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start ticks) of a process from /proc, None when it is not there."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # The command name (field 2) is in parentheses and may itself hold spaces and ")".
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[2]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[2]


def command_group_members(group: CommandGroup) -> list[int]:
    """The live (not zombie) processes of `group`; [] once it has ended.

    The leader alive with another start time means its PID was reused, and so the group is
    gone: Linux does not hand out a PID while a process group of that ID has members."""
    leader = _proc_stat(group.pid)
    alive = leader is not None and leader[0] not in ("Z", "X", "x")
    if alive and leader is not None and group.start_ticks is not None and leader[2] != group.start_ticks:
        return []
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == group.pid and stat[0] not in ("Z", "X", "x"):
                members.append(int(entry.name))
    return members


def groups_marked_with(variable: str, value: str) -> list[CommandGroup]:
    """The process groups of live processes whose environment holds `variable=value`.

    A deploy gives each user's command a mark of its own in its environment and records the
    mark before the command starts, while its process group can only be recorded once it has
    started: killed in between, the deploy leaves a command nobody knows the group of, and the
    mark finds it (and its children, which inherit it). Our own group is never among them: a
    `lockstep status` run by a hook carries the mark, and must not stop itself."""
    needle = f"{variable}={value}".encode()
    own_group = os.getpgrp()
    groups: dict[int, CommandGroup] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                marked = needle in handle.read().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        stat = _proc_stat(int(entry.name)) if marked else None
        if stat is None or stat[0] in ("Z", "X", "x") or stat[1] in (own_group, *groups):
            continue
        groups[stat[1]] = CommandGroup(stat[1], process_start_ticks(stat[1]))
    return list(groups.values())


def stop_command_group(group: CommandGroup, grace: float = 5.0) -> bool:
    """Stop what still runs of `group`: SIGTERM, then SIGKILL after `grace` seconds. True when
    something was still running (and is now stopped), False when the command had ended."""
    if not command_group_members(group):
        return False
    for signal_number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pid, signal_number)
        deadline = time.monotonic() + wait
        while command_group_members(group):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        else:
            return True
    if command_group_members(group):
        raise SourceError(
            f"process group {group.pid} still runs after SIGKILL",
            f"look at it with `ps -g {group.pid}` and stop it by hand",
        )
    return True


def run_user_command(
    command: Command, timeout: float = 3600.0, on_started: Callable[[CommandGroup], None] | None = None
) -> CommandOutcome:
    """Run a command from the user's config to completion; never raises for its failure.

    It runs in a process group of its own, and on a timeout, Ctrl-C or any other exception the
    whole group is killed: a hook such as `sh -c 'sleep 1000; notify'` left its `sleep` running
    when only the shell was killed. `on_started` learns the group as soon as it exists (a deploy
    records it, so the clean-up of a killed deploy can stop the command it orphaned)."""
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            list(command.argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=command._environment(),
            cwd=command.cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        return CommandOutcome(None, "", time.monotonic() - started, f"command not found: {command.argv[0]}")
    except PermissionError:
        return CommandOutcome(None, "", time.monotonic() - started, f"{command.argv[0]} is not executable")
    try:
        if on_started is not None:
            on_started(CommandGroup(process.pid, process_start_ticks(process.pid)))
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        try:
            stdout, _ = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a member left the group and keeps the pipe open
            stdout = b""
        output = stdout[-65536:].decode("utf-8", "replace")
        return CommandOutcome(None, output, time.monotonic() - started, f"did not finish within {timeout:.0f} s")
    except BaseException:
        _kill_group(process)
        raise
    output = stdout[-65536:].decode("utf-8", "replace")
    return CommandOutcome(process.returncode, output, time.monotonic() - started)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the command's whole process group (its own session), then reap the command."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


# /proc states of a process that has ended: zombie, dead ("x" in older kernels).
DEAD_STATES = frozenset({"Z", "X", "x"})


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host: the one test every "is it still
    there?" question uses (lock holders, history records, proxies and their pid files).

    - pid <= 0 names no single process (kill(0) reaches our own group, kill(-1) every process
      we may signal), so it is never alive: a lock or record with such a PID is not kept alive.
    - EPERM from kill(pid, 0) means the process exists but belongs to another user: alive.
    - A zombie (exited, waiting for its parent to collect it) or a dead task runs nothing and
      will never release what it holds: not alive. A process whose main thread exited while
      others still run shows the same state "Z" on its PID, so it counts as alive by its
      threads.
    - Without /proc to tell (not mounted), the signal check decides.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        signalable = False
    else:
        signalable = True
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
    except FileNotFoundError:
        # Gone since the signal check, unless /proc hides it (hidepid: another user's process)
        # or is not there at all.
        return not signalable or not os.path.isdir("/proc/self")
    except OSError:
        return True
    state = fields.get("State", "").split()
    if state and state[0] in DEAD_STATES:
        return _int_field(fields.get("Threads", "")) > 1
    return True


def _int_field(text: str) -> int:
    try:
        return int(text.split()[0])
    except (IndexError, ValueError):
        return 0
