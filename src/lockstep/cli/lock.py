"""`lockstep lock status | acquire | release`: the project's per-environment deploy lock, in the repository."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from lockstep.cli.output import console, error_console, print_json, print_table
from lockstep.cli.project_options import config_and_env_options, parse_duration_seconds, wants_json
from lockstep.errors import UsageError

if TYPE_CHECKING:
    from lockstep.actions.lock_status import EnvironmentLockStatus
    from lockstep.actions.snapshot_create import ProjectContext
    from lockstep.pipeline.environment_lock import LockHolder

# The actions (the config models, the repository) are imported inside the commands that run them:
# `lockstep --help` lists `lock` without loading them.

# Narrower than this, the lock shows as blocks of `header: value` lines (print_table).
MESSAGE_MIN_WIDTH = 24


_config_option = config_and_env_options(
    "The environment (default: all of them for status, default_environment for acquire and release)."
)


def _project(config_path: Path | None, environment: str | None) -> ProjectContext:
    """The project for `environment`: its [environments.NAME] overrides when it has some.

    The default environment needs no table of its own; any other name must be in the config, so a
    typo is an error rather than a reassuring "unlocked". Without --env, the whole config (every
    environment's name) with the repository of default_environment, where its deploys lock.
    """
    from lockstep.actions.snapshot_create import chosen_environment, load_project
    from lockstep.pipeline.environment_lock import check_environment_name

    project = load_project(Path.cwd(), config_path, None)
    if environment is None:
        chosen = chosen_environment(Path.cwd(), config_path, None)
        if chosen is None:
            return project
        return replace(project, access=load_project(Path.cwd(), config_path, chosen).access)
    check_environment_name(environment)
    project.config.check_environment(environment)
    if environment in project.config.environments:
        return load_project(Path.cwd(), config_path, environment)
    return project


def _local_time(status: EnvironmentLockStatus, which: str) -> str:
    holder = status.holder
    if holder is None:
        return ""
    moment = holder.acquired_at if which == "acquired" else holder.heartbeat_at
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("lock")
def lock_group() -> None:
    """The deploy lock of each environment of this project: one deploy or rollback at a time, for every deployer."""


@lock_group.command("status")
@_config_option
@click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout.")
def status_command(config_path: Path | None, environment: str | None, json_output: bool) -> None:
    """Show each environment's lock (configured or locked ones): holder, since when, stale or not.

    A lock an older lockstep left under the key every project shared shows as `ENVIRONMENT (old key)`.
    """
    from lockstep.actions.lock_status import lock_status

    project = _project(config_path, environment)
    statuses = lock_status(
        project.access, project.name, environment, known_environments=project.config.known_environments()
    )
    if wants_json(json_output):
        print_json([status.to_document() for status in statuses])
        return
    if not any(status.locked for status in statuses):
        for status in statuses:
            console.print(f"environment {status.environment} is unlocked", markup=False)
        return
    table = Table()
    for title in ("Environment", "State", "Operation", "Deploy ID", "Holder", "Since", "Heartbeat"):
        table.add_column(title, no_wrap=True)
    table.add_column("Why", no_wrap=True)
    table.add_column("Message", overflow="fold", min_width=MESSAGE_MIN_WIDTH)  # wrapped whole, never cut
    rows: list[list[str]] = []
    for status in statuses:
        holder = status.holder
        # A lock an older lockstep left: every project's environment of this name waits for it.
        shown_environment = f"{status.environment} (old key)" if status.old_key else status.environment
        if holder is None:
            state = "damaged" if status.damaged else "unlocked"
            rows.append([shown_environment, state, "", "", "", "", "", status.damaged or "", ""])
            continue
        rows.append(
            [
                shown_environment,
                "stale" if status.stale else "locked",
                holder.operation,
                holder.deploy_id,
                f"{holder.user or '?'}@{holder.host or '?'}" + ("" if holder.by_hand_held else f" PID {holder.pid}"),
                _local_time(status, "acquired"),
                "" if holder.by_hand_held else _local_time(status, "heartbeat"),
                status.reason,
                holder.message or "",
            ]
        )
    for row in rows:
        table.add_row(*row)
    print_table(table, rows, lead=(0, 1, 2, 3))  # environment, state, operation, deploy ID


@lock_group.command("acquire")
@_config_option
@click.option("-m", "--message", required=True, help="Why: shown to every deploy and rollback it holds off.")
@click.option(
    "--lock-wait", metavar="DURATION", default="0", help="Wait this long for a running deploy (e.g. 30s, 5m)."
)
@click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout.")
def acquire_command(
    config_path: Path | None, environment: str | None, message: str, lock_wait: str, json_output: bool
) -> None:
    """Lock an environment by hand: deploys and rollbacks wait or refuse, showing MESSAGE, until
    `lockstep lock release`. For maintenance, or work outside lockstep; never stale."""
    from lockstep.actions.lock_acquire import acquire_lock
    from lockstep.pipeline.environment_lock import describe_holder

    project = _project(config_path, environment)
    name = environment or project.config.default_environment
    json_wanted = wants_json(json_output)

    def warn_stale(previous: LockHolder) -> None:
        if not json_wanted:
            error_console.print(f"warning: took over the stale lock of {describe_holder(previous)}", markup=False)

    holder = acquire_lock(
        project.access,
        project.name,
        name,
        message,
        wait=parse_duration_seconds(lock_wait),
        stale_after=project.config.deploy.lock_stale_after,
        on_stale=warn_stale,
    )
    if json_wanted:
        print_json({"environment": name, "locked": True, "holder": holder.to_document()})
        return
    console.print(
        f"locked environment {name}: deploys and rollbacks wait or refuse until `lockstep lock release --env {name}`",
        markup=False,
    )


def _release_document(status: EnvironmentLockStatus, released: bool) -> dict[str, Any]:
    return {**status.to_document(), "released": released}


@lock_group.command("release")
@_config_option
@click.option("--yes", is_flag=True, help="Release a live lock without asking (for scripts).")
@click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout.")
def release_command(config_path: Path | None, environment: str | None, yes: bool, json_output: bool) -> None:
    """Remove an environment's lock after showing who holds it; a live lock needs confirmation.

    When this project's lock is free, it removes a lock an older lockstep left under the old key.
    """
    from lockstep.actions.lock_release import inspect_lock, release_lock
    from lockstep.pipeline.environment_lock import EnvironmentLocked, describe_holder, now_utc

    project = _project(config_path, environment)
    name = environment or project.config.default_environment
    json_wanted = wants_json(json_output)
    status = inspect_lock(project.access, project.name, name)
    if not status.locked:
        if json_wanted:
            print_json(_release_document(status, released=False))
        else:
            console.print(f"environment {name} is not locked", markup=False)
        return
    holder = status.holder
    shown = describe_holder(holder, now_utc()) if holder is not None else f"a damaged lock ({status.damaged})"
    if not json_wanted:
        under = " under the old key (every project's, taken by an older lockstep)" if status.old_key else ""
        console.print(f"environment {name} is held{under} by: {shown}", markup=False)
        console.print(f"{'stale' if status.stale else 'live'}: {status.reason}", markup=False)
    # A lock taken by hand has no process to disturb: releasing it is how its work ends.
    if not status.stale and not yes and not (holder is not None and holder.by_hand_held):
        if not sys.stdin.isatty():
            raise UsageError(
                f"the lock of environment {name} is live ({status.reason}) and standard input is not a terminal",
                "pass --yes to release it anyway; the deploy holding it will notice and stop",
            )
        if not click.confirm(f"release the live lock of {name}?", default=False, err=True):
            # The hint repeats who holds it: with --json the lines above are not printed.
            raise EnvironmentLocked(
                f"left the lock of environment {name} in place",
                f"it is held by {shown} ({status.reason}); release it once that is done, "
                f"or with `lockstep lock release --env {name} --yes`",
                holder,
            )
    released = release_lock(
        project.access, None if status.old_key else project.name, name, holder.lock_id if holder is not None else None
    )
    if json_wanted:
        print_json(_release_document(status, released=released is not None or status.damaged is not None))
    else:
        console.print(f"released the lock of environment {name}", markup=False)


COMMANDS = [lock_group]
