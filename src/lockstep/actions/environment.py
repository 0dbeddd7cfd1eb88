"""Load the project and pick the environment a deploy-side command works on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lockstep.actions.snapshot_create import ProjectContext, load_project
from lockstep.agent.client import AgentClient, agent_wait_seconds
from lockstep.config import ProjectConfig
from lockstep.layout import EnvironmentLayout


@dataclass(frozen=True)
class EnvironmentContext:
    """A project loaded for one environment: config merged for it, its paths, its agent."""

    project: ProjectContext
    environment: str
    layout: EnvironmentLayout
    config_path: Path | None

    @property
    def config(self) -> ProjectConfig:
        return self.project.config

    @property
    def directory(self) -> Path:
        return self.project.directory

    def agent(self, wait_for_restart: bool = False) -> AgentClient:
        """The environment's agent. `wait_for_restart` (deploy, rollback): a request waits up to
        LOCKSTEP_AGENT_WAIT seconds for an agent that is not answering, when an agent has run
        here before (its database exists); `status`, `doctor` and a first deploy fail at once."""
        hint = f" -c {self.config_path}" if self.config_path is not None else ""
        wait = agent_wait_seconds() if wait_for_restart and self.layout.agent_database.exists() else 0.0
        return AgentClient(self.layout.agent_socket, self.environment, hint, wait_seconds=wait)


def load_environment(start: Path, config_path: Path | None, environment: str | None) -> EnvironmentContext:
    """The project for `environment`, or for the config's default_environment when None.

    Raises UsageError for a name that is neither under [environments] nor the default."""
    base = load_project(start, config_path, None)
    name = environment or base.config.default_environment
    base.config.check_environment(name)
    project = load_project(start, config_path, name) if name in base.config.environments else base
    layout = EnvironmentLayout.for_config(project.config, project.directory, name)
    return EnvironmentContext(project=project, environment=name, layout=layout, config_path=config_path)


def snapshot_environments(context: EnvironmentContext) -> set[str]:
    """The environment names this environment's snapshots carry: its own (deploys, `backup --env`),
    and `default` when it has no [environments.NAME] table, since then `lockstep backup` without
    --env and the agent's scheduled backups snapshot exactly its databases under that name."""
    from lockstep.pipeline.snapshot import DEFAULT_ENVIRONMENT

    base = load_project(context.directory, context.config_path, None)
    names = {context.environment}
    if context.environment not in base.config.environments:
        names.add(DEFAULT_ENVIRONMENT)
    return names
