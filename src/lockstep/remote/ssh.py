"""SSH to the hosts of a multi-host environment, with asyncssh: connect, run, copy a file.

Host keys are always checked against a known_hosts file: a host whose key is unknown or changed
is refused with a message naming it, never accepted silently (that would hand the deploy, and the
data it migrates, to whoever answers on that address). Errors come out as LockstepErrors that
name the host and say what to do.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockstep.config.hosts_model import HostTarget, SshConfig
from lockstep.errors import LockstepError, UsageError

KEEPALIVE_SECONDS = 15
KEEPALIVE_MISSES = 4


class HostUnreachable(LockstepError):
    """A host did not answer, refused the login, or the connection dropped."""


@dataclass(frozen=True)
class RemoteResult:
    exit_status: int | None  # -1 when a signal ended it
    stdout: str
    stderr: str
    exit_signal: str | None = None  # "SIGKILL"


def signal_name(exit_signal: Any) -> str | None:
    """asyncssh's exit_signal (name without SIG, core dumped, message, language) as "SIGKILL"."""
    if not exit_signal:
        return None
    name = str(exit_signal[0] if isinstance(exit_signal, (tuple, list)) else exit_signal)
    return name if name.startswith("SIG") else f"SIG{name}"


def ended_by(signal: str) -> str:
    """How a remote process ended by `signal` ended: "was killed by SIGKILL", "died of SIGSEGV"."""
    return "was killed by SIGKILL" if signal == "SIGKILL" else f"died of {signal}"


def known_hosts_path(ssh: SshConfig) -> Path:
    return ssh.known_hosts if ssh.known_hosts is not None else Path.home() / ".ssh" / "known_hosts"


def shell_command(target: HostTarget, ssh: SshConfig, lockstep_arguments: list[str]) -> str:
    """`cd PROJECT_DIR && exec LOCKSTEP ARGS...`, every argument quoted for the remote shell.

    `exec`: the lockstep process is the session's own, so closing the channel reaches it directly.
    ssh.command is the user's shell text (a path, or `env X=1 lockstep`): it is not quoted."""
    arguments = " ".join(shlex.quote(argument) for argument in lockstep_arguments)
    return f"cd {shlex.quote(target.project_dir)} && exec {ssh.command} {arguments}"


async def connect(target: HostTarget, ssh: SshConfig) -> Any:
    """An open asyncssh connection to `target`, its host key checked."""
    import asyncssh

    known_hosts = known_hosts_path(ssh)
    if not known_hosts.is_file():
        raise UsageError(
            f"host {target.name}: no known_hosts file at {known_hosts}, so its host key cannot be checked",
            "add the hosts' keys to it (ssh-keyscan HOST, then compare the fingerprints), or set ssh.known_hosts",
        )
    options: dict[str, Any] = {
        "port": target.port,
        "known_hosts": str(known_hosts),
        "connect_timeout": ssh.connect_timeout,
        "login_timeout": ssh.connect_timeout,
        "config": [],  # what lockstep.toml says, not whatever ~/.ssh/config adds
        # A host that vanishes without closing the connection (a partition) must count as lost
        # within a minute: until then the others wait at their barriers for its word.
        "keepalive_interval": KEEPALIVE_SECONDS,
        "keepalive_count_max": KEEPALIVE_MISSES,
    }
    if target.user:
        options["username"] = target.user
    if ssh.identity_file is not None:
        options["client_keys"] = [str(ssh.identity_file)]
        options["agent_path"] = None
    try:
        return await asyncssh.connect(target.host, **options)
    except asyncssh.HostKeyNotVerifiable as error:
        raise UsageError(
            f"host {target.name}: its host key is not trusted ({error.reason}); refusing to connect",
            f"if the key is right, add it to {known_hosts} (ssh-keyscan -p {target.port} {target.host}, "
            "after comparing the fingerprint with the host's own)",
        ) from None
    except asyncssh.PermissionDenied:
        raise UsageError(
            f"host {target.name}: the login as {target.user or 'the local user'} was refused",
            "check ssh.user, ssh.identity_file and the host's authorized_keys",
        ) from None
    except (OSError, TimeoutError, asyncssh.Error) as error:
        raise HostUnreachable(
            f"host {target.name} ({target.host}:{target.port}) is unreachable: {describe_error(error)}",
            "check the address, the port and that sshd runs there",
        ) from None


def describe_error(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error or type(error).__name__)


async def run(connection: Any, command: str, timeout: float | None = 600) -> RemoteResult:
    """Run a shell command on the host; its output, and exit status (None when the link dropped)."""
    import asyncssh

    try:
        completed = await connection.run(command, check=False, timeout=timeout)
    except (OSError, asyncssh.Error) as error:
        raise HostUnreachable(f"the connection dropped while running {command!r}: {describe_error(error)}") from None
    return RemoteResult(
        completed.exit_status, _text(completed.stdout), _text(completed.stderr), signal_name(completed.exit_signal)
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def upload(connection: Any, local: Path, remote: str) -> None:
    """Copy a local file to `remote` on the host over SFTP."""
    import asyncssh

    try:
        async with connection.start_sftp_client() as sftp:
            await sftp.put(str(local), remote)
    except (OSError, asyncssh.Error) as error:
        raise HostUnreachable(f"copying {local.name} to {remote} failed: {describe_error(error)}") from None
