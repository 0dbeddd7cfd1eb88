"""`lockstep rollback --dry-run` in an environment with `hosts`: the plan, no host contacted.

The target comes from the rollback's own decision (choose_fleet_target in
pipeline/multi_host_rollback.py) over this machine's history of multi-host operations, so the
plan names the release the rollback goes to and refuses where it would, with its exit code.
What the hosts serve, their slots and their databases belong to the hosts: asking them is the
rollback's preflight, over SSH, which a dry run does not do (as `deploy --dry-run`). So the
release it goes back from is the one this history says every host serves, and with --with-data
the plan names the snapshot the primary restores; what that discards is the primary's `snapshot
diff`, which the rollback shows before asking. An app of workers only (this machine's
lockstep.toml lists components, none with a port) has no traffic to hold: each host stops its
workers, as on one machine (pipeline/rollback_plan.py). It reads the history and the environment lock's
holder; it takes no lock and writes nothing.
"""

from __future__ import annotations

from typing import Any

from lockstep.actions.environment import EnvironmentContext
from lockstep.config.hosts_model import HostTarget
from lockstep.config.model import ProjectConfig
from lockstep.pipeline.history import History
from lockstep.pipeline.multi_host_rollback import check_fleet_request, choose_fleet_target, recorded_serving
from lockstep.pipeline.notifications import secrets_redactor
from lockstep.pipeline.rollback import RollbackRequest, RollbackTarget, refuse_if_never_deployed
from lockstep.pipeline.rollback_plan import RollbackPlan, lock_state
from lockstep.remote import ssh
from lockstep.wording import counted


def plan_fleet_rollback(context: EnvironmentContext, request: RollbackRequest) -> RollbackPlan:
    """Every step of the rollback of every host, or the refusal it would end with."""
    check_fleet_request(request)
    redactor = secrets_redactor(context)
    history = History(context.layout.history_database, redactor)
    refuse_if_never_deployed(history, context.environment)
    serving = recorded_serving(history)
    target = choose_fleet_target(history, serving.release_id if serving is not None else None, request)
    targets = context.config.host_targets()
    steps = _steps(context, request, target, targets, [record.id for record in history.abandoned()])
    current = serving.release_id if serving is not None else None
    release = target.release
    lines = [
        f"rollback {context.environment} on {counted(len(targets), 'host')} over SSH, all or none, from release "
        f"{current or '(none)'} (as this machine's history says every host serves it: the rollback first "
        f"checks that they do) to release {release.release_id} ({(release.commit or '')[:12]}, "
        f"{release.operation} {release.id})",
        "hosts: " + ", ".join(_describe_host(target, index == 0) for index, target in enumerate(targets)),
        *(f"{number}. {step}" for number, step in enumerate(steps, start=1)),
        _failure_line(request, current, workers_only(context.config)),
    ]
    lines = [redactor.redact(line) for line in lines]
    document: dict[str, Any] = {
        "environment": context.environment,
        "component": None,
        "from": {"release_id": current, "commit": serving.commit if serving is not None else None},
        "to": {"release_id": release.release_id, "commit": release.commit, "operation_id": release.id},
        "with_data": request.with_data,
        "data": (
            {"snapshot_id": target.data_snapshot_id, "restored_by": targets[0].name} if request.with_data else None
        ),
        "hosts": [
            {"name": target.name, "project_dir": target.project_dir, "role": "primary" if index == 0 else "secondary"}
            for index, target in enumerate(targets)
        ],
        "steps": [redactor.redact(step) for step in steps],
        "plan": lines,
    }
    return RollbackPlan(lines=lines, document=document)


def workers_only(config: ProjectConfig) -> bool:
    """Whether the app is known to be of workers only: each host's rollback then holds no traffic.
    This machine's lockstep.toml may not describe the app at all (each host has its own): one
    without components says nothing, and the plan keeps the hold a host with traffic takes."""
    components = config.app.components
    return bool(components) and not any(component.ports for component in components.values())


def _describe_host(target: HostTarget, primary: bool) -> str:
    return f"{target.name} ({target.project_dir}{', primary' if primary else ''})"


