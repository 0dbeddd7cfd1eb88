"""The hosts of a multi-host environment and how lockstep reaches them over SSH.

An environment that lists `hosts` is deployed by an orchestrator (the machine running `lockstep
deploy`) that drives `lockstep deploy` on every host over SSH, switching all hosts or none. Each host
has its own checkout with its own lockstep.toml (`project_dir`) and its own agent; all of them must
use the same repository, where the environment's lock and the pre-deploy snapshot live.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ADDRESS = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@:\s\[\]]+)(?::(?P<port>\d{1,5}))?$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SshConfig(_Section):
    """How the orchestrator connects to each host: host keys are always checked."""

    user: str | None = Field(
        default=None,
        description="User to log in as, unless a host entry names one (user@host); default: the local user.",
        examples=["deploy"],
    )
    port: int = Field(
        default=22, ge=1, le=65535, description="SSH port, unless a host entry names one.", examples=[2222]
    )
    identity_file: Path | None = Field(
        default=None,
        description="Private key to log in with; default: the SSH agent and ~/.ssh's default keys.",
        examples=["~/.ssh/deploy_ed25519"],
    )
    known_hosts: Path | None = Field(
        default=None,
        description=(
            "known_hosts file the hosts' keys are checked against (default ~/.ssh/known_hosts). A host whose "
            "key is unknown or different is refused: add its key there first (ssh-keyscan, then compare)."
        ),
        examples=["~/.ssh/known_hosts"],
    )
    connect_timeout: float = Field(
        default=15.0, gt=0, description="Seconds to wait for a host to answer and log us in.", examples=[30.0]
    )
    project_dir: str | None = Field(
        default=None,
        description=(
            "The directory on each host holding its git checkout and its own lockstep.toml (required with hosts, "
            "unless every host entry sets its own)."
        ),
        examples=["/srv/shop"],
    )
    command: str = Field(
        default="lockstep",
        description="How to run lockstep on the hosts (a shell command prefix, run in project_dir).",
        examples=["/opt/lockstep/bin/lockstep"],
    )

    def resolved(self, base: Path) -> SshConfig:
        """Local paths (the key, known_hosts) relative to the config's directory, `~` expanded."""
        update = {}
        for name in ("identity_file", "known_hosts"):
            value = getattr(self, name)
            if value is not None:
                path = Path(os.path.expanduser(value))
                update[name] = path if path.is_absolute() else base / path
        return self.model_copy(update=update)


class HostConfig(_Section):
    """A host written as a table, to set what differs from [ssh] for it."""

    address: str = Field(description="[user@]host[:port]", examples=["deploy@web1.example.com"])
    port: int | None = Field(default=None, ge=1, le=65535, description="SSH port of this host.", examples=[2222])
    project_dir: str | None = Field(default=None, description="This host's project directory.", examples=["/srv/shop"])

    @field_validator("address")
    @classmethod
    def _check_address(cls, address: str) -> str:
        parse_address(address)
        return address


def parse_address(address: str) -> tuple[str | None, str, int | None]:
    """(user, host, port) of `[user@]host[:port]`; raises ValueError saying the form."""
    match = _ADDRESS.match(address.strip())
    if match is None:
        raise ValueError(f"not a host address: {address!r}; write [user@]host[:port], e.g. deploy@web1.example.com")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"the port of {address!r} is out of range")
    return match["user"], match["host"].strip("[]"), port


@dataclass(frozen=True)
class HostTarget:
    """One host as the orchestrator reaches it: everything resolved."""

    name: str  # as written in the config: how messages name the host
    host: str
    port: int
    user: str | None
    project_dir: str


def host_targets(hosts: list[str | HostConfig], ssh: SshConfig) -> list[HostTarget]:
    """The environment's hosts, [ssh] filling what an entry does not say; the first is the primary."""
    targets = []
    for entry in hosts:
        address = entry if isinstance(entry, str) else entry.address
        user, host, port = parse_address(address)
        if isinstance(entry, HostConfig) and entry.port is not None:
            port = entry.port
        project_dir = entry.project_dir if isinstance(entry, HostConfig) and entry.project_dir else ssh.project_dir
        if not project_dir:
            raise ValueError(f"host {address}: no project_dir; set ssh.project_dir or the host's own project_dir")
        targets.append(
            HostTarget(name=address, host=host, port=port or ssh.port, user=user or ssh.user, project_dir=project_dir)
        )
    places = [(target.host, target.port, target.project_dir) for target in targets]
    duplicates = sorted({target.name for target, place in zip(targets, places, strict=True) if places.count(place) > 1})
    if duplicates:
        raise ValueError(f"hosts lists {', '.join(duplicates)} more than once (same host, port and project_dir)")
    names = [target.name for target in targets]
    # Two project directories on one machine (a staging pair, the tests): named apart by directory.
    return [
        target if names.count(target.name) == 1 else replace(target, name=f"{target.name}:{target.project_dir}")
        for target in targets
    ]
