"""`repo backup`."""

from __future__ import annotations

from typing import Any

import click

from lockstep.actions.repo.backup import backup
from lockstep.cli.output import byte_progress, console, human_bytes, print_json
from lockstep.cli.repo.options import access_from, repository_options, wants_json
from lockstep.repository.tag_lists import flatten_tag_lists


@click.command("backup", context_settings={"ignore_unknown_options": False})
@click.argument("paths", nargs=-1)
@click.option("--stdin", is_flag=True, help="Back up standard input as one file.")
@click.option(
    "--stdin-filename", default="stdin", show_default=True, help="File name for --stdin / --stdin-from-command."
)
@click.option(
    "--stdin-from-command",
    is_flag=True,
    help="Back up the output of the command given after --; fail if it exits non-zero.",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAGS",
    help="Tag the snapshot: a,b adds two tags, as in restic (repeatable).",
)
@click.option("--host", help="Hostname to record (default: this machine's).")
@repository_options
def backup_command(
    paths: tuple[str, ...],
    stdin: bool,
    stdin_filename: str,
    stdin_from_command: bool,
    tags: tuple[str, ...],
    host: str | None,
    **options: Any,
) -> None:
    """Back up PATHS, standard input, or a command's output into a new snapshot.

    \b
    Examples:
      lockstep repo backup /srv/app
      pg_dump shop | lockstep repo backup --stdin --stdin-filename shop.sql
      lockstep repo backup --stdin-from-command --stdin-filename shop.sql -- pg_dump shop
    """
    json_output = wants_json(options)
    command: tuple[str, ...] = ()
    if stdin_from_command:
        command, paths = paths, ()
        if not command:
            raise click.UsageError("--stdin-from-command needs the command after --, e.g. -- pg_dump shop")
    with byte_progress("backup", None, enabled=not json_output) as progress:
        summary = backup(
            access_from(options),
            paths=paths,
            stdin=stdin,
            stdin_filename=stdin_filename,
            stdin_command=command,
            tags=flatten_tag_lists(tags),
            hostname=host,
            progress=progress,
        )
    if json_output:
        print_json(
            {
                "message_type": "summary",
                "snapshot_id": summary.snapshot_id,
                "files": summary.files,
                "directories": summary.directories,
                "bytes_read": summary.bytes_read,
                "bytes_added": summary.bytes_added,
                "blobs_added": summary.blobs_added,
                "seconds": round(summary.seconds, 3),
                "warnings": summary.warnings,
            }
        )
        return
    for warning in summary.warnings:
        console.print(f"warning: {warning}", markup=False)
    console.print(
        f"snapshot {summary.snapshot_id[:8]} saved: {human_bytes(summary.bytes_read)} read, "
        f"{human_bytes(summary.bytes_added)} added in {summary.seconds:.1f} s"
    )


COMMANDS = [backup_command]