def _steps(
    context: EnvironmentContext,
    request: RollbackRequest,
    target: RollbackTarget,
    targets: list[HostTarget],
    abandoned: list[str],
) -> list[str]:
    """The steps of MultiHostRollback._run, in words: kept next to it so that a change there
    shows here (tests/deploy/test_multi_host_rollback_dry_run.py)."""
    environment = context.environment
    release_id = target.release.release_id
    primary = targets[0].name
    snapshot = (target.data_snapshot_id or "")[:8]
    steps = [
        "preflight: reach every host over SSH (host keys checked against "
        f"{ssh.known_hosts_path(context.config.ssh)}); the same lockstep version; each host's agent running; "
        "every host serving the same release (refused, exit 2, if they differ)"
    ]
    if request.with_data:
        confirm = (
            "no question (--yes)"
            if request.yes
            else "asks first" + (" (type the environment name)" if environment == "production" else " (y)")
        )
        steps.append(
            f"show what the restore discards: the primary {primary}'s `lockstep snapshot diff {snapshot}` over SSH "
            f"(the databases are the hosts', so this plan does not compute it); {confirm}"
        )
    lock = lock_state(context, request)
    steps.append(f"lock environment {environment} in the repository, once for every host {lock}")
    if abandoned:
        steps.append(f"mark {', '.join(abandoned)} interrupted (its orchestrator died; each host undid its part)")
    data = " --with-data" if request.with_data else ""
    coordinated = f"`lockstep rollback --to {release_id}{data} --coordinated ID`"
    workers = workers_only(context.config)
    # A slot of workers only is never warm: retire stops its workers, so each host starts them.
    slot = "a cold start: a slot of workers only is never kept warm" if workers else "its warm or cold slot"
    own = (
        f"its own checks, as `lockstep rollback --dry-run` there shows ({slot}; a code-only "
        "rollback onto a newer schema is refused unless --force)"
    )
    if request.with_data and workers:  # Rollback.run holds traffic only when there is some
        steps += [
            f"stop workers: every host runs {coordinated} at once: {own}; stops its workers (workers only: no "
            "traffic to hold); the primary up to its restore barrier, every other host up to its switch barrier",
            f"restore data: once every other host stopped its workers, the primary {primary} restores the shared "
            f"databases from snapshot {snapshot} (taken before release {release_id} was replaced), after a "
            "pre-restore snapshot to undo it; then up to its switch barrier",
        ]
    elif request.with_data:
        steps += [
            f"hold: every host runs {coordinated} at once: {own}; holds its traffic (new requests "
            "wait, at most its [traffic] hold_timeout, then 503) and stops its workers; the primary up to its "
            "restore barrier, every other host up to its switch barrier",
            f"restore data: once every other host holds, the primary {primary} restores the shared databases from "
            f"snapshot {snapshot} (taken before release {release_id} was replaced), after a pre-restore snapshot to "
            "undo it; then up to its switch barrier",
        ]
    else:
        steps.append(f"hosts: every host runs {coordinated} at once: {own}; up to its switch barrier")
    switch = (
        f"each starts release {release_id}'s workers in its idle slot (health-gated) and makes that slot the "
        "active one (workers only: no traffic to switch)"
        if workers
        else f"each switches to release {release_id} (its warm slot, or started and health-gated)"
    )
    steps += [
        f"switch: every host at its switch barrier -> go: {switch}, up to its retire barrier",
        "retire: every host at its retire barrier -> go: "
        + ("the holds end, " if request.with_data and not workers else "")
        + f"each retires the slot it left; from this go on every host keeps release {release_id} (a host failing "
        "then is reported, not undone)",
    ]
    return steps


def _failure_line(request: RollbackRequest, current: str | None, workers: bool) -> str:
    line = (
        "on failure on any host before the retire go, or a lost connection: every host switches back (exit 3), "
        f"release {current or '(none)'} keeps serving on every host"
    )
    if request.with_data:
        keep = "keep their workers stopped" if workers else "keep holding their traffic"
        line += f"; the others {keep} while the primary puts the data back from its pre-restore snapshot"
    return line
