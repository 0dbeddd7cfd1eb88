"""Where one environment's files live on this machine: releases, shared files, agent, history.

Everything sits under `<app.state_directory>/<environment>/`, so two environments (or two apps)
on one machine never share a release directory, a slot or an agent.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lockstep.config import ProjectConfig
from lockstep.errors import UsageError
from lockstep.unix_sockets import DEFAULT_MARGIN, fits_in_socket_address, short_socket_location

_ENVIRONMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class EnvironmentLayout:
    """Paths of one environment's state directory."""

    root: Path
    environment: str

    @classmethod
    def for_config(cls, config: ProjectConfig, project_directory: Path, environment: str) -> EnvironmentLayout:
        """The layout for `environment`, from the config's app.state_directory."""
        if not _ENVIRONMENT_NAME.match(environment):
            raise UsageError(
                f"environment name {environment!r} is not usable", "use letters, digits, - and _ (e.g. production)"
            )
        state = Path(os.path.expanduser(config.app.state_directory))  # `~/x`: in the home
        if not state.is_absolute():
            state = project_directory / state
        return cls(root=state / environment, environment=environment)

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def proxy(self) -> Path:
        return self.root / "traffic"

    @property
    def agent_database(self) -> Path:
        return self.root / "agent.db"

    @property
    def history_database(self) -> Path:
        return self.root / "history.db"

    @property
    def agent_socket(self) -> Path:
        """The agent's unix socket; in the temp directory when the state path is too long for one."""
        path = self.root / "agent.sock"
        if fits_in_socket_address(path, margin=DEFAULT_MARGIN):
            return path
        return short_socket_location(self.root, "agent").with_suffix(".sock")

    def release_directory(self, release_id: str) -> Path:
        return self.releases / release_id

    def create(self) -> None:
        """Make the directories (private to the user: releases may hold secrets)."""
        for directory in (self.root, self.releases, self.shared, self.logs, self.proxy):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
