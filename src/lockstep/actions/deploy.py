"""`lockstep deploy`: load the environment and run the deployment pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lockstep.actions.environment import load_environment
from lockstep.errors import UsageError
from lockstep.pipeline.deploy import Deployment, DeployRequest
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.steps import Reporter, SilentReporter


def deploy(
    start: Path, config_path: Path | None, environment: str | None, request: DeployRequest, reporter: Reporter
) -> OperationRecord:
    """Deploy; raises DeployRolledBack (exit 3) or DeployFailed (exit 1) when it does not succeed."""
    context = load_environment(start, config_path, environment)
    if context.config.hosts and request.coordinated is None:
        from lockstep.pipeline.multi_host import MultiHostDeployment

        return MultiHostDeployment(context, request, reporter).run()
    if request.hold_only:
        if request.coordinated is None:
            raise UsageError("--hold-only is a host's part of a multi-host deploy", "it needs --coordinated")
        return Deployment(context, request, reporter).hold_only()
    return Deployment(context, request, reporter).run()


def preflight_host(
    start: Path, config_path: Path | None, environment: str | None, request: DeployRequest, reporter: Reporter
) -> dict[str, Any]:
    """A host's preflight for the orchestrator of a multi-host deploy: changes nothing."""
    context = load_environment(start, config_path, environment)
    return Deployment(context, request, reporter).preflight_only()


def plan_deploy(start: Path, config_path: Path | None, environment: str | None, request: DeployRequest) -> list[str]:
    """The complete plan of a deploy, changing nothing (--dry-run)."""
    context = load_environment(start, config_path, environment)
    if context.config.hosts and request.coordinated is None:
        from lockstep.pipeline.multi_host import plan_lines

        return plan_lines(context, request)

    return Deployment(context, request, SilentReporter()).plan()
