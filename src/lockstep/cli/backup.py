"""`lockstep backup`: one scheduled snapshot with preflight, retention, verification and pings.

Made for cron: silent except for ONE line on success (or one JSON document), warnings and
errors on stderr, and the documented exit code. On a terminal, or with --log-format json or
--verbose, it reports each step (preflight, snapshot, retention, verify) like a deploy does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lockstep.cli.output import console, print_json
from lockstep.cli.project_options import wants_json
from lockstep.cli.reporting import progress_options, progress_reporter

if TYPE_CHECKING:
    from lockstep.actions.backup import BackupResult


def backup_document(result: BackupResult) -> dict[str, Any]:
    """The JSON equivalent of the one-line report."""
    return {
        "ok": True,
        "snapshot_id": result.snapshot.id,
        "short_id": result.snapshot.short_id,
        "environment": result.environment,
        "kind": result.manifest.kind,
        "stored_bytes": result.stored_bytes,
        "added_bytes": result.added_bytes,
        "seconds": round(result.seconds, 3),
        "verify_level": result.verify_level,
        "forgotten": [snapshot.id for snapshot in result.forgotten],
        "copies": [
            {
                "name": outcome.name,
                "url": outcome.location,
                "copied": [item.destination_id for item in outcome.report.copied],
                "already_there": len(outcome.report.skipped),
                "bytes_added": outcome.report.bytes_added,
            }
            for outcome in result.copies
        ],
        "preflight": [check.to_document() for check in result.preflight],
        "pings_sent": result.pings_sent,
        "warnings": result.warnings,
    }


@click.command("backup")
@click.option(
    "--env",
    "environment",
    metavar="NAME",
    help="Environment ([environments.NAME]); default: default_environment from lockstep.toml.",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The config file. Default: lockstep.toml in the current directory.",
)
@click.option("-m", "--message", help="Describe the snapshot.")
@progress_options
@click.option("--json", "json_output", is_flag=True, help="Print the result as one JSON document.")
def backup_command(
    environment: str | None,
    config_path: Path | None,
    message: str | None,
    log_format: str,
    quiet: bool,
    verbose: bool,
    json_output: bool,
) -> None:
    """Take a scheduled snapshot for cron: preflight checks, snapshot, retention, verification,
    then copies to each [repository.copies] repository (and their retention).

    Pings [backup] healthchecks_url (/start, then success or /fail) when it is set, and tells the
    [notifications] channels snapshot.created or backup.failed; a ping or a channel that fails
    only warns. A copy that fails fails the backup; the new snapshot stays in the repository.
    Prints one line: the snapshot, its size, what it added, the copies, and the time.
    Without a terminal (cron) the steps are not shown unless --verbose or --log-format json."""
    # Imported here: the action and the config, database and repository modules it loads are
    # for the run, not for `lockstep --help`.
    from lockstep.actions.backup import run_backup, summary_line

    reporter = progress_reporter(log_format, quiet, verbose, quiet_unless_terminal=True)
    result = run_backup(
        Path.cwd(), config_path=config_path, environment=environment, message=message, reporter=reporter, notify=True
    )
    if wants_json(json_output):
        print_json(backup_document(result))
        return
    console.print(summary_line(result), markup=False)


COMMANDS = [backup_command]
