"""`lockstep snapshot forget`: the config's retention applied to the coordinated snapshots.

Registered on the existing `snapshot` group when imported; COMMANDS is empty on purpose.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from lockstep.actions.snapshot_forget import SnapshotForgetResult, forget
from lockstep.cli.output import console, print_json
from lockstep.cli.project_options import wants_json
from lockstep.cli.repo.forget import print_prune_report, prune_document
from lockstep.cli.reporting import progress_options, progress_reporter
from lockstep.cli.snapshot import snapshot_group
from lockstep.pipeline.retention_policy import GroupPlan, SnapshotVerdict, snapshot_kind
from lockstep.pipeline.snapshot import COMMIT_TAG_PREFIX, tag_value
from lockstep.wording import counted


def _verdict_document(verdict: SnapshotVerdict) -> dict[str, Any]:
    snapshot = verdict.snapshot
    return {
        "id": snapshot.id,
        "short_id": snapshot.short_id,
        "time": snapshot.time,
        "kind": snapshot_kind(snapshot),
        "commit": tag_value(snapshot, COMMIT_TAG_PREFIX),
        "tags": list(snapshot.tags),
        "keep": verdict.keep,
        "reasons": list(verdict.reasons),
    }


def forget_document(result: SnapshotForgetResult) -> dict[str, Any]:
    """The result as --json prints it: per group the kept and removed snapshots with reasons."""
    return {
        "dry_run": result.dry_run,
        "groups": [
            {
                "environment": group.environment,
                "paths": list(group.paths),
                "policy": group.policy,
                "keep": [_verdict_document(verdict) for verdict in group.verdicts if verdict.keep],
                "remove": [_verdict_document(verdict) for verdict in group.verdicts if not verdict.keep],
            }
            for group in result.plan.groups
        ],
        "removed": [snapshot.id for snapshot in result.removed],
        "prune": None if result.prune is None else prune_document(result.prune),
    }


def _local_time(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _group_table(group: GroupPlan) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("ID", "Time", "Kind", "Commit", "Action", "Reasons"):
        table.add_column(column)
    for verdict in sorted(group.verdicts, key=lambda item: item.snapshot.time_ns):  # oldest first, as restic
        snapshot = verdict.snapshot
        table.add_row(
            snapshot.short_id,
            _local_time(snapshot.time_ns),
            snapshot_kind(snapshot),
            tag_value(snapshot, COMMIT_TAG_PREFIX) or "",
            "keep" if verdict.keep else "remove",
            Text(", ".join(verdict.reasons)),  # not markup: "has tags [release]" must show its tags
        )
    return table


def _print_result(result: SnapshotForgetResult) -> None:
    if not result.plan.groups:
        console.print("no lockstep snapshots to consider")
    for group in result.plan.groups:
        paths = ", ".join(group.paths)
        console.print(f"environment {group.environment}, {paths}: {group.policy}", markup=False)
        console.print(_group_table(group))
        console.print(f"keep {len(group.keep)}, remove {len(group.remove)}")
        console.print()
    if result.dry_run:
        console.print(f"would remove {counted(len(result.removed), 'snapshot')} (dry run: nothing was changed)")
    else:
        console.print(f"removed {counted(len(result.removed), 'snapshot')}")
    if result.prune is not None:
        console.print()
        print_prune_report(result.prune)


@snapshot_group.command("forget")
@click.option(
    "--env",
    "environment",
    metavar="NAME",
    help="Only this environment's snapshots, in its repository, by its retention; default: every environment's"
    " snapshots in default_environment's repository, each by its environment's retention.",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The config file. Default: lockstep.toml in the current directory.",
)
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--prune", "run_prune", is_flag=True, help="Then free the space the removed snapshots used.")
@progress_options
@click.option("--json", "json_output", is_flag=True, help="Print the plan and result as JSON.")
def forget_command(
    environment: str | None,
    config_path: Path | None,
    dry_run: bool,
    run_prune: bool,
    log_format: str,
    quiet: bool,
    verbose: bool,
    json_output: bool,
) -> None:
    """Apply [retention] to the coordinated snapshots, per environment, with restic's rules.

    keep_hourly, keep_daily, keep_weekly, keep_monthly and keep_yearly count the manual and
    scheduled snapshots, so a pre-deploy or pre-restore snapshot never takes the place of the
    day's backup; a period with no manual or scheduled snapshot keeps its newest pre-deploy or
    pre-restore one instead ("monthly snapshot (no regular snapshot that month)"). keep_last,
    keep_within and keep_within_<unit> count the manual and scheduled snapshots only; keep_tags
    keeps any snapshot with its tags ("has tags [release]"). The pre-deploy snapshots of the last
    keep_pre_deploy deploys and the pre-restore snapshots of the last keep_pre_restore restores
    are kept too. Each snapshot is listed with the rules that keep it, in restic's words (or why
    it goes). Snapshots of other tools in the repository are never touched."""
    as_json = wants_json(json_output)
    result = forget(
        Path.cwd(),
        config_path=config_path,
        environment=environment,
        dry_run=dry_run,
        run_prune=run_prune,
        reporter=progress_reporter(log_format, quiet, verbose),
    )
    if as_json:
        print_json(forget_document(result))
        return
    _print_result(result)


COMMANDS: list[click.Command] = []
