"""`lockstep status` and `lockstep history`: what serves where, and what happened before."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lockstep.actions.environment import EnvironmentContext, load_environment
from lockstep.agent.client import AgentUnavailable
from lockstep.errors import LockstepError
from lockstep.health.checks import run_check
from lockstep.pipeline.deploy import clean_up_abandoned
from lockstep.pipeline.environment_lock import describe_holder, judge_staleness, read_blocking_holder
from lockstep.pipeline.history import History, OperationRecord
from lockstep.pipeline.paused_workers_retry import paused_workers_document, retry_paused_workers
from lockstep.pipeline.release_launch import plan_components, runs_workers_only
from lockstep.pipeline.steps import Reporter
from lockstep.pipeline.unfinished_retire import finish_unfinished_retires
from lockstep.repository.documents import DocumentStore


def _lock_document(context: EnvironmentContext) -> dict[str, Any]:
    try:
        store = DocumentStore(context.project.access.open(load_index=False))
        holder = read_blocking_holder(store, context.project.name, context.environment)
    except LockstepError as error:
        return {"state": "unknown", "detail": str(error)}
    if holder is None:
        return {"state": "unlocked"}
    stale, reason = judge_staleness(holder, context.config.deploy.lock_stale_after)
    return {
        "state": "stale" if stale else "locked",
        "detail": describe_holder(holder) + f" ({reason})",
        "holder": holder.to_document(),
    }


def environment_status(
    start: Path, config_path: Path | None, environment: str | None, reporter: Reporter, local: bool = False
) -> dict[str, Any]:
    """The environment's URL, active slot, release, commit, since when, health, lock, last operation.

    An app of workers only (no component with a port configured, none running in the active
    slot) has no URL: `url` is None and `workers_only` true.

    With `hosts` in the environment, each host's own status over SSH, unless `local`: what a host
    answers (its checkout may hold the same lockstep.toml, hosts and all)."""
    context = load_environment(start, config_path, environment)
    history = History(context.layout.history_database)
    if context.config.hosts and not local:
        return _hosts_status(context, history)
    agent = context.agent()
    document: dict[str, Any] = {
        "environment": context.environment,
        "project": context.project.name,  # a multi-host rollback checks the hosts' is the orchestrator's
        "url": f"http://{context.config.traffic.listen}/",
        "lock": _lock_document(context),
        # No component has a port: the proxy never gets traffic, deployed or not (cli/status.py).
        "workers_only": runs_workers_only(context.config, None),
        # No [app.components] at all: a project that only takes snapshots and backups.
        "app_configured": bool(context.config.app.components),
    }
    try:
        status = agent.status()
    except AgentUnavailable as error:
        document["agent"] = {"running": False, "detail": str(error)}
        status = None
    if status is not None:
        abandoned = history.abandoned()
        for record in abandoned:
            clean_up_abandoned(context, record, agent, history, reporter)
        finished = finish_unfinished_retires(context, agent, history, reporter)
        finished += retry_paused_workers(context, agent, history, reporter)
        if abandoned or finished:  # the clean-up stopped (or started) processes: show the slots as they are now
            status = agent.status()
        document["agent"] = {"running": True, **status["agent"]}
        active = status.get("active_slot")
        document["active_slot"] = active
        document["traffic"] = status["traffic"]
        slots = {}
        for slot, slot_status in status["slots"].items():
            release = slot_status["release"]
            release_id = release["release_id"] if release else None
            slots[slot] = {
                "release": release_id,
                # Per component: a `rollback --component worker` runs an older release in this slot.
                "components": {
                    process["component"]: process.get("release") or release_id for process in slot_status["processes"]
                },
                "version": release["version"] if release else None,
                "since": release["started_at"] if release else None,
                "processes": slot_status["processes"],
                "stopped": _stopped_components(slot_status) if slot == active else [],
                "health": _health(context, slot, release) if release else {},
            }
        document["slots"] = slots
        if active:
            document["release"] = slots[active]["release"]
            document["commit"] = slots[active]["version"]
            document["workers_only"] = runs_workers_only(context.config, slots[active]["processes"])
    if document["workers_only"]:
        document["url"] = None  # nothing answers at the proxy's address: no URL to offer
    operations = history.all()
    # Workers a data restore stopped that did not start again: why, and when the agent tries again.
    document["paused_workers"] = paused_workers_document(operations)
    releases = [record for record in operations if not record.operation.startswith("scheduled-")]
    document["last_operation"] = releases[-1].to_document() if releases else None
    scheduled = [record for record in operations if record.operation.startswith("scheduled-")]
    document["last_scheduled_job"] = scheduled[-1].to_document() if scheduled else None
    serving = [record for record in releases if record.outcome == "succeeded" and record.release_id]
    document["serving_since"] = serving[-1].finished_at if serving else None
    return document


def _hosts_status(context: EnvironmentContext, history: History) -> dict[str, Any]:
    """A multi-host environment: each host's own status over SSH, the lock, the last deploy here."""
    from lockstep.pipeline.multi_host import host_statuses

    operations = history.all()
    return {
        "environment": context.environment,
        "project": context.project.name,
        "lock": _lock_document(context),
        "hosts": host_statuses(context),
        "last_operation": operations[-1].to_document() if operations else None,
    }


def _stopped_components(slot_status: dict[str, Any]) -> list[str]:
    """The components of the active release that the agent does not run at all (not even crashed
    and given up on): stopped, as a data restore stops its workers (pipeline/worker_pause.py).
    Its process list alone showed the rest running, and nothing of what was missing."""
    release = slot_status.get("release") or {}
    launched = [str(launch.get("component")) for launch in release.get("components") or []]
    running = {process["component"] for process in slot_status.get("processes") or []}
    return sorted(set(launched) - running)


def _health(context: EnvironmentContext, slot: str, release: dict[str, Any]) -> dict[str, str]:
    plans = plan_components(context.config, Path(release["release_directory"]), context.layout.shared, slot)
    results = {}
    for plan in plans:
        if plan.health is None:
            continue
        result = run_check(plan.health)
        results[plan.name] = "healthy" if result.ok else f"unhealthy: {result.reason}"
    return results


def operation_history(start: Path, config_path: Path | None, environment: str | None) -> list[OperationRecord]:
    """Every deploy and rollback of the environment, oldest first."""
    context = load_environment(start, config_path, environment)
    return History(context.layout.history_database).all()


def age(seconds_since_epoch: float | None) -> str:
    if seconds_since_epoch is None:
        return ""
    seconds = max(0.0, time.time() - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"
