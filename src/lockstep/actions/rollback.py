"""`lockstep rollback`: load the environment and run the rollback pipeline."""

from __future__ import annotations

from pathlib import Path

from lockstep.actions.environment import load_environment
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

    With `hosts`, the plan of the rollback of every host, from this machine's history: no host
    is contacted (pipeline/multi_host_rollback_plan.py)."""
    context = load_environment(start, config_path, environment)
    if context.config.hosts and request.coordinated is None:
        from lockstep.pipeline.multi_host_rollback_plan import plan_fleet_rollback

        return plan_fleet_rollback(context, request)
    return plan_rollback(context, request)
