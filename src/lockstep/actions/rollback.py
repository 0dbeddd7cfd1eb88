"""`lockstep rollback`: load the environment and run the rollback pipeline."""

from __future__ import annotations

from pathlib import Path

from lockstep.actions.environment import load_environment
from lockstep.errors import UsageError
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.rollback import Rollback, RollbackRequest
from lockstep.pipeline.rollback_plan import RollbackPlan, plan_rollback
from lockstep.pipeline.steps import Reporter


def rollback(
    start: Path, config_path: Path | None, environment: str | None, request: RollbackRequest, reporter: Reporter
) -> OperationRecord:
    """Roll back; raises DeployRolledBack (exit 3) when it failed but the previous state serves."""
    context = load_environment(start, config_path, environment)
    if context.config.hosts and request.coordinated is None:
        from lockstep.pipeline.multi_host_rollback import MultiHostRollback

        return MultiHostRollback(context, request, reporter).run()
    return Rollback(context, request, reporter).run()


def plan(start: Path, config_path: Path | None, environment: str | None, request: RollbackRequest) -> RollbackPlan:
    """The rollback's plan, changing nothing (--dry-run); refused where the rollback would be.

    Not for an environment with `hosts`: its plan is every host's, which only each host can
    say (its slots, its warm release), and asking them over SSH is a rollback's preflight."""
    context = load_environment(start, config_path, environment)
    if context.config.hosts and request.coordinated is None:
        raise UsageError(
            f"rollback --dry-run does not plan a rollback of several hosts ({context.environment} lists hosts)",
            "see `lockstep history` and each host's `lockstep status` for what a rollback goes back to",
        )
    return plan_rollback(context, request)
