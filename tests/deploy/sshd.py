"""A real OpenSSH server on a loopback port, for multi-host deploys: its own host key, one
authorized client key, root login by key only, and the test's PYTHONPATH for the sessions (so the
`lockstep` the hosts run is the code under test)."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import missing

SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshServer:
    port: int
    host_public_key: str  # "ssh-ed25519 AAAA..."
    process: subprocess.Popen[bytes]
    log: Path

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def require_sshd() -> None:
    if not SSHD.exists() or not Path("/usr/bin/ssh-keygen").exists():
        missing("OpenSSH's sshd is not installed (apt-get install openssh-server)")


def client_key(directory: Path) -> Path:
    """A fresh ed25519 key pair for the orchestrator; returns the private key's path."""
    key = directory / "client_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def start_sshd(
    directory: Path, port: int, authorized_key: Path, environment: dict[str, str] | None = None
) -> SshServer:
    """sshd -D on 127.0.0.1:port; session processes get this process's PYTHONPATH, and
    `environment` (a fault injection point for this host alone, say)."""
    directory.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    host_key = directory / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = directory / "authorized_keys"
    authorized.write_text(authorized_key.with_suffix(".pub").read_text())
    variables = ["LOCKSTEP_SCRYPT_N=1024", *(f'{name}="{value}"' for name, value in (environment or {}).items())]
    if os.environ.get("PYTHONPATH"):
        variables.append(f"PYTHONPATH={os.environ['PYTHONPATH']}")
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {directory / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                f"AllowUsers {getpass.getuser()}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                f"SetEnv {' '.join(variables)}",
                "",
            ]
        )
    )
    log = directory / "sshd.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=output, stderr=output)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sshd exited: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError(f"sshd did not listen on {port}: {log.read_text()}")
    public = (directory / "ssh_host_ed25519_key.pub").read_text().split()
    return SshServer(port=port, host_public_key=f"{public[0]} {public[1]}", process=process, log=log)
